"""Vectorised scoring: the per-layer score table S[L, n_bits] in one pass per layer, then a gather.

A formula is compiled once into a straight-line program (identical subexpressions computed once, which is
how EMQ's "graph" structure shares nodes). Each layer runs the program once for all bit choices together:
bit-dependent inputs (bW, bA, bG, bV, Q, bits) carry a leading axis of n_bits, everything else a leading
axis of 1, and the batched ops keep that axis. Scoring N configurations is then a gather of table[l, j(l)]
and the aggregate over layers: the candidate's cost no longer depends on N.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from proxylab.errors import ProxylabError
from proxylab.proxy import ops
from proxylab.proxy.errors import InvalidProxy
from proxylab.proxy.inputs import PreparedStats, prepare
from proxylab.proxy.language import SCALAR_INPUTS, SIGNATURES, TENSOR_INPUTS
from proxylab.proxy.parse import Node
from proxylab.utils import torch_threads

_OPS = {**ops.UNARY_T, **ops.BINARY_T, **ops.REDUCE, **ops.BINARY_S, **ops.UNARY_S}


@dataclass(frozen=True)
class Step:
    name: str
    args: Tuple[int, ...]
    check: bool  # output may be NaN/inf although the inputs are finite


@dataclass(frozen=True)
class Program:
    steps: Tuple[Step, ...]
    drops: Tuple[Tuple[int, ...], ...]  # values no longer needed after each step (keeps peak memory low)
    aggregator: str


def compile_node(root: Node) -> Program:
    if SIGNATURES[root.name].kind != "aggregate":
        raise ProxylabError(f"a proxy's root must aggregate over layers, got '{root.name}'")
    steps: List[Step] = []
    seen: Dict[str, int] = {}

    def emit(n: Node) -> int:
        key = str(n)
        if key in seen:
            return seen[key]
        args = tuple(emit(c) for c in n.children)
        steps.append(Step(n.name, args, n.name in ops.MAY_BREAK))
        seen[key] = len(steps) - 1
        return seen[key]

    emit(root.children[0])
    last = list(range(len(steps)))
    for i, s in enumerate(steps):
        for a in s.args:
            last[a] = max(last[a], i)
    drops: List[List[int]] = [[] for _ in steps]
    for v, i in enumerate(last[:-1]):  # the final value is the result
        drops[i].append(v)
    return Program(tuple(steps), tuple(tuple(d) for d in drops), root.name)


def _run_layer(program: Program, prep: PreparedStats, layer: int) -> torch.Tensor:
    vals: List = [None] * len(program.steps)
    for i, step in enumerate(program.steps):
        if step.name in TENSOR_INPUTS:
            out = prep.tensor(layer, step.name)
        elif step.name in SCALAR_INPUTS:
            out = prep.scalar(layer, step.name)
        else:
            args = [vals[a] for a in step.args]
            try:
                out = _OPS[step.name](*args)
            except ops.ShapeMismatch as e:
                raise InvalidProxy(prep.layer_names[layer], step.name, str(e)) from None
            if step.check and not bool(torch.isfinite(out).all()):
                raise InvalidProxy(prep.layer_names[layer], step.name, "NaN/inf")
        vals[i] = out
        for v in program.drops[i]:
            vals[v] = None
    return vals[-1]


def layer_table(program: Program, stats, dtype=torch.float64, threads: Optional[int] = 1) -> np.ndarray:
    """[L, n_bits] float64: the per-layer scalar of each layer at each bit choice. Raises InvalidProxy at the
    first layer (in forward order) whose value is NaN/inf, naming the op that produced it."""
    prep = prepare(stats, dtype)
    nb = len(prep.bit_choices)
    table = np.empty((prep.n_layers, nb), dtype=np.float64)
    with torch.no_grad(), warnings.catch_warnings(), torch_threads(threads):
        warnings.simplefilter("ignore")  # torch warns on std of one entry; that case is reported as invalid
        for layer in range(prep.n_layers):
            out = _run_layer(program, prep, layer)
            if out.ndim != 1 or out.shape[0] not in (1, nb):  # a scalar program must end in [1] or [n_bits]
                raise RuntimeError(f"internal: layer value of shape {list(out.shape)}")
            row = out.expand(nb).to(torch.float64).numpy()
            if not np.isfinite(row).all():
                raise InvalidProxy(prep.layer_names[layer], program.steps[-1].name, "NaN/inf")
            table[layer] = row
    return table


def bits_to_columns(bits_matrix, bit_choices: Sequence[int], layer_names: Sequence[str]) -> np.ndarray:
    """[N, L] bit-widths -> [N, L] column indices into a layer table; clear errors for bad configs."""
    bits = np.asarray(bits_matrix)
    if bits.ndim == 1:
        bits = bits[None, :]
    L = len(layer_names)
    if bits.ndim != 2 or bits.shape[1] != L:
        raise ProxylabError(
            f"bit configurations must have shape [N, {L}] (one bit-width per layer), got {list(bits.shape)}"
        )
    if bits.size and not np.issubdtype(bits.dtype, np.integer):
        if not np.all(np.equal(np.mod(bits, 1), 0)):
            raise ProxylabError("bit-widths must be integers")
        bits = bits.astype(np.int64)
    choices = [int(b) for b in bit_choices]
    lut = np.full(max(choices) + 2, -1, dtype=np.int64)
    lut[choices] = np.arange(len(choices))
    clipped = np.clip(bits, 0, len(lut) - 1)
    cols = lut[clipped]
    bad = (cols < 0) | (bits != clipped)
    if bad.any():
        n, l = map(int, np.argwhere(bad)[0])
        raise ProxylabError(
            f"bit-width {int(bits[n, l])} (config {n}, layer '{layer_names[l]}') is not one of the stats' bit "
            f"choices {tuple(choices)}: compute the stats with those bit choices"
        )
    return cols


_AGGREGATE = {"mean_layers": np.mean, "sum_layers": np.sum, "min_layers": np.min, "max_layers": np.max}


def scores_from_table(table: np.ndarray, columns: np.ndarray, aggregator: str) -> np.ndarray:
    """Gather table[l, columns[n, l]] and aggregate over layers -> [N] scores."""
    gathered = table[np.arange(table.shape[0])[None, :], columns]
    out = _AGGREGATE[aggregator](gathered, axis=1)
    if out.size and not np.isfinite(out).all():
        raise InvalidProxy("(all layers)", aggregator, "the aggregate overflowed")
    return out

