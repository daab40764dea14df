"""Allocation driven by a proxy of the language: its per-layer table S[L, n_bits] goes through the exact ILP
when the aggregator decomposes (mean_layers / sum_layers), else through the evolutionary search ranked by
the proxy itself, warm-started from the ILP answer for the layer-mean of the same table."""
from __future__ import annotations

from typing import Any

import numpy as np

from proxylab.allocate.evolution import allocate_evolution
from proxylab.allocate.ilp import DECOMPOSABLE, aggregate, solve_ilp
from proxylab.allocate.problem import Allocation, AllocationProblem, Budget
from proxylab.errors import ProxylabError


def resolve_proxy(proxy: Any):
    """A proxy object, a known proxy's name, or a formula string -> proxy object (parse errors name the token)."""
    from proxylab.proxy import parse_proxy
    from proxylab.proxy.core import BaseProxy

    if isinstance(proxy, BaseProxy):
        return proxy
    if not isinstance(proxy, str) or not proxy.strip():
        raise ProxylabError(f"proxy must be a known proxy's name or a formula string, got {proxy!r}")
    return parse_proxy(proxy.strip())  # an unknown name is refused there, with a did-you-mean


def proxy_layer_table(proxy, problem: AllocationProblem) -> np.ndarray:
    """proxy.layer_table(stats) with columns reordered to problem.bit_choices (a subset of the stats' bits)."""
    stats = _need_stats(problem, f"proxy {proxy}")
    try:
        table = np.asarray(proxy.layer_table(stats), dtype=np.float64)
    except ProxylabError as e:
        raise ProxylabError(f"the proxy cannot score this network: {e}") from None
    cols = [tuple(stats.bit_choices).index(b) for b in problem.bit_choices]
    return table[:, cols]


def allocate_with_proxy(
    problem: AllocationProblem,
    proxy: Any,
    budget: Budget,
    seed: int = 0,
    allocator: str = "proxylab",
    population: int = 40,
    generations: int = 80,
    ilp_time_limit: float = 120.0,
) -> Allocation:
    _need_stats(problem, f"the {allocator} allocator")
    p = resolve_proxy(proxy)
    table = proxy_layer_table(p, problem)
    aggregator = str(p.aggregator)
    if aggregator in DECOMPOSABLE:
        res = solve_ilp(problem, table, budget, aggregator=aggregator, allocator=allocator, time_limit=ilp_time_limit)
    else:
        problem.check_feasible(budget)
        rows = np.arange(problem.num_layers)
        pos = np.full(max(problem.bit_choices) + 1, -1)
        pos[list(problem.bit_choices)] = np.arange(len(problem.bit_choices))

        def score_fn(bits: np.ndarray) -> np.ndarray:
            return aggregate(table[rows, pos[bits]], aggregator)

        warm = solve_ilp(problem, table, budget, aggregator="mean", time_limit=ilp_time_limit).bits
        res = allocate_evolution(problem, score_fn, budget, population=population, generations=generations,
                                 seed=seed, initial=[warm], allocator=allocator)
    res.extra["proxy"] = str(p)
    return res


def _need_stats(problem: AllocationProblem, what: str):
    if problem.stats is None:
        raise ProxylabError(f"{what} needs network statistics: build the problem with AllocationProblem.from_stats(...)")
    return problem.stats

