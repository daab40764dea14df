"""One call from NetworkStats to an allocation: ``allocate(stats, budget, proxy=..., allocator=...)``."""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Union

from proxylab.allocate.baselines import run_allocator
from proxylab.allocate.problem import Allocation, AllocationProblem, Budget, parse_budget
from proxylab.errors import ProxylabError

BudgetLike = Union[Budget, Dict[str, float], str, Sequence[str]]


def as_budget(budget: BudgetLike) -> Budget:
    if isinstance(budget, Budget):
        return budget
    if isinstance(budget, dict):
        return parse_budget([f"{k}={v}" for k, v in budget.items()])
    return parse_budget(budget)


def allocate(
    stats,
    budget: BudgetLike,
    proxy: Any = None,
    allocator: str = "proxylab",
    bit_choices: Optional[Sequence[int]] = None,
    act_bits: int = 8,
    seed: int = 0,
) -> Allocation:
    """Per-layer bits for the network ``stats`` describe, under ``budget`` (Budget, {'size_mb': 1.2},
    'size_mb=1.2,bitops=3G'), chosen by ``allocator`` (a name in ALLOCATORS)."""
    problem = AllocationProblem.from_stats(stats, bit_choices, act_bits)
    return run_allocator(allocator, problem, as_budget(budget), proxy=proxy, seed=seed)


def budget_between(problem: AllocationProblem, fraction: float, low_bits: Optional[int] = None,
                   high_bits: Optional[int] = None) -> Budget:
    """The size budget ``fraction`` of the way from all-low-bit to all-high-bit size (benchmarks' 25/50/75%)."""
    if not 0.0 <= fraction <= 1.0:
        raise ProxylabError(f"budget fraction {fraction} must lie in [0, 1]")
    lo = min(problem.bit_choices) if low_bits is None else low_bits
    hi = max(problem.bit_choices) if high_bits is None else high_bits
    total = int(problem.params.sum())
    bits = (lo + fraction * (hi - lo)) * total
    return Budget(size_mb=bits / (8 * 2**20))
