"""Constrained evolutionary search over bit configurations, for scores that do not decompose over layers
(``min_layers`` / ``max_layers`` proxies, or any black-box ``score_fn``).

Every individual is kept feasible: crossover and mutation may overshoot the budget, and a repair step lowers
randomly chosen layers (weighted by what they cost under the violated limit) until the config fits; a fill
step then raises random layers while they still fit, so the search walks the budget's boundary where the
good configs lie. Selection is (mu + lambda) over unique configs, scored in batches by ``score_fn`` and cached.
"""
from __future__ import annotations

from typing import Callable, Dict, Iterable, Optional, Tuple

import numpy as np

from proxylab.allocate.problem import Allocation, AllocationProblem, Budget
from proxylab.errors import ProxylabError


class _Feasibility:
    def __init__(self, problem: AllocationProblem, budget: Budget):
        self.problem = problem
        self.size_limit, self.ops_limit = problem.budget_limits(budget)
        self.choices = np.asarray(problem.bit_choices, dtype=np.int64)
        self.K = len(self.choices)

    def over(self, idx: np.ndarray) -> Tuple[int, int]:
        bits = self.choices[idx]
        s = 0 if self.size_limit is None else int(self.problem.weight_bits(bits)) - self.size_limit
        o = 0 if self.ops_limit is None else int(self.problem.bitops(bits)) - self.ops_limit
        return s, o

    def repair(self, idx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        idx = idx.copy()
        while True:
            s, o = self.over(idx)
            if s <= 0 and o <= 0:
                return idx
            cost = self.problem.params if s > 0 else self.problem.macs
            weight = np.where(idx > 0, cost.astype(np.float64) + 1e-9, 0.0)
            l = rng.choice(len(idx), p=weight / weight.sum())
            idx[l] -= 1

    def fill(self, idx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        idx = idx.copy()
        for l in rng.permutation(len(idx)):
            if idx[l] + 1 < self.K:
                idx[l] += 1
                s, o = self.over(idx)
                if s > 0 or o > 0:
                    idx[l] -= 1
        return idx


def highest_uniform_index(problem: AllocationProblem, budget: Budget) -> int:
    """Index of the highest bit choice at which every layer fits the budget (check_feasible first)."""
    L = problem.num_layers
    for k in range(len(problem.bit_choices) - 1, -1, -1):
        if problem.fits(np.full(L, problem.bit_choices[k]), budget):
            return k
    raise ProxylabError(f"no uniform configuration fits {budget.describe()}")  # pragma: no cover


def allocate_evolution(
    problem: AllocationProblem,
    score_fn: Callable[[np.ndarray], np.ndarray],
    budget: Budget,
    population: int = 40,
    generations: int = 80,
    patience: int = 25,
    seed: int = 0,
    initial: Optional[Iterable[Iterable[int]]] = None,
    allocator: str = "evolution",
) -> Allocation:
    """Best feasible config found for score_fn (bit VALUES [N, L] -> scores [N], higher is better).

    ``initial`` adds configs (bit values) to the first population, e.g. the ILP answer for a related
    decomposable score; they are repaired if they do not fit. Deterministic for a given seed.
    """
    if population < 2 or generations < 0:
        raise ProxylabError("evolution needs population >= 2 and generations >= 0")
    problem.check_feasible(budget)
    rng = np.random.default_rng(seed)
    feas = _Feasibility(problem, budget)
    L, K = problem.num_layers, feas.K
    cache: Dict[bytes, float] = {}

    def evaluate(batch: np.ndarray) -> np.ndarray:
        keys = [row.tobytes() for row in batch]
        todo = [i for i, k in enumerate(keys) if k not in cache]
        if todo:
            vals = np.asarray(score_fn(feas.choices[batch[todo]]), dtype=np.float64).reshape(-1)
            if vals.shape[0] != len(todo):
                raise ProxylabError(f"score_fn returned {vals.shape[0]} scores for {len(todo)} configs")
            for i, v in zip(todo, vals):
                cache[keys[i]] = float(v) if np.isfinite(v) else -np.inf
        return np.array([cache[k] for k in keys])

    start = [np.zeros(L, dtype=np.int64), np.full(L, highest_uniform_index(problem, budget), dtype=np.int64)]
    for cfg in initial or []:
        cfg = np.asarray(list(cfg), dtype=np.int64)
        pos = {b: i for i, b in enumerate(problem.bit_choices)}
        if cfg.shape != (L,) or any(int(b) not in pos for b in cfg):
            raise ProxylabError(f"initial config {cfg.tolist()} must give one of {problem.bit_choices} per layer")
        start.append(feas.repair(np.array([pos[int(b)] for b in cfg]), rng))
    while len(start) < population:
        start.append(feas.fill(feas.repair(rng.integers(0, K, size=L), rng), rng))
    pop = _unique(np.stack(start))
    fit = evaluate(pop)

    best, stale = fit.max(), 0
    for _gen in range(generations):
        children = []
        for _ in range(population):
            a, b = (pop[_tournament(fit, rng)] for _ in range(2))
            child = np.where(rng.random(L) < 0.5, a, b)
            flip = rng.random(L) < max(1.0 / L, 0.1)
            child = np.where(flip, np.clip(child + rng.choice([-1, 1], size=L), 0, K - 1), child)
            child = feas.repair(child, rng)
            if rng.random() < 0.5:
                child = feas.fill(child, rng)
            children.append(child)
        merged = _unique(np.concatenate([pop, np.stack(children)]))
        merged_fit = evaluate(merged)
        order = np.argsort(-merged_fit, kind="stable")[:population]
        pop, fit = merged[order], merged_fit[order]
        if fit[0] > best:
            best, stale = fit[0], 0
        else:
            stale += 1
            if stale >= patience:
                break

    top = int(np.argmax(fit))
    if not np.isfinite(fit[top]):
        raise ProxylabError("the score is not finite for any configuration the search tried: the proxy cannot score this network")
    return problem.make_allocation(pop[top], allocator, "evolution", score=fit[top], evaluated=len(cache))


def _tournament(fit: np.ndarray, rng: np.random.Generator, size: int = 2) -> int:
    picks = rng.integers(0, len(fit), size=size)
    return int(picks[np.argmax(fit[picks])])


def _unique(batch: np.ndarray) -> np.ndarray:
    """Drop duplicate rows, keeping first occurrences in order (np.unique would reorder them)."""
    _, first = np.unique(batch, axis=0, return_index=True)
    return batch[np.sort(first)]
