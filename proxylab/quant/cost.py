"""Model size and BitOps of bit configurations, vectorised over any number of configurations."""
from __future__ import annotations

import numpy as np

from proxylab.errors import ProxylabError


def _as_configs(values, n_layers: int, what: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim == 0 or arr.shape[-1] != n_layers:
        got = "a scalar" if arr.ndim == 0 else f"{arr.shape[-1]} per configuration"
        raise ProxylabError(f"{what}: expected {n_layers} bit-widths per configuration (one per layer), got {got}")
    return arr.astype(np.float64)


def size_mb(params, bits) -> np.ndarray:
    """MiB = sum_l bits_l * params_l / 8 / 2**20 over the last axis; bits may be [L] or [..., L].

    ``params`` are the per-layer counts of ``LayerInfo.params`` (weights, bias and folded BN, all counted at
    the layer's weight bit-width, as MQ-Bench does). Returns a float for one configuration.
    """
    p = np.asarray(params, dtype=np.float64)
    b = _as_configs(bits, p.shape[-1], "size_mb")
    out = (b * p).sum(axis=-1) / 8.0 / 2**20
    return float(out) if np.ndim(out) == 0 else out


def bitops(macs, wbits, abits) -> np.ndarray:
    """sum_l macs_l * wbits_l * abits_l over the last axis; abits is a scalar or per-layer like wbits."""
    m = np.asarray(macs, dtype=np.float64)
    w = _as_configs(wbits, m.shape[-1], "bitops")
    a = np.asarray(abits, dtype=np.float64)
    out = (m * w * a).sum(axis=-1)
    return float(out) if np.ndim(out) == 0 else out
