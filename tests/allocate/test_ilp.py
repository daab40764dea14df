"""The ILP against brute force: random score tables, L <= 6, 3 bit choices, every configuration enumerated."""
import numpy as np
import pytest

from proxylab.allocate import AllocationProblem, Budget, allocate_exhaustive, allocate_ilp, solve_ilp
from proxylab.errors import ProxylabError

BITS = (2, 3, 4)


def _random_case(rng, L):
    params = rng.integers(50, 5000, size=L)
    macs = params * rng.integers(1, 64, size=L)
    scores = rng.normal(size=(L, 3))
    return scores, params, macs


def _brute(scores, params, macs, size_mb=None, bitops=None, agg="mean"):
    problem = AllocationProblem(params, macs, BITS)
    rows = np.arange(len(params))
    fn = {"mean": np.mean, "sum": np.sum}[agg]

    def score_fn(bits):
        idx = bits - 2
        return fn(scores[rows, idx], axis=1)

    return allocate_exhaustive(problem, score_fn, Budget(size_mb, bitops))


def _between(lo, hi, frac):
    return lo + frac * (hi - lo)


@pytest.mark.parametrize("seed", range(12))
def test_ilp_matches_brute_force_size_budget(seed):
    rng = np.random.default_rng(seed)
    L = int(rng.integers(1, 7))
    scores, params, macs = _random_case(rng, L)
    lo, hi = 2 * params.sum() / 8 / 2**20, 4 * params.sum() / 8 / 2**20
    budget = _between(lo, hi, rng.uniform(0.05, 0.95))
    ilp = allocate_ilp(scores, params, macs, BITS, size_budget_mb=budget)
    brute = _brute(scores, params, macs, size_mb=budget)
    assert ilp.score == pytest.approx(brute.score, abs=1e-9)
    assert ilp.size_mb <= budget
    # the reported score is the real aggregated score of the returned bits
    assert ilp.score == pytest.approx(scores[np.arange(L), np.array(ilp.bits) - 2].mean())


@pytest.mark.parametrize("seed", range(8))
def test_ilp_matches_brute_force_size_and_bitops(seed):
    rng = np.random.default_rng(100 + seed)
    L = int(rng.integers(2, 7))
    scores, params, macs = _random_case(rng, L)
    size = _between(2 * params.sum(), 4 * params.sum(), rng.uniform(0.2, 0.9)) / 8 / 2**20
    ops = _between(2 * 8 * macs.sum(), 4 * 8 * macs.sum(), rng.uniform(0.2, 0.9))
    ilp = allocate_ilp(scores, params, macs, BITS, size_budget_mb=size, bitops_budget=ops, aggregator="sum")
    brute = _brute(scores, params, macs, size_mb=size, bitops=ops, agg="sum")
    assert ilp.score == pytest.approx(brute.score, abs=1e-9)
    assert ilp.size_mb <= size and ilp.bitops <= ops


def test_budget_at_exact_config_size_is_feasible_and_tight():
    # A budget equal to one config's exact size must allow that config (integer feasibility, no float slack).
    params = np.array([1000, 3000, 7000])
    macs = params * 10
    scores = np.array([[0, 1, 2], [0, 1, 2], [0, 1, 2]], dtype=float)
    target = np.array([4, 3, 2])
    size = float((target * params).sum() / 8 / 2**20)
    res = allocate_ilp(scores, params, macs, BITS, size_budget_mb=size, aggregator="sum")
    brute = _brute(scores, params, macs, size_mb=size, agg="sum")
    assert res.score == brute.score
    assert (np.array(res.bits) * params).sum() <= (target * params).sum()


def test_unconstrained_by_a_large_budget_takes_row_maxima():
    rng = np.random.default_rng(7)
    scores, params, macs = _random_case(rng, 5)
    res = allocate_ilp(scores, params, macs, BITS, size_budget_mb=1e6)
    assert list(res.bits) == list(np.array(BITS)[scores.argmax(axis=1)])


def test_scale_and_shift_invariance():
    rng = np.random.default_rng(3)
    scores, params, macs = _random_case(rng, 6)
    budget = 3 * params.sum() / 8 / 2**20
    a = allocate_ilp(scores, params, macs, BITS, size_budget_mb=budget)
    b = allocate_ilp(1e9 * scores + rng.normal(size=(6, 1)) * 1e12, params, macs, BITS, size_budget_mb=budget)
    assert a.bits == b.bits


def test_unsorted_bit_choices_keep_columns_aligned():
    scores = np.array([[5.0, 0.0, 1.0]])  # column 0 belongs to 4 bits
    res = allocate_ilp(scores, [100], [100], (4, 2, 3), size_budget_mb=1.0)
    assert res.bits == (4,)


def test_infeasible_budget_names_smallest_feasible():
    params = np.array([2**20, 2**20])  # all-2-bit = 0.5 MiB
    with pytest.raises(ProxylabError, match=r"size_mb=0\.5"):
        allocate_ilp(np.zeros((2, 3)), params, params, BITS, size_budget_mb=0.4)
    with pytest.raises(ProxylabError, match=r"bitops=.*infeasible|infeasible.*bitops"):
        allocate_ilp(np.zeros((2, 3)), params, params, BITS, bitops_budget=1000)


def test_non_decomposable_aggregator_refused():
    with pytest.raises(ProxylabError, match="does not decompose"):
        allocate_ilp(np.zeros((2, 3)), [10, 10], [10, 10], BITS, size_budget_mb=1, aggregator="min_layers")


def test_bad_tables_and_bits():
    with pytest.raises(ProxylabError, match="shape"):
        allocate_ilp(np.zeros((2, 2)), [10, 10], [10, 10], BITS, size_budget_mb=1)
    with pytest.raises(ProxylabError, match="non-finite"):
        allocate_ilp(np.array([[0, np.nan, 1], [0, 0, 0]]), [10, 10], [10, 10], BITS, size_budget_mb=1)
    with pytest.raises(ProxylabError, match="outside 1..16"):
        allocate_ilp(np.zeros((2, 3)), [10, 10], [10, 10], (2, 3, 17), size_budget_mb=1)


def test_solve_ilp_with_problem_object():
    problem = AllocationProblem([100, 200], [1000, 2000], (2, 4), layer_names=["a", "b"])
    res = solve_ilp(problem, np.array([[0.0, 1.0], [0.0, 3.0]]), Budget(size_mb=(2 * 100 + 4 * 200) / 8 / 2**20))
    assert res.bits == (2, 4) and res.layer_names == ["a", "b"] and res.method == "ilp"
