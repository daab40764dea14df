"""Batched primitives: every value carries a leading bit axis (size 1 when it does not depend on the bits,
else one entry per bit choice), and each op acts on every slice as its plain definition would.

The per-slice definitions (EMQ's, see language.DOC) are written once more, unbatched, in
proxylab.proxy.naive; the tests hold the two to each other. Guards follow EMQ's own definitions (log and
sqrt of entries <= 0, abslog of 0, the 1e-9 in zscore / minmax) and nothing else: an op that produces
NaN/inf from finite input (exp overflow, 1/0, std of one entry, shape mismatch) makes the proxy invalid.
"""
from __future__ import annotations

from typing import Callable, Dict

import torch
import torch.nn.functional as F


MAX_ELEMENTS = 50_000_000  # a larger intermediate makes the proxy invalid instead of exhausting memory


class ShapeMismatch(Exception):
    """Two tensors a binary op cannot combine (or only into a huge one); reported as an invalid proxy."""


def _guard_size(batch: int, shape) -> None:
    n = batch
    for d in shape:
        n *= int(d)
    if n > MAX_ELEMENTS:
        raise ShapeMismatch(f"the result would hold {n} values (limit {MAX_ELEMENTS})")


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1)


def _keep(x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Reshape a per-slice reduction [B] so it broadcasts against x [B, ...]."""
    return r.reshape((x.shape[0],) + (1,) * (x.ndim - 1))


def _std(x: torch.Tensor) -> torch.Tensor:
    return torch.std(_flat(x), dim=1, unbiased=True)  # one entry -> nan (invalid), as torch.std does


def _log(x):
    return torch.log(torch.where(x > 0, x, torch.ones((), dtype=x.dtype)))


def _abslog(x):
    return torch.log(torch.where(x == 0, torch.ones((), dtype=x.dtype), x.abs()))


def _zscore(x):
    f = _flat(x)
    return (x - _keep(x, f.mean(dim=1))) / (_keep(x, _std(x)) + 1e-9)


def _minmax(x):
    f = _flat(x)
    lo, hi = _keep(x, f.amin(dim=1)), _keep(x, f.amax(dim=1))
    return (x - lo) / (hi - lo + 1e-9)


def _softmax(x):
    if x.ndim == 1:  # 0-d slices: softmax over one entry
        return torch.exp(x - x)
    return F.softmax(x, dim=1)


def _logsoftmax(x):
    if x.ndim == 1:
        return x - x
    return F.log_softmax(x, dim=1)


def _sqrt(x):
    return torch.sqrt(torch.clamp_min(x, 0.0))


UNARY_T: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "log": _log,
    "abslog": _abslog,
    "abs": torch.abs,
    "pow2": lambda x: x * x,
    "exp": torch.exp,
    "zscore": _zscore,
    "relu": torch.relu,
    "invert": torch.reciprocal,
    "frobenius": lambda x: torch.linalg.vector_norm(_flat(x), dim=1),
    "normsum": lambda x: _flat(x).sum(dim=1) / _flat(x).shape[1],
    "l1": lambda x: _flat(x).abs().sum(dim=1) / _flat(x).shape[1],
    "softmax": _softmax,
    "sigmoid": torch.sigmoid,
    "logsoftmax": _logsoftmax,
    "sqrt": _sqrt,
    "neg": torch.neg,
    "minmax": _minmax,
    "tomean": lambda x: _flat(x).mean(dim=1),
    "tostd": _std,
    "noop": lambda x: x,
}


def _align(x: torch.Tensor, y: torch.Tensor):
    """Insert singleton axes after the bit axis so per-slice shapes broadcast right-aligned, as unbatched."""
    shapes = f"shapes {list(x.shape[1:])} and {list(y.shape[1:])} do not broadcast"
    d = (x.ndim - 1) - (y.ndim - 1)
    if d > 0:
        y = y.reshape((y.shape[0],) + (1,) * d + tuple(y.shape[1:]))
    elif d < 0:
        x = x.reshape((x.shape[0],) + (1,) * (-d) + tuple(x.shape[1:]))
    for a, b in zip(x.shape[1:], y.shape[1:]):
        if a != b and a != 1 and b != 1:
            raise ShapeMismatch(shapes)
    _guard_size(max(x.shape[0], y.shape[0]), [max(a, b) for a, b in zip(x.shape[1:], y.shape[1:])])
    return x, y


def _rows(x: torch.Tensor) -> torch.Tensor:
    rows = x.shape[1] if x.ndim > 1 else 1
    return x.reshape(x.shape[0], rows, -1)


def _matmul(x, y):
    a, b = _rows(x), _rows(y)
    if a.shape[2] != b.shape[2]:
        raise ShapeMismatch(
            f"matmul needs equal column counts: [{a.shape[1]}, {a.shape[2]}] @ [{b.shape[1]}, {b.shape[2]}].T"
        )
    _guard_size(max(a.shape[0], b.shape[0]), (a.shape[1], b.shape[1]))
    return torch.matmul(a, b.transpose(1, 2))


def _binary(fn):
    def op(x, y):
        x, y = _align(x, y)
        return fn(x, y)

    return op


BINARY_T = {
    "add": _binary(torch.add),
    "sub": _binary(torch.sub),
    "mul": _binary(torch.mul),
    "matmul": _matmul,
}

REDUCE = {
    "mean": lambda x: _flat(x).mean(dim=1),
    "std": _std,
    "norm": lambda x: torch.linalg.vector_norm(_flat(x), dim=1),
}

# Scalars are 1-D tensors over the bit axis ([1] or [n_bits]); broadcasting does the rest.
BINARY_S = {"sadd": torch.add, "ssub": torch.sub, "smul": torch.mul, "sdiv": torch.div}
UNARY_S = {"sneg": torch.neg, "slog": _abslog, "sabs": torch.abs}

# Ops that can turn finite input into NaN/inf; only their outputs are checked (the rest cannot, so a
# check there would only cost time). Reductions and scalar ops are checked too: their outputs are tiny.
MAY_BREAK = frozenset(
    ["exp", "pow2", "invert", "zscore", "minmax", "frobenius", "normsum", "l1", "tomean", "tostd", "add", "sub",
     "mul", "matmul"]
    + list(REDUCE) + list(BINARY_S) + list(UNARY_S)
)
