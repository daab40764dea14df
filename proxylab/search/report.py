"""Test-split figures: the searched proxy next to every known proxy, and the tables' noise ceilings.

The comparison is honest in both directions: the searched proxy was chosen on the select split, and the
"best known proxy" is the known proxy with the highest select-split Spearman (combined over the tables by
the same rule, ``select_by``, that picks the searched proxy from its hall of fame), never the one that
happens to do best on the test split.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from proxylab.errors import ProxylabError

METRICS = ("spearman", "kendall", "pearson", "spearman_top20", "spearman_top50")


def split_metrics(proxy, table, stats, split: str = "test") -> Dict[str, float]:
    """Rank metrics of one proxy on one split of one table; NaN metrics (valid False) for an invalid proxy."""
    from proxylab.metrics import rank_metrics
    from proxylab.proxy import score_configs

    idx = table.split(split)
    try:
        scores = score_configs(proxy, stats, table.bits[idx])
    except ProxylabError:  # InvalidProxy, or a known proxy that needs statistics these stats lack
        return {**{m: math.nan for m in METRICS}, "valid": False}
    out = rank_metrics(scores, table.acc[idx])
    return {**{m: float(out[m]) for m in METRICS}, "valid": bool(out["valid"])}


def combine(values: Sequence[float], fitness: str) -> float:
    vals = list(values)
    if not vals or any(not math.isfinite(v) for v in vals):
        return math.nan
    return float(np.mean(vals)) if fitness == "mean" else float(np.min(vals))


def known_proxies() -> Dict[str, Any]:
    from proxylab.proxy import KNOWN_PROXIES

    return {name: KNOWN_PROXIES.get(name) for name in KNOWN_PROXIES.names()}


def best_known(tables, stats, fitness: str = "mean") -> Tuple[Optional[str], float, Dict[str, float]]:
    """(name, select fitness, every known proxy's select fitness) of the known proxy best on the select split."""
    scores: Dict[str, float] = {}
    for name, proxy in known_proxies().items():
        per_table = [split_metrics(proxy, t, s, "select")["spearman"] for t, s in zip(tables, stats)]
        scores[name] = combine(per_table, fitness)
    finite = {k: v for k, v in scores.items() if math.isfinite(v)}
    if not finite:
        return None, math.nan, scores
    name = max(sorted(finite), key=lambda k: finite[k])
    return name, finite[name], scores


def results_table(best_proxy, tables, stats, fitness: str = "mean", label: str = "searched") -> List[Dict[str, Any]]:
    """Rows for results.csv: per table, the run's answer (``label``: "searched", or "selected" when the
    allocation check picked a known proxy) and every known proxy on the TEST split."""
    winner, _, select_scores = best_known(tables, stats, fitness)
    select_scores[label] = combine(
        [split_metrics(best_proxy, t, s, "select")["spearman"] for t, s in zip(tables, stats)], fitness)
    rows: List[Dict[str, Any]] = []
    candidates = [(label, best_proxy)] + list(known_proxies().items())
    for t, st in zip(tables, stats):
        ceiling = float(t.subset(t.split("test")).noise_ceiling)  # of the rows these figures rank
        for name, proxy in candidates:
            select = split_metrics(proxy, t, st, "select")["spearman"]
            m = split_metrics(proxy, t, st, "test")
            rows.append({
                "table": t.name, "proxy": name, "formula": str(proxy),
                "role": label if name == label else ("best_known" if name == winner else "known"),
                "select_spearman": select, **{m_: m[m_] for m_ in METRICS}, "valid": m["valid"],
                "select_fitness_all_tables": select_scores.get(name, math.nan),
                "noise_ceiling": ceiling, "test_rows": int(len(t.split("test"))),
            })
    return rows
