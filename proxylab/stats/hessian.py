"""Per-layer Hessian summaries from Hessian-vector products: Hutchinson trace and power-iteration top eigenvalue.

Both take an ``hvp`` callable (v -> H v for one layer's diagonal Hessian block) so they can be tested against
an explicit matrix and used on a network alike. Probes and start vectors come from a seeded generator: the
same seed gives the same estimates bit for bit.
"""
from __future__ import annotations

import math
from typing import Callable, List, Sequence, Tuple

import torch

HVP = Callable[[torch.Tensor], torch.Tensor]


def rademacher(shape: Sequence[int], generator: torch.Generator, dtype=torch.float32) -> torch.Tensor:
    """+-1 entries with equal probability (minimum-variance Hutchinson probes for a fixed matrix)."""
    return torch.randint(0, 2, tuple(shape), generator=generator).to(dtype).mul_(2).sub_(1)


def hutchinson_trace(hvp: HVP, shape: Sequence[int], probes: int, generator: torch.Generator) -> Tuple[float, float]:
    """tr(H) estimated as the mean of v^T H v over Rademacher v; returns (estimate, standard error).

    The standard error is the sample std of the per-probe values over sqrt(probes); it is 0 with one probe
    (no spread to measure), which callers should read as "unknown", not "exact".
    """
    if probes < 1:
        raise ValueError("hutchinson_trace needs at least one probe")
    values: List[float] = []
    for _ in range(probes):
        v = rademacher(shape, generator)
        values.append(float((v * hvp(v)).sum()))
    mean = sum(values) / probes
    if probes == 1:
        return mean, 0.0
    var = sum((x - mean) ** 2 for x in values) / (probes - 1)
    return mean, math.sqrt(var / probes)


def power_iteration(
    hvp: HVP, shape: Sequence[int], iters: int, tol: float, generator: torch.Generator
) -> Tuple[float, int]:
    """Dominant eigenvalue (largest in magnitude, with its sign) of a symmetric H; returns (eigenvalue, iterations).

    Stops when the Rayleigh quotient changes by less than ``tol`` relative to its size, or after ``iters``
    products. A block whose products are all zero (a layer the loss does not depend on) gives 0.
    """
    if iters < 1:
        raise ValueError("power_iteration needs at least one iteration")
    v = torch.randn(tuple(shape), generator=generator)
    v /= v.norm()
    eig = 0.0
    for step in range(1, iters + 1):
        hv = hvp(v)
        new_eig = float((v * hv).sum())
        norm = float(hv.norm())
        if norm == 0.0 or not math.isfinite(norm):
            return (0.0 if norm == 0.0 else new_eig), step
        v = hv / norm
        if step > 1 and abs(new_eig - eig) <= tol * max(abs(new_eig), 1e-12):
            return new_eig, step
        eig = new_eig
    return eig, iters


def block_hvp(layer_grad: torch.Tensor, weight: torch.Tensor) -> HVP:
    """v -> H_ll v for the block of ``weight``, by differentiating <dL/dW, v> once more w.r.t. W alone.

    ``layer_grad`` must come from ``torch.autograd.grad(loss, ..., create_graph=True)``; the graph is kept
    so that every probe of every layer reuses the one forward pass.
    """

    def hvp(v: torch.Tensor) -> torch.Tensor:
        if not layer_grad.requires_grad:  # the loss is linear in W (or ignores it): the block is zero
            return torch.zeros_like(weight)
        (hv,) = torch.autograd.grad(layer_grad, weight, grad_outputs=v.to(layer_grad.dtype), retain_graph=True,
                                    allow_unused=True)
        return torch.zeros_like(weight) if hv is None else hv.detach()

    return hvp
