"""A proxy against a bench table: rank metrics on one split, next to the table's noise ceiling.

Shared by ``proxylab proxy eval`` and benchmarks/proxy_baselines.py, so both report the same numbers.
"""
from __future__ import annotations

import math
import time
from typing import Any, Dict, Iterable, List

import numpy as np

from proxylab.errors import ProxylabError
from proxylab.metrics import rank_metrics
from proxylab.proxy.core import BaseProxy, parse_proxy
from proxylab.proxy.evaluate import bits_to_columns, scores_from_table

METRIC_KEYS = ("spearman", "kendall", "pearson", "spearman_top20", "spearman_top50", "weighted_tau")


def check_layers_match(table, stats) -> None:
    if list(table.layer_names) != list(stats.layer_names):
        raise ProxylabError(
            f"the table's {len(table.layer_names)} layers differ from the network's {len(stats.layer_names)} "
            "quantizable layers: the table was measured on another network"
        )


def evaluate_on_table(proxy, table, stats, split: str = "test") -> Dict[str, Any]:
    """One row: table, proxy, split, n, every rank metric, noise_ceiling, valid, reason, seconds."""
    proxy: BaseProxy = parse_proxy(proxy)
    check_layers_match(table, stats)
    idx = table.split(split)
    if len(idx) < 2:
        raise ProxylabError(f"split '{split}' of table '{table.name}' has {len(idx)} rows: nothing to rank")
    ceiling = table.subset(idx).noise_ceiling
    row: Dict[str, Any] = {
        "table": table.name,
        "proxy": proxy.name or str(proxy),
        "split": split,
        "n": int(len(idx)),
    }
    t0 = time.perf_counter()
    try:
        layer_table = proxy.layer_table(stats)
        columns = bits_to_columns(table.bits[idx], stats.bit_choices, stats.layer_names)
        scores = scores_from_table(layer_table, columns, proxy.aggregator)
    except ProxylabError as e:  # InvalidProxy, or statistics the proxy needs are missing (no Hessian)
        row.update({k: math.nan for k in METRIC_KEYS})
        row.update(noise_ceiling=ceiling, valid=False, reason=str(e), seconds=time.perf_counter() - t0)
        return row
    metrics = rank_metrics(scores, table.acc[idx])
    valid = bool(metrics.pop("valid"))
    row.update(metrics)
    row.update(
        noise_ceiling=ceiling,
        valid=valid,
        reason="" if valid else "the proxy gives every configuration of this split the same score",
        seconds=time.perf_counter() - t0,
    )
    return row


def evaluate_many(proxies: Iterable, table, stats, split: str = "test") -> List[Dict[str, Any]]:
    return [evaluate_on_table(p, table, stats, split) for p in proxies]


def scores_on_table(proxy, table, stats, split: str = "all") -> np.ndarray:
    """The proxy's score for each row of a split (raises InvalidProxy)."""
    proxy = parse_proxy(proxy)
    check_layers_match(table, stats)
    idx = table.split(split)
    columns = bits_to_columns(table.bits[idx], stats.bit_choices, stats.layer_names)
    return scores_from_table(proxy.layer_table(stats), columns, proxy.aggregator)
