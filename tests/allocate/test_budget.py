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
    ("size_mb=-1", "not a number"),
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
