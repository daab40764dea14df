"""Where a formula's inputs come from: the NetworkStats accessors, per layer and bit choice.

``tensor_input`` / ``scalar_input`` serve the oracle path (one bit-width at a time). ``PreparedStats`` serves
the vectorised path: it keeps each needed stats tensor once in the evaluation dtype and stacks the
bit-dependent ones along a leading bit axis, so scoring thousands of candidates never converts twice.
``prepare(stats)`` returns the PreparedStats kept for a stats object (made on first use, dropped with it).
"""
from __future__ import annotations

import weakref
from typing import Dict, Tuple

import torch

from proxylab.errors import ProxylabError
from proxylab.proxy.errors import InvalidProxy
from proxylab.proxy.language import TENSOR_INPUTS

_SCALAR_KEYS = {"htrace": "hessian_trace", "heig": "hessian_eig"}


def scalar_input(stats, layer: int, name: str, bits: int) -> float:
    if name == "bits":
        return float(bits)
    if name == "params":
        return float(stats.params[layer])
    if name == "macs":
        return float(stats.macs[layer])
    return float(stats.scalar(layer, _SCALAR_KEYS[name]))


def tensor_input(stats, layer: int, name: str, bits: int, dtype=torch.float64) -> torch.Tensor:
    key, scaled = TENSOR_INPUTS[name]
    if key == "qerr":
        return stats.qerr(layer, int(bits)).detach().to("cpu", dtype)
    x = stats.tensor(layer, key).detach().to("cpu", dtype)
    return x * float(bits) if scaled else x


class PreparedStats:
    """Stats tensors in the evaluation dtype with the bit axis in front: [1, ...] shared, [n_bits, ...] stacked."""

    def __init__(self, stats, dtype=torch.float64, weak: bool = False):
        # The module cache holds these weakly-referencing the stats, so caching never keeps stats alive.
        self._stats = weakref.ref(stats) if weak else (lambda: stats)
        self.dtype = dtype
        self.layer_names = list(stats.layer_names)
        self.bit_choices = tuple(int(b) for b in stats.bit_choices)
        if not self.bit_choices:
            raise ProxylabError("these stats have no bit choices: compute them with bit_choices=(2, 3, 4) or similar")
        self.n_layers = len(self.layer_names)
        self.bits = torch.tensor(self.bit_choices, dtype=dtype)
        self._tensors: Dict[Tuple[str, int], torch.Tensor] = {}
        self._scalars: Dict[Tuple[str, int], torch.Tensor] = {}

    @property
    def stats(self):
        stats = self._stats()
        if stats is None:
            raise RuntimeError("the NetworkStats these prepared inputs came from no longer exist")
        return stats

    def _checked(self, x: torch.Tensor, layer: int, name: str) -> torch.Tensor:
        if not bool(torch.isfinite(x).all()):
            raise InvalidProxy(self.layer_names[layer], name, "the stats input holds NaN/inf")
        return x

    def tensor(self, layer: int, name: str) -> torch.Tensor:
        """[1, ...] for bit-independent inputs, [n_bits, ...] for bW/bA/bG/bV/Q."""
        key, scaled = TENSOR_INPUTS[name]
        base_key = ("qerr" if key == "qerr" else key, layer)
        x = self._tensors.get(base_key)
        if x is None:
            if key == "qerr":
                x = torch.stack([tensor_input(self.stats, layer, "Q", b, self.dtype) for b in self.bit_choices])
            else:
                x = self.stats.tensor(layer, key).detach().to("cpu", self.dtype)[None]
            x = self._checked(x, layer, name)
            self._tensors[base_key] = x
        if scaled:
            return x * self.bits.reshape((-1,) + (1,) * (x.ndim - 1))
        return x

    def scalar(self, layer: int, name: str) -> torch.Tensor:
        """[n_bits] for ``bits``, [1] for the others."""
        if name == "bits":
            return self.bits
        k = (name, layer)
        v = self._scalars.get(k)
        if v is None:
            v = torch.tensor([scalar_input(self.stats, layer, name, 0)], dtype=self.dtype)
            v = self._checked(v, layer, name)
            self._scalars[k] = v
        return v


_PREPARED: Dict[Tuple[int, torch.dtype], Tuple[weakref.ref, PreparedStats]] = {}


def prepare(stats, dtype=torch.float64) -> PreparedStats:
    if isinstance(stats, PreparedStats):
        return stats
    key = (id(stats), dtype)
    hit = _PREPARED.get(key)
    if hit is not None and hit[0]() is stats:
        return hit[1]
    try:
        ref = weakref.ref(stats, lambda _r, k=key: _PREPARED.pop(k, None))
    except TypeError:  # not weak-referenceable: no caching, still correct
        return PreparedStats(stats, dtype)
    prepared = PreparedStats(stats, dtype, weak=True)
    _PREPARED[key] = (ref, prepared)
    return prepared
