"""The evolutionary search against brute force on non-decomposable (min / max over layers) scores."""
import numpy as np
import pytest

from proxylab.allocate import AllocationProblem, Budget, allocate_evolution, allocate_exhaustive
from proxylab.errors import ProxylabError

BITS = (2, 3, 4)


def _case(seed, L):
    rng = np.random.default_rng(seed)
    params = rng.integers(50, 5000, size=L)
    macs = params * rng.integers(1, 64, size=L)
    table = rng.normal(size=(L, 3))
    problem = AllocationProblem(params, macs, BITS)
    frac = rng.uniform(0.2, 0.8)
    budget = Budget(size_mb=float((2 + 2 * frac) * params.sum() / 8 / 2**20))
    return problem, table, budget


def _score_fn(table, agg):
    rows = np.arange(table.shape[0])
    return lambda bits: agg(table[rows, np.asarray(bits) - 2], axis=1)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("agg", [np.min, np.max, np.mean])
def test_evolution_finds_brute_force_optimum(seed, agg):
    problem, table, budget = _case(seed, L=6)
    fn = _score_fn(table, agg)
    evo = allocate_evolution(problem, fn, budget, population=30, generations=60, seed=seed)
    brute = allocate_exhaustive(problem, fn, budget)
    assert evo.score == pytest.approx(brute.score)
    assert problem.fits(np.array(evo.bits), budget)
    assert evo.score == pytest.approx(fn(np.array([evo.bits]))[0])


def test_evolution_respects_both_limits_and_is_deterministic():
    problem, table, _ = _case(11, L=10)
    budget = Budget(size_mb=float(3 * problem.params.sum() / 8 / 2**20),
                    bitops=float(2.6 * 8 * problem.macs.sum()))
    fn = _score_fn(table, np.min)
    a = allocate_evolution(problem, fn, budget, seed=5)
    b = allocate_evolution(problem, fn, budget, seed=5)
    assert a.bits == b.bits and a.score == b.score
    assert problem.fits(np.array(a.bits), budget)
    assert a.bitops <= budget.bitops and a.size_mb <= budget.size_mb


def test_initial_configs_are_used_and_repaired():
    problem, table, budget = _case(2, L=5)
    # a score only one config achieves: the search must keep the seed it was given
    target = np.array([2, 3, 2, 2, 3])
    assert problem.fits(target, budget)

    def spike(bits):
        return (np.asarray(bits) == target).all(axis=1).astype(float)

    res = allocate_evolution(problem, spike, budget, population=4, generations=0, initial=[target.tolist(), [4] * 5])
    assert res.bits == tuple(target) and res.score == 1.0


def test_bad_input():
    problem, table, budget = _case(0, L=3)
    fn = _score_fn(table, np.min)
    with pytest.raises(ProxylabError, match="infeasible"):
        allocate_evolution(problem, fn, Budget(size_mb=1e-9))
    with pytest.raises(ProxylabError, match="initial config"):
        allocate_evolution(problem, fn, budget, initial=[[2, 5, 2]])
    with pytest.raises(ProxylabError, match="not finite"):
        allocate_evolution(problem, lambda b: np.full(len(b), np.nan), budget, generations=2)
