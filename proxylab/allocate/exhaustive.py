"""Brute force over every configuration: the oracle the ILP and the evolutionary search are tested against,
and a usable allocator for tiny networks (K**L configurations, capped)."""
from __future__ import annotations

from typing import Callable

import numpy as np

from proxylab.allocate.problem import Allocation, AllocationProblem, Budget
from proxylab.errors import ProxylabError

MAX_CONFIGS = 2_000_000


def all_indices(num_layers: int, num_choices: int) -> np.ndarray:
    """Every config as bit-choice indices, shape [K**L, L], in lexicographic order."""
    total = num_choices**num_layers
    if total > MAX_CONFIGS:
        raise ProxylabError(
            f"{num_choices}**{num_layers} = {total} configurations is too many to enumerate (cap {MAX_CONFIGS}); "
            f"use the ILP or the evolutionary search"
        )
    grids = np.meshgrid(*[np.arange(num_choices)] * num_layers, indexing="ij")
    return np.stack([g.ravel() for g in grids], axis=1)


def allocate_exhaustive(
    problem: AllocationProblem,
    score_fn: Callable[[np.ndarray], np.ndarray],
    budget: Budget,
    allocator: str = "exhaustive",
) -> Allocation:
    """score_fn maps bit VALUES [N, L] -> scores [N]; the highest-scoring config that fits wins
    (first in lexicographic order on ties)."""
    problem.check_feasible(budget)
    idx = all_indices(problem.num_layers, len(problem.bit_choices))
    bits = problem.indices_to_bits(idx)
    ok = problem.fits(bits, budget)
    scores = np.asarray(score_fn(bits[ok]), dtype=np.float64)
    best = int(np.argmax(scores))
    return problem.make_allocation(idx[ok][best], allocator, "exhaustive", score=scores[best])
