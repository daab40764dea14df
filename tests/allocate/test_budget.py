import numpy as np
import pytest

from proxylab.allocate import AllocationProblem, Budget, parse_budget
from proxylab.errors import ProxylabError


def test_parse_budget_forms():
    assert parse_budget(["size_mb=1.5"]) == Budget(size_mb=1.5)
    assert parse_budget("size_mb=0.25,bitops=2.5G") == Budget(size_mb=0.25, bitops=2.5e9)
    assert parse_budget(["bitops=3e6"]).bitops == 3e6
    assert parse_budget(["bitops=40k"]).bitops == 40e3


@pytest.mark.parametrize("text,match", [
    ("size=1", "unknown budget key 'size'"),
    ("size_mb", "KEY=VALUE"),
    ("size_mb=abc", "not a number"),
    ("size_mb=-1", "is negative"),
    ("size_mb=0", "positive"),
    ("size_mb=1,size_mb=2", "twice"),
    ("", "no budget"),
])
def test_parse_budget_errors(text, match):
    with pytest.raises(ProxylabError, match=match):
        parse_budget([text])


def test_sizes_and_bitops_match_contract_formula():
    params, macs = np.array([1000, 2000, 3000]), np.array([10_000, 40_000, 90_000])
    p = AllocationProblem(params, macs, (2, 3, 4), act_bits=8)
    bits = np.array([[2, 3, 4], [4, 4, 4]])
    np.testing.assert_allclose(p.size_mb(bits), (bits * params).sum(1) / 8 / 2**20)
    np.testing.assert_array_equal(p.bitops(bits), (bits * macs * 8).sum(1))
    exact = Budget(size_mb=float(p.size_mb(bits[0])))
    assert p.fits(bits[0], exact) and not p.fits(bits[1], exact)


def test_problem_validation():
    with pytest.raises(ProxylabError, match="no quantizable layers"):
        AllocationProblem([], [], (2, 4))
    with pytest.raises(ProxylabError, match="repeat"):
        AllocationProblem([1], [1], (2, 2))
    with pytest.raises(ProxylabError, match="integers"):
        AllocationProblem([1], [1], ("x",))
    with pytest.raises(ProxylabError, match="one entry per layer"):
        AllocationProblem([1, 2], [1], (2, 4))
    with pytest.raises(ProxylabError, match="integers"):
        AllocationProblem([1], [1], (2.7, 3))  # never truncated to 2
    assert AllocationProblem([1], [1], (2.0, "3")).bit_choices == (2, 3)


@pytest.mark.parametrize("act_bits", [4.5, True, "eight", None])
def test_act_bits_must_be_an_integer(act_bits):
    with pytest.raises(ProxylabError, match="act_bits"):
        AllocationProblem([1], [1], (2, 4), act_bits=act_bits)


def test_integral_act_bits_are_stored_as_int_and_used_by_every_cost():
    p = AllocationProblem([1], [10], (2, 4), act_bits=np.int64(4))
    assert type(p.act_bits) is int and p.bitops(np.array([4])) == 160


def test_a_decimal_bitops_budget_with_a_suffix_allows_exactly_that_count():
    """541919.759028M multiplies out to 541919759027.99994 in floats: the exact count must still fit."""
    rng = np.random.default_rng(0)
    for count in rng.integers(10**11, 10**12, size=2000):
        count = int(count)
        p = AllocationProblem([1], [count], (1,), act_bits=1)  # all-1-bit BitOps = count
        text = f"bitops={count / 1e6:.6f}M"
        assert p.fits(np.array([1]), parse_budget(text)), text
        p.check_feasible(parse_budget(text))
    p = AllocationProblem([1], [10**11], (1,), act_bits=1)
    assert not p.fits(np.array([1]), Budget(bitops=10**11 - 1))  # and one below does not
    p = AllocationProblem([1], [541919759028], (1,), act_bits=1)
    for below in (Budget(bitops=541919759027.5), parse_budget("bitops=541.9197590275G")):
        assert not p.fits(np.array([1]), below)  # half a BitOp short is short, not float error


@pytest.mark.parametrize("params", [1234561, 7, 999_999_999, 3_000_000])
def test_the_size_an_infeasible_budget_names_is_itself_feasible(params):
    p = AllocationProblem([params], [1], (2, 3))
    with pytest.raises(ProxylabError, match="infeasible") as exc:
        p.check_feasible(Budget(size_mb=float(p.size_mb(np.array([2]))) * 0.5))
    named = float(str(exc.value).split("needs size_mb=")[1].split(";")[0])
    assert named >= float(p.size_mb(np.array([2])))
    p.check_feasible(Budget(size_mb=named))  # passing the named value back works


def test_an_infeasible_bitops_budget_names_the_exact_count():
    p = AllocationProblem([1], [123_456_789], (2, 3), act_bits=8)
    with pytest.raises(ProxylabError, match=r"needs bitops=1975308624;"):
        p.check_feasible(Budget(bitops=1e9))
