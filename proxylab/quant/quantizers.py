"""Fake quantizers: symmetric signed weights (per channel or per tensor) and min-max calibrated activations.

Fake quantization keeps float tensors whose values lie on the integer grid times a scale, so the quantized
network runs with ordinary float kernels and its accuracy equals that of the integer network (up to float
summation order).
"""
from __future__ import annotations

import numbers
from typing import Optional

import numpy as np
import torch

from proxylab.errors import ProxylabError

CLIP_METHODS = ("max", "mse")
# Clip ratios tried by clip="mse": fractions of each channel's max |w|. Low bits want small ratios (2-bit
# Gaussian weights clip near a third of the max), so the grid reaches down to 5%.
MSE_CLIP_RATIOS = tuple(float(r) for r in torch.linspace(0.05, 1.0, 39).tolist())


def check_bits(bits, what: str = "bit-width") -> int:
    """An int in 1..16 (python, numpy or 0-d torch integer), else ProxylabError."""
    if isinstance(bits, torch.Tensor) and bits.ndim == 0 and not bits.is_floating_point():
        bits = int(bits)
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral):
        raise ProxylabError(f"{what} must be an integer in 1..16, got {bits!r}")
    b = int(bits)
    if not 1 <= b <= 16:
        raise ProxylabError(f"{what} must be in 1..16, got {b}")
    return b


def _rows(w: torch.Tensor, per_channel: bool) -> torch.Tensor:
    return w.reshape(w.shape[0], -1) if per_channel and w.dim() > 1 else w.reshape(1, -1)


def _round_clamp(rows: torch.Tensor, scale: torch.Tensor, qmax: int) -> torch.Tensor:
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero channel stays zero, never NaN
    return torch.clamp(torch.round(rows / safe), -qmax, qmax) * scale


def weight_scale(w: torch.Tensor, bits: int, per_channel: bool = True, clip: str = "max") -> torch.Tensor:
    """The quantization step per output channel ([C, 1]) or per tensor ([1, 1]).

    bits >= 2: levels are the integers -qmax..qmax with qmax = 2**(bits-1) - 1 (symmetric, so zero is exact);
    clip="max" sets scale = max|w| / qmax, clip="mse" picks per channel the clip ratio of max|w| (from
    MSE_CLIP_RATIOS) with the smallest squared error. bits == 1 is binary, levels +-scale with
    scale = mean|w| (the least-squares optimum for sign quantization, whatever the clip method).
    """
    b = check_bits(bits)
    if clip not in CLIP_METHODS:
        raise ProxylabError(f"unknown clip method '{clip}'; use one of {', '.join(CLIP_METHODS)}")
    rows = _rows(w.detach(), per_channel).float()
    if b == 1:
        return rows.abs().mean(dim=1, keepdim=True)
    qmax = 2 ** (b - 1) - 1
    amax = rows.abs().amax(dim=1, keepdim=True)
    if clip == "max":
        return amax / qmax
    best_scale = amax / qmax
    best_err = ((_round_clamp(rows, best_scale, qmax) - rows) ** 2).sum(dim=1, keepdim=True)
    for ratio in MSE_CLIP_RATIOS[:-1]:
        scale = amax * ratio / qmax
        err = ((_round_clamp(rows, scale, qmax) - rows) ** 2).sum(dim=1, keepdim=True)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_scale = torch.where(better, scale, best_scale)
    return best_scale


def quantize_weight(w: torch.Tensor, bits: int, per_channel: bool = True, clip: str = "max") -> torch.Tensor:
    """Symmetric signed round-to-nearest fake quantization of a weight (see ``weight_scale`` for the grid).

    Per output channel (dim 0) by default. Returns a new tensor of w's shape and dtype; w is untouched.
    """
    scale = weight_scale(w, bits, per_channel, clip)
    rows = _rows(w.detach(), per_channel).float()
    if int(bits) == 1:
        q = torch.where(rows >= 0, scale, -scale)
    else:
        q = _round_clamp(rows, scale, 2 ** (int(bits) - 1) - 1)
    return q.reshape(w.shape).to(w.dtype)


def _dense_view(x: torch.Tensor) -> torch.Tensor:
    """x as a flat view when its memory is dense (reductions over channels-last strides are ~2x slower)."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return x.permute(0, 2, 3, 1).reshape(-1)
    return x.reshape(-1)


class ActQuantizer:
    """Per-tensor affine activation fake quantizer with a min-max range from calibration data.

    The range always contains 0. For a non-negative range (after ReLU) the zero point is 0, which is plain
    unsigned quantization over [0, max]; otherwise the grid is asymmetric with an integer zero point.
    Levels are 0..2**bits-1: q(x) = (clamp(round(x/scale) + zp, 0, 2**bits-1) - zp) * scale.
    """

    def __init__(self, bits: int = 8):
        self.bits = check_bits(bits, "activation bit-width")
        self.lo = float("inf")
        self.hi = float("-inf")
        self._fix_params()  # uncalibrated: scale 1, zero point 0

    def observe(self, x: torch.Tensor) -> None:
        lo, hi = torch.aminmax(_dense_view(x.detach()))
        self.lo = min(self.lo, float(lo))
        self.hi = max(self.hi, float(hi))
        self._fix_params()

    def set_range(self, lo: float, hi: float) -> "ActQuantizer":
        self.lo, self.hi = float(lo), float(hi)
        self._fix_params()
        return self

    def _fix_params(self) -> None:
        lo, hi = min(self.lo, 0.0), max(self.hi, 0.0)
        qmax = 2**self.bits - 1
        # An input that was exactly zero throughout calibration keeps scale 1: it quantizes to 0 either way.
        self.scale = (hi - lo) / qmax if hi > lo else 1.0
        self.zero_point = int(min(max(round(-lo / self.scale), 0), qmax))
        # What the kernels use: the float32 scale, its float32 reciprocal (quantize_per_tensor and
        # fake_quantize_per_tensor_affine both multiply by 1.0f / scale, never divide), and the grid's integer
        # bounds with the zero point already subtracted.
        scale32 = np.float32(self.scale)
        self._scale32 = float(scale32)
        self._inv32 = float(np.float32(1.0) / scale32)
        self._qlo = -self.zero_point
        self._qhi = qmax - self.zero_point

    @property
    def calibrated(self) -> bool:
        return self.hi >= self.lo

    def __call__(self, x: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """q(x), into ``out`` when given (a tensor of x's shape and strides that nothing else reads).

        On the CPU in float32: four in-place passes, (clamp(round(x * (1/s)), -zp, qmax - zp)) * s, which equal
        torch's fused ``fake_quantize_per_tensor_affine`` and ``quantize_per_tensor`` + ``dequantize`` bit for bit
        (same float32 reciprocal, round half to even, integer clamp, one rounding of the product; tested). The
        fused op measured ~3x slower than quantize + dequantize on the CPU, and those two allocate a byte tensor
        and a float tensor per call; writing into a reused ``out`` avoids both allocations (see buffers.py).
        Only beyond ~2**31 grid steps do they part: the quint8 kernel's int32 wraps around there (1e30 became
        the grid's lowest level), while this clamps to the top like the fused op; NaN stays NaN here.
        Other dtypes and devices go through the fused op, which is fast on a GPU.
        """
        if x.dtype != torch.float32 or x.device.type != "cpu" or (x.requires_grad and torch.is_grad_enabled()):
            # the fused op also carries autograd (a straight-through gradient); out= tensors cannot
            q = self.reference(x)
            return q if out is None else out.copy_(q)
        if out is None:
            out = torch.empty_like(x)
        return torch.mul(x, self._inv32, out=out).round_().clamp_(self._qlo, self._qhi).mul_(self._scale32)

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """The same quantizer through torch's fused fake-quant op (any bits, any float dtype)."""
        return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, 0, 2**self.bits - 1)

    def __repr__(self) -> str:
        return f"ActQuantizer(bits={self.bits}, range=[{self.lo:.4g}, {self.hi:.4g}], zero_point={self.zero_point})"


def fake_quant_activation(x: torch.Tensor, bits: int, lo: Optional[float] = None, hi: Optional[float] = None):
    """One-off helper: quantize x with a range from (lo, hi) or, if not given, from x itself."""
    q = ActQuantizer(bits)
    if lo is None or hi is None:
        q.observe(x)
    else:
        q.set_range(lo, hi)
    return q(x)
