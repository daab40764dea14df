"""ALLOCATORS: every way proxylab can pick per-layer bits, under one signature so benchmarks compare them
at the same budget:  ``fn(problem, budget, *, proxy=None, seed=0) -> Allocation``.

- ``proxylab``  the given proxy (the search's best): exact ILP, or evolution when it does not decompose.
- ``uniform``   the highest uniform bit-width that fits, then single-layer raises, smallest layers first,
                while they fit (smallest first raises the most layers per spare byte).
- ``hawq_v2``   ILP minimising sum_l (Tr(H_l) / n_l) x ||W_l - Q_b(W_l)||^2 (HAWQ-V2's sensitivity; the
                ``hawqv2`` known proxy).
- ``ompq``      the ``ompq`` known proxy through the same ILP (not OMPQ's SLSQP relaxation + rounding:
                the ILP is exact for the same objective, so the relaxation could only do worse).
- ``bparams``   ILP maximising bit-weighted parameters: the largest model that fits the budget.
- ``random``    best-of-k (k=100) random feasible configs, where "best" is the one that uses the most of the
                budget (largest size, then BitOps). Choosing by measured accuracy would peek at the test
                labels, so it is not done; uniform draws are repaired to fit by lowering random layers.
"""
from __future__ import annotations

import numpy as np

from proxylab.allocate.evolution import _Feasibility, highest_uniform_index
from proxylab.allocate.ilp import solve_ilp
from proxylab.allocate.problem import Allocation, AllocationProblem, Budget
from proxylab.allocate.proxy_allocator import allocate_with_proxy
from proxylab.errors import ProxylabError
from proxylab.registry import Registry

ALLOCATORS = Registry("allocator")
RANDOM_K = 100


@ALLOCATORS.register("proxylab")
def proxylab_allocator(problem: AllocationProblem, budget: Budget, *, proxy=None, seed: int = 0) -> Allocation:
    """the given proxy: exact ILP (mean/sum_layers) or constrained evolution (min/max_layers)"""
    if proxy is None:
        raise ProxylabError("the proxylab allocator needs a proxy: a known proxy's name or a formula")
    return allocate_with_proxy(problem, proxy, budget, seed=seed, allocator="proxylab")


@ALLOCATORS.register("uniform")
def uniform_allocator(problem: AllocationProblem, budget: Budget, *, proxy=None, seed: int = 0) -> Allocation:
    """highest uniform bits that fit, then greedy single-layer raises, smallest layers first"""
    problem.check_feasible(budget)
    feas = _Feasibility(problem, budget)
    k = highest_uniform_index(problem, budget)
    idx = np.full(problem.num_layers, k, dtype=np.int64)
    order = np.argsort(problem.params, kind="stable")
    raised = True
    while raised:  # repeated passes let a small layer climb more than one step
        raised = False
        for l in order:
            if idx[l] + 1 < feas.K:
                idx[l] += 1
                s, o = feas.over(idx)
                if s > 0 or o > 0:
                    idx[l] -= 1
                else:
                    raised = True
    return problem.make_allocation(idx, "uniform", "greedy", uniform_bits=int(problem.bit_choices[k]))


@ALLOCATORS.register("hawq_v2")
def hawq_v2_allocator(problem: AllocationProblem, budget: Budget, *, proxy=None, seed: int = 0) -> Allocation:
    """the 'hawqv2' known proxy (Hessian trace / params x ||W - Q_b(W)||^2) through the same exact ILP"""
    return allocate_with_proxy(problem, "hawqv2", budget, seed=seed, allocator="hawq_v2")


@ALLOCATORS.register("ompq")
def ompq_allocator(problem: AllocationProblem, budget: Budget, *, proxy=None, seed: int = 0) -> Allocation:
    """the 'ompq' known proxy through the same exact ILP"""
    return allocate_with_proxy(problem, "ompq", budget, seed=seed, allocator="ompq")


@ALLOCATORS.register("bparams")
def bparams_allocator(problem: AllocationProblem, budget: Budget, *, proxy=None, seed: int = 0) -> Allocation:
    """ILP maximising bit-weighted parameters (the biggest model that fits)"""
    table = problem.params[:, None].astype(np.float64) * np.asarray(problem.bit_choices, dtype=np.float64)[None, :]
    return solve_ilp(problem, table, budget, aggregator="sum", allocator="bparams")


@ALLOCATORS.register("random")
def random_allocator(problem: AllocationProblem, budget: Budget, *, proxy=None, seed: int = 0,
                     k: int = RANDOM_K) -> Allocation:
    """best-of-100 random feasible configs, best = largest size (then BitOps); never picked by accuracy"""
    problem.check_feasible(budget)
    rng = np.random.default_rng(seed)
    feas = _Feasibility(problem, budget)
    draws = np.stack([feas.repair(rng.integers(0, feas.K, size=problem.num_layers), rng) for _ in range(k)])
    bits = problem.indices_to_bits(draws)
    key = np.lexsort((-problem.bitops(bits), -problem.weight_bits(bits)))
    return problem.make_allocation(draws[key[0]], "random", "random", k=k)


def run_allocator(name: str, problem: AllocationProblem, budget: Budget, *, proxy=None, seed: int = 0) -> Allocation:
    return ALLOCATORS.get(name)(problem, budget, proxy=proxy, seed=seed)
