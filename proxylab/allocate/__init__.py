"""Bit allocation under a size / BitOps budget: exact ILP for decomposable proxies, evolutionary search otherwise,
and the baseline allocators (uniform, HAWQ-V2, OMPQ, bparams, random) in one registry, ALLOCATORS."""
from proxylab.allocate.problem import BUDGET_KEYS, Allocation, AllocationProblem, Budget, parse_budget
from proxylab.allocate.ilp import allocate_ilp, solve_ilp
from proxylab.allocate.exhaustive import allocate_exhaustive
from proxylab.allocate.evolution import allocate_evolution
from proxylab.allocate.proxy_allocator import allocate_with_proxy, resolve_proxy
from proxylab.allocate.baselines import ALLOCATORS, run_allocator
from proxylab.allocate.api import allocate, budget_between

__all__ = [
    "Allocation", "AllocationProblem", "Budget", "parse_budget", "BUDGET_KEYS",
    "allocate_ilp", "solve_ilp", "allocate_exhaustive", "allocate_evolution",
    "allocate_with_proxy", "resolve_proxy", "ALLOCATORS", "run_allocator", "allocate", "budget_between",
]
