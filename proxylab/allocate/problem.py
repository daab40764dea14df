"""What an allocation problem is: per-layer costs, the bit choices, a budget; and what an answer looks like.

Sizes and BitOps are kept as exact integers (weight bits, MAC x weight bits x activation bits) so a
configuration either fits a budget or does not: no float tolerance decides feasibility. MiB follow the
contract's formula ``sum(b * p) / 8 / 2**20``.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from proxylab.errors import ProxylabError

MIB_BITS = 8 * 2**20  # bits in one MiB

_SUFFIX = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
BUDGET_KEYS = {
    "size_mb": "model weight size in MiB (sum of bits x parameters / 8 / 2**20)",
    "bitops": "sum over layers of MACs x weight bits x activation bits (suffixes K, M, G, T allowed)",
}


@dataclass(frozen=True)
class Budget:
    """Upper limits; None means unconstrained. At least one must be set to make a problem meaningful."""

    size_mb: Optional[float] = None
    bitops: Optional[float] = None

    def __post_init__(self):
        for key in ("size_mb", "bitops"):
            v = getattr(self, key)
            if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ProxylabError(f"budget {key}={v!r} must be a positive finite number")

    @property
    def is_empty(self) -> bool:
        return self.size_mb is None and self.bitops is None

    def describe(self) -> str:
        parts = []
        if self.size_mb is not None:
            parts.append(f"size_mb={self.size_mb:g}")
        if self.bitops is not None:
            parts.append(f"bitops={self.bitops:.6g}")
        return ", ".join(parts) or "(no budget)"

    def to_dict(self) -> Dict[str, Optional[float]]:
        return {"size_mb": self.size_mb, "bitops": self.bitops}


def _parse_number(key: str, text: str) -> float:
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([kKmMgGtT]?)\s*", text)
    if not m:
        if text.strip().startswith("-"):
            raise ProxylabError(f"budget {key}={text.strip()} is negative: a budget is a positive upper limit")
        raise ProxylabError(f"budget {key}='{text}' is not a number; write e.g. size_mb=1.5 or bitops=2.5G")
    return float(m.group(1)) * _SUFFIX[m.group(2).lower()]


def parse_budget(items: Sequence[str] | str) -> Budget:
    """['size_mb=1.5', 'bitops=2G'] (or one 'size_mb=1.5,bitops=2G' string) -> Budget."""
    if isinstance(items, str):
        items = [items]
    values: Dict[str, float] = {}
    for item in items:
        for part in item.split(","):
            part = part.strip()
            if not part:
                continue
            if "=" not in part:
                raise ProxylabError(f"budget '{part}' must look like KEY=VALUE with KEY in {', '.join(BUDGET_KEYS)}")
            key, text = (s.strip() for s in part.split("=", 1))
            if key not in BUDGET_KEYS:
                known = "; ".join(f"{k}: {h}" for k, h in BUDGET_KEYS.items())
                raise ProxylabError(f"unknown budget key '{key}'. Known keys: {known}")
            if key in values:
                raise ProxylabError(f"budget key '{key}' is given twice")
            values[key] = _parse_number(key, text)
    budget = Budget(**values)
    if budget.is_empty:
        raise ProxylabError("no budget given: pass --budget size_mb=X and/or --budget bitops=Y")
    return budget


@dataclass
class AllocationProblem:
    """Per-layer costs and allowed bit-widths (optionally with the NetworkStats the score-based allocators need)."""

    params: np.ndarray
    macs: np.ndarray
    bit_choices: Tuple[int, ...]
    act_bits: int = 8
    layer_names: Optional[List[str]] = None
    stats: object = None  # proxylab.stats.NetworkStats, needed by proxy / Hessian / OMPQ allocators

    def __post_init__(self):
        self.params = np.asarray(self.params, dtype=np.int64).reshape(-1)
        self.macs = np.asarray(self.macs, dtype=np.int64).reshape(-1)
        self.bit_choices = validate_bit_choices(self.bit_choices)
        if len(self.params) == 0:
            raise ProxylabError("the network has no quantizable layers (Conv2d / Linear): nothing to allocate")
        if self.params.shape != self.macs.shape:
            raise ProxylabError(f"params ({len(self.params)}) and macs ({len(self.macs)}) must have one entry per layer")
        if (self.params <= 0).any() or (self.macs < 0).any():
            raise ProxylabError("every layer needs a positive parameter count and a non-negative MAC count")
        if self.layer_names is None:
            self.layer_names = [f"layer{i}" for i in range(len(self.params))]
        if len(self.layer_names) != len(self.params):
            raise ProxylabError("layer_names must have one entry per layer")
        self.act_bits = as_integer(self.act_bits, "act_bits")
        if not 1 <= self.act_bits <= 32:
            raise ProxylabError(f"act_bits={self.act_bits} must lie in 1..32")

    @classmethod
    def from_stats(cls, stats, bit_choices: Optional[Sequence[int]] = None, act_bits: int = 8) -> "AllocationProblem":
        choices = tuple(stats.bit_choices) if bit_choices is None else validate_bit_choices(bit_choices)
        missing = [b for b in choices if b not in tuple(stats.bit_choices)]
        if missing:
            raise ProxylabError(
                f"bit choice(s) {missing} have no statistics: the stats were computed for bits "
                f"{tuple(stats.bit_choices)}; recompute them with these bits or pick among them"
            )
        return cls(stats.params, stats.macs, choices, act_bits, list(stats.layer_names), stats)

    @property
    def num_layers(self) -> int:
        return len(self.params)

    # --- exact integer costs -------------------------------------------------------------------------------
    def weight_bits(self, bits) -> np.ndarray:
        """Total weight bits of configs given as bit VALUES, shape [..., L] -> [...] (int64, exact)."""
        return (np.asarray(bits, dtype=np.int64) * self.params).sum(axis=-1)

    def bitops(self, bits) -> np.ndarray:
        return (np.asarray(bits, dtype=np.int64) * self.macs).sum(axis=-1) * int(self.act_bits)

    def size_mb(self, bits) -> np.ndarray:
        return self.weight_bits(bits) / MIB_BITS

    def budget_limits(self, budget: Budget) -> Tuple[Optional[int], Optional[int]]:
        """Integer limits (weight bits, BitOps) a config must not exceed."""
        size = None if budget.size_mb is None else _integer_limit(budget.size_mb * MIB_BITS)
        ops = None if budget.bitops is None else _integer_limit(budget.bitops)
        return size, ops

    def fits(self, bits, budget: Budget) -> np.ndarray:
        size, ops = self.budget_limits(budget)
        ok = np.ones(np.asarray(bits).shape[:-1], dtype=bool)
        if size is not None:
            ok &= self.weight_bits(bits) <= size
        if ops is not None:
            ok &= self.bitops(bits) <= ops
        return ok

    def check_feasible(self, budget: Budget) -> None:
        """ProxylabError naming the smallest feasible budget when even all-minimum bits do not fit."""
        if budget.is_empty:
            raise ProxylabError("no budget given: set size_mb and/or bitops")
        low = np.full(self.num_layers, min(self.bit_choices))
        size, ops = self.budget_limits(budget)
        b = min(self.bit_choices)
        # The needed values print so that passing them back fits: size rounded UP at 6 digits, BitOps exact.
        if size is not None and self.weight_bits(low) > size:
            raise ProxylabError(
                f"budget size_mb={budget.size_mb:g} is infeasible: the smallest configuration (every layer at "
                f"{b} bits) needs size_mb={_ceil_6g(float(self.size_mb(low)))}; raise the budget to at least that"
            )
        if ops is not None and self.bitops(low) > ops:
            raise ProxylabError(
                f"budget bitops={budget.bitops:.6g} is infeasible: the smallest configuration (every layer at "
                f"{b} bits, activations at {self.act_bits}) needs bitops={int(self.bitops(low))}; raise the "
                f"budget to at least that"
            )

    def indices_to_bits(self, idx) -> np.ndarray:
        return np.asarray(self.bit_choices, dtype=np.int64)[np.asarray(idx)]

    def make_allocation(self, idx, allocator: str, method: str, score: Optional[float] = None, **extra) -> "Allocation":
        bits = self.indices_to_bits(idx)
        return Allocation(
            bits=tuple(int(b) for b in bits),
            size_mb=float(self.size_mb(bits)),
            bitops=int(self.bitops(bits)),
            score=None if score is None else float(score),
            allocator=allocator,
            method=method,
            layer_names=list(self.layer_names),
            extra=dict(extra),
        )


def _integer_limit(value: float) -> int:
    """The largest integer count <= value, where a value within float error of an integer IS that integer:
    bitops=541919.759028M multiplies out to 541919759027.99994 in floats, and must still allow 541919759028."""
    nearest = round(value)
    if abs(value - nearest) <= 4 * np.spacing(abs(value)):  # a few float steps: rounding, never a real excess
        return int(nearest)
    return int(math.floor(value))


def _ceil_6g(value: float) -> str:
    """``value`` to 6 significant digits, rounded up: a budget typed from this text is never below ``value``."""
    text = f"{value:.6g}"
    if float(text) >= value:
        return text
    step = 10.0 ** (math.floor(math.log10(value)) - 5)
    return f"{(math.floor(value / step) + 1) * step:.6g}"


def as_integer(value, what: str) -> int:
    """An int from an int, an integral float or a digit string; anything else (2.7, True, "x") is an error,
    never a silent truncation."""
    if isinstance(value, (bool, np.bool_)):
        raise ProxylabError(f"{what} must be an integer, got {value!r}")
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?[0-9]+\s*", value):
        return int(value)
    raise ProxylabError(f"{what} must be an integer, got {value!r}")


def validate_bit_choices(bit_choices: Sequence[int]) -> Tuple[int, ...]:
    try:
        choices = tuple(as_integer(b, "a bit choice") for b in bit_choices)
    except (TypeError, ProxylabError):
        raise ProxylabError(f"bit choices {bit_choices!r} must be integers such as 2,3,4") from None
    if not choices:
        raise ProxylabError("no bit choices given: pass e.g. --bits 2,3,4")
    bad = [b for b in choices if not 1 <= b <= 16]
    if bad:
        raise ProxylabError(f"bit choice(s) {bad} are outside 1..16; weight bit-widths must lie in 1..16")
    if len(set(choices)) != len(choices):
        raise ProxylabError(f"bit choices {list(choices)} repeat a value; give each bit-width once")
    return tuple(sorted(choices))


@dataclass
class Allocation:
    """One chosen configuration: bit VALUES per layer in forward order, its exact costs and its score."""

    bits: Tuple[int, ...]
    size_mb: float
    bitops: int
    score: Optional[float]
    allocator: str
    method: str
    layer_names: List[str] = field(default_factory=list)
    extra: Dict[str, object] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, object]:
        out = {
            "allocator": self.allocator,
            "method": self.method,
            "size_mb": self.size_mb,
            "bitops": self.bitops,
            "score": self.score,
            "bits": list(self.bits),
            "layers": [{"layer": n, "bits": b} for n, b in zip(self.layer_names, self.bits)],
        }
        out.update(self.extra)
        return out
