"""Baseline allocators that need no network statistics, checked against brute force / direct oracles."""
import numpy as np
import pytest

from proxylab.allocate import ALLOCATORS, AllocationProblem, Budget, allocate_exhaustive, budget_between, run_allocator
from proxylab.errors import ProxylabError

BITS = (2, 3, 4)


def _problem(seed, L=6):
    rng = np.random.default_rng(seed)
    params = rng.integers(100, 10000, size=L)
    return AllocationProblem(params, params * rng.integers(1, 50, size=L), BITS)


def test_registry_lists_every_allocator():
    assert set(ALLOCATORS.names()) == {"proxylab", "uniform", "hawq_v2", "ompq", "bparams", "random"}
    with pytest.raises(ProxylabError, match="unknown allocator 'unifrom'.*uniform"):
        ALLOCATORS.get("unifrom")


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.5, 0.8, 1.0])
def test_uniform_is_highest_uniform_then_maximal(seed, fraction):
    problem = _problem(seed)
    budget = budget_between(problem, fraction)
    res = run_allocator("uniform", problem, budget)
    bits = np.array(res.bits)
    assert problem.fits(bits, budget)
    fitting_uniform = [b for b in BITS if problem.fits(np.full(6, b), budget)]
    assert bits.min() >= max(fitting_uniform) == res.extra["uniform_bits"]
    for l in range(6):  # maximal: no single layer can still go up one choice
        if bits[l] < 4:
            up = bits.copy()
            up[l] += 1
            assert not problem.fits(up, budget)


@pytest.mark.parametrize("seed", range(6))
def test_bparams_is_the_largest_fitting_model(seed):
    problem = _problem(seed)
    budget = budget_between(problem, np.random.default_rng(seed).uniform(0.1, 0.9))
    res = run_allocator("bparams", problem, budget)
    brute = allocate_exhaustive(problem, lambda b: problem.weight_bits(b).astype(float), budget)
    assert problem.weight_bits(np.array(res.bits)) == problem.weight_bits(np.array(brute.bits))


def test_random_is_feasible_deterministic_and_largest_of_its_draws():
    problem = _problem(3, L=12)
    budget = budget_between(problem, 0.4)
    a = run_allocator("random", problem, budget, seed=1)
    b = run_allocator("random", problem, budget, seed=1)
    c = run_allocator("random", problem, budget, seed=2)
    assert a.bits == b.bits and a.bits != c.bits
    assert problem.fits(np.array(a.bits), budget)
    assert a.extra["k"] == 100
    # with one draw the result is that draw; with 100 it can only be as large or larger
    one = ALLOCATORS.get("random")(problem, budget, seed=1, k=1)
    assert a.size_mb >= one.size_mb


def test_budget_between_endpoints():
    problem = _problem(0)
    assert budget_between(problem, 0).size_mb == pytest.approx(float(problem.size_mb(np.full(6, 2))))
    assert budget_between(problem, 1).size_mb == pytest.approx(float(problem.size_mb(np.full(6, 4))))
    with pytest.raises(ProxylabError, match="fraction"):
        budget_between(problem, 1.5)


@pytest.mark.parametrize("name", ["uniform", "bparams", "random"])
def test_infeasible_budget_names_smallest_size(name):
    problem = AllocationProblem([2**20, 2**21], [10, 10], BITS)  # all-2-bit: 0.75 MiB
    with pytest.raises(ProxylabError, match=r"smallest configuration.*size_mb=0\.75"):
        run_allocator(name, problem, Budget(size_mb=0.7))


@pytest.mark.parametrize("name", ["proxylab", "hawq_v2", "ompq"])
def test_score_based_allocators_need_stats_or_proxy(name):
    problem = _problem(0)
    with pytest.raises(ProxylabError, match="needs"):
        run_allocator(name, problem, budget_between(problem, 0.5))
