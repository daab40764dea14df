"""The oracle path: EMQ's way of scoring, one configuration at a time, one layer at a time, from scratch.

Each primitive is written here in its plain unbatched form (the reference definition); the vectorised
evaluator in proxylab.proxy.evaluate must agree with it. Every intermediate value is checked, so this path
also defines what "invalid" means: any NaN/inf anywhere in the computation of a layer.
"""
from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from proxylab.errors import ProxylabError
from proxylab.proxy.errors import InvalidProxy
from proxylab.proxy.evaluate import bits_to_columns
from proxylab.proxy.inputs import scalar_input, tensor_input
from proxylab.proxy.language import TENSOR_INPUTS
from proxylab.proxy.parse import Node


def _log(x):
    x = x.clone()
    x[x <= 0] = 1
    return torch.log(x)


def _abslog(x):
    x = x.clone()
    x[x == 0] = 1
    return torch.log(torch.abs(x))


def _sqrt(x):
    x = x.clone()
    x[x <= 0] = 0
    return torch.sqrt(x)


def _softmax(x):
    return F.softmax(x, dim=0)


def _log_softmax(x):
    return F.log_softmax(x, dim=0)


def _rows(x):
    return x.reshape(x.shape[0] if x.ndim else 1, -1)


def _matmul(x, y):
    a, b = _rows(x), _rows(y)
    if a.shape[1] != b.shape[1]:
        raise ValueError("matmul column mismatch")
    return a @ b.T


NAIVE_OPS = {
    "log": _log,
    "abslog": _abslog,
    "abs": torch.abs,
    "pow2": lambda x: torch.pow(x, 2),
    "exp": torch.exp,
    "zscore": lambda x: (x - x.mean()) / (torch.std(x) + 1e-9),
    "relu": F.relu,
    "invert": lambda x: 1 / x,
    "frobenius": lambda x: torch.sqrt((x * x).sum()),
    "normsum": lambda x: x.sum() / x.numel(),
    "l1": lambda x: x.abs().sum() / x.numel(),
    "softmax": _softmax,
    "sigmoid": torch.sigmoid,
    "logsoftmax": _log_softmax,
    "sqrt": _sqrt,
    "neg": lambda x: -x,
    "minmax": lambda x: (x - x.min()) / (x.max() - x.min() + 1e-9),
    "tomean": torch.mean,
    "tostd": torch.std,
    "noop": lambda x: x,
    "add": lambda x, y: x + y,
    "sub": lambda x, y: x - y,
    "mul": lambda x, y: x * y,
    "matmul": _matmul,
    "mean": torch.mean,
    "std": torch.std,
    "norm": lambda x: torch.sqrt((x * x).sum()),
    "sadd": lambda a, b: a + b,
    "ssub": lambda a, b: a - b,
    "smul": lambda a, b: a * b,
    "sdiv": lambda a, b: a / b,
    "sneg": lambda a: -a,
    "slog": _abslog,
    "sabs": torch.abs,
}


def naive_layer_value(node: Node, stats, layer: int, bits: int, dtype=torch.float64) -> float:
    """One layer's scalar at one bit-width, recomputed from the stats tensors."""
    layer_name = stats.layer_names[layer]

    def ev(n: Node) -> torch.Tensor:
        if n.name in TENSOR_INPUTS:
            out = tensor_input(stats, layer, n.name, bits, dtype)
        elif not n.children:
            out = torch.tensor(scalar_input(stats, layer, n.name, bits), dtype=dtype)
        else:
            args = [ev(c) for c in n.children]
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    out = NAIVE_OPS[n.name](*args)
            except (RuntimeError, ValueError) as e:
                raise InvalidProxy(layer_name, n.name, f"shapes do not fit ({e})") from None
        if not bool(torch.isfinite(out).all()):
            raise InvalidProxy(layer_name, n.name, "NaN/inf")
        return out

    return float(ev(node))


def naive_score(node: Node, stats, bits_row: Sequence[int], dtype=torch.float64) -> float:
    """The proxy's score for one configuration: every layer from scratch, then the aggregate."""
    bits_row = np.asarray(bits_row).ravel()
    if len(bits_row) != len(stats.layer_names):
        raise ProxylabError(f"config has {len(bits_row)} bit-widths but the network has {len(stats.layer_names)} layers")
    # The fast path's validation, so the oracle refuses what score_configs refuses (2.7 is not truncated to 2).
    bits_to_columns(bits_row[None], stats.bit_choices, stats.layer_names)
    bits_row = [int(b) for b in bits_row]
    inner = node.children[0]
    values = np.array([naive_layer_value(inner, stats, l, b, dtype) for l, b in enumerate(bits_row)])
    agg = {"mean_layers": np.mean, "sum_layers": np.sum, "min_layers": np.min, "max_layers": np.max}[node.name]
    out = float(agg(values))
    if not math.isfinite(out):
        raise InvalidProxy(stats.layer_names[-1], node.name, "aggregate overflowed")
    return out
