"""Exact bit allocation for a proxy that decomposes over layers: an integer linear program (HAWQ-V3 style).

One binary x[l, k] per (layer, bit choice), exactly one choice per layer, the weight-bit and BitOps sums under
the budget, maximise sum_l S[l, k]. ``mean_layers`` and ``sum_layers`` share that argmax. HiGHS (through
scipy.optimize.milp) solves it to a zero relative gap (``rel_gap`` loosens that where proving optimality is
not worth minutes); the answer is then re-checked in exact integers, and a tolerance artefact (HiGHS accepts
rows violated by ~1e-7 relative) tightens the row and solves again.
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Iterator, Optional, Sequence

import numpy as np

from proxylab.allocate.problem import Allocation, AllocationProblem, Budget
from proxylab.errors import ProxylabError

DECOMPOSABLE = {"mean": "mean", "mean_layers": "mean", "sum": "sum", "sum_layers": "sum"}


def aggregate(values: np.ndarray, aggregator: str) -> np.ndarray:
    """Aggregate per-layer scores [..., L] the way the proxy language does."""
    fn = {"mean": np.mean, "sum": np.sum, "min": np.min, "max": np.max}[aggregator.replace("_layers", "")]
    return fn(values, axis=-1)


def check_layer_scores(scores, problem: AllocationProblem) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    want = (problem.num_layers, len(problem.bit_choices))
    if scores.shape != want:
        raise ProxylabError(f"layer score table has shape {scores.shape}, expected [layers, bit choices] = {want}")
    if not np.isfinite(scores).all():
        l, k = np.argwhere(~np.isfinite(scores))[0]
        raise ProxylabError(
            f"layer score table holds a non-finite value at layer {problem.layer_names[l]} "
            f"(bits {problem.bit_choices[k]}): the proxy cannot score this network; pick another proxy"
        )
    return scores


@contextmanager
def _native_stdout_silenced() -> Iterator[None]:
    """HiGHS (scipy 1.17) prints a debug line from C++ straight to file descriptor 1 when presolve maps a
    solution back; it would corrupt `--format json` output, so fd 1 points at /dev/null while it runs."""
    if sys.stdout is not sys.__stdout__:
        # A notebook kernel (or pytest's capture) owns fd 1 through its own pipe and reader thread; swapping
        # the fd under it is what we must not do there, and nothing parses that stream as JSON anyway.
        yield
        return
    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError, AttributeError):
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def solve_ilp(
    problem: AllocationProblem,
    scores,
    budget: Budget,
    aggregator: str = "mean",
    allocator: str = "ilp",
    time_limit: float = 120.0,
    rel_gap: float = 0.0,
) -> Allocation:
    from scipy.optimize import Bounds, LinearConstraint, milp

    if aggregator not in DECOMPOSABLE:
        raise ProxylabError(
            f"aggregator '{aggregator}' does not decompose over layers, so the ILP cannot optimise it; "
            f"use the evolutionary search (proxylab.allocate.allocate_evolution)"
        )
    scores = check_layer_scores(scores, problem)
    problem.check_feasible(budget)
    L, K = scores.shape
    # Per-row shifts leave the argmax unchanged (one choice per row); scaling to [0, 1] keeps HiGHS's
    # absolute tolerances meaningful whatever the proxy's units.
    shifted = scores - scores.min(axis=1, keepdims=True)
    scale = shifted.max()
    c = -(shifted / scale if scale > 0 else shifted).ravel()

    bits = np.asarray(problem.bit_choices, dtype=np.float64)
    onehot = np.kron(np.eye(L), np.ones(K))
    size_row = (problem.params[:, None].astype(np.float64) * bits[None, :]).ravel()
    ops_row = (problem.macs[:, None].astype(np.float64) * bits[None, :] * problem.act_bits).ravel()
    size_limit, ops_limit = problem.budget_limits(budget)

    for _attempt in range(8):
        constraints = [LinearConstraint(onehot, 1, 1)]
        # Rows are normalised by their limit so the solver's feasibility tolerance is relative.
        if size_limit is not None:
            constraints.append(LinearConstraint(size_row[None, :] / size_limit, -np.inf, 1.0))
        if ops_limit is not None:
            constraints.append(LinearConstraint(ops_row[None, :] / max(ops_limit, 1), -np.inf, 1.0))
        with _native_stdout_silenced():
            res = milp(
                c,
                integrality=np.ones(L * K),
                bounds=Bounds(0, 1),
                constraints=constraints,
                options={"mip_rel_gap": rel_gap, "time_limit": time_limit, "presolve": True},
            )
        if res.x is None:
            raise ProxylabError(f"the ILP solver found no configuration within {budget.describe()}: {res.message}")
        idx = res.x.reshape(L, K).argmax(axis=1)
        chosen = problem.indices_to_bits(idx)
        over_size = 0 if size_limit is None else int(problem.weight_bits(chosen)) - size_limit
        over_ops = 0 if ops_limit is None else int(problem.bitops(chosen)) - ops_limit
        if over_size <= 0 and over_ops <= 0:
            break
        if over_size > 0:
            size_limit -= over_size
        if over_ops > 0:
            ops_limit -= over_ops
    else:  # pragma: no cover - only a broken solver gets here
        raise RuntimeError("ILP kept returning configurations over the budget")

    value = float(aggregate(scores[np.arange(L), idx], aggregator))
    # A re-solve under a tightened limit is optimal for that limit: a configuration between it and the budget
    # (within the solver's feasibility tolerance of the budget) could score higher, so it is not called optimal.
    return problem.make_allocation(
        idx, allocator, "ilp", score=value, optimal=bool(res.status == 0) and _attempt == 0,
        solver=str(res.message) + (f"; re-solved {_attempt} time(s) under a tightened limit" if _attempt else "")
    )


def allocate_ilp(
    layer_scores,
    params: Sequence[int],
    macs: Sequence[int],
    bit_choices: Sequence[int],
    size_budget_mb: Optional[float] = None,
    bitops_budget: Optional[float] = None,
    act_bits: int = 8,
    aggregator: str = "mean",
) -> Allocation:
    """Plain-array entry point: best config (bit values) maximising the aggregated per-layer score."""
    problem = AllocationProblem(params, macs, tuple(bit_choices), act_bits)
    order = np.argsort(np.asarray(bit_choices))
    scores = np.asarray(layer_scores, dtype=np.float64)
    if scores.ndim == 2 and scores.shape[1] == len(order):
        scores = scores[:, order]  # problem.bit_choices are sorted; keep columns aligned with them
    return solve_ilp(problem, scores, Budget(size_budget_mb, bitops_budget), aggregator)
