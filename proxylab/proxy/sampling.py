"""Random proxies: EMQ's three structures (tree, linear, graph) with EMQ's op priorities, and uniformly
random typed trees over the whole language (round-trip tests, speed benchmarks, search seeds).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Union

import numpy as np

from proxylab.errors import ProxylabError
from proxylab.proxy.core import Proxy
from proxylab.proxy.language import AGGREGATES, BINARY_S, BINARY_T, REDUCE, SIGNATURES, UNARY_S, UNARY_T, P, S, T
from proxylab.proxy.parse import Node

Seed = Union[int, np.random.Generator, None]

EMQ_INPUTS = ("bA", "bG", "bW", "bV")
# EMQ's sampling priority: every unary op 0.1, no-op 0.2; binary sum 0.6, difference 0.3, product 0.05,
# matrix product 0.05 (a product of two scalars is the same as their matrix product, so both go to smul).
_UNARY_W = np.array([0.2 if n == "noop" else 0.1 for n in UNARY_T])
_SBIN = ("sadd", "ssub", "smul")
_SBIN_W = np.array([0.6, 0.3, 0.1])
_TBIN_W = np.array([0.6, 0.3, 0.05, 0.05])  # add, sub, mul, matmul


def _rng(seed: Seed) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def _unary(rng) -> str:
    return str(rng.choice(UNARY_T, p=_UNARY_W / _UNARY_W.sum()))


def _chain(x: Node, ops: Sequence[str]) -> Node:
    for op in ops:
        x = Node(op, (x,))
    return x


def emq_tree(seed: Seed = None, inputs: Sequence[str] = EMQ_INPUTS) -> Proxy:
    """EMQ's "tree": two inputs, two unary ops on each, both reduced by mean, one binary op, mean over layers."""
    rng = _rng(seed)
    branches = [Node("mean", (_chain(Node(str(rng.choice(inputs))), [_unary(rng), _unary(rng)]),)) for _ in range(2)]
    op = str(rng.choice(_SBIN, p=_SBIN_W))
    return Proxy(Node("mean_layers", (Node(op, tuple(branches)),)))


def emq_linear(seed: Seed = None, inputs: Sequence[str] = EMQ_INPUTS, depth: int = 4) -> Proxy:
    """EMQ's "linear": one input, a chain of ``depth`` unary ops, mean, mean over layers."""
    rng = _rng(seed)
    body = _chain(Node(str(rng.choice(inputs))), [_unary(rng) for _ in range(depth)])
    return Proxy(Node("mean_layers", (Node("mean", (body,)),)))


def emq_graph(seed: Seed = None, inputs: Sequence[str] = EMQ_INPUTS, nodes: int = 3) -> Proxy:
    """EMQ's "graph": a small DAG. Two input nodes; each further node applies a unary op to one earlier node
    or a binary tensor op to two; the last node is reduced. Shared nodes print once per use (the evaluator
    computes each distinct subexpression once)."""
    rng = _rng(seed)
    pool: List[Node] = [Node(str(rng.choice(inputs))), Node(str(rng.choice(inputs)))]
    for _ in range(nodes):
        if rng.random() < 0.5:
            pool.append(Node(_unary(rng), (pool[int(rng.integers(len(pool)))],)))
        else:
            a, b = rng.choice(len(pool), size=2, replace=False)
            op = str(rng.choice(BINARY_T, p=_TBIN_W))
            pool.append(Node(op, (pool[int(a)], pool[int(b)])))
    return Proxy(Node("mean_layers", (Node("mean", (pool[-1],)),)))


STRUCTURES = {"tree": emq_tree, "linear": emq_linear, "graph": emq_graph}


def random_emq(seed: Seed = None, structure: str = "tree") -> Proxy:
    if structure not in STRUCTURES:
        raise ProxylabError(f"unknown EMQ structure '{structure}': choose one of {', '.join(STRUCTURES)}")
    return STRUCTURES[structure](seed)


def random_formula(seed: Seed = None, max_depth: int = 6, aggregator: Optional[str] = None) -> Proxy:
    """A uniformly random well-typed formula over the whole language (every primitive reachable)."""
    rng = _rng(seed)
    t_inputs = [n for n, s in SIGNATURES.items() if s.kind == "input" and s.ret is T]
    s_inputs = [n for n, s in SIGNATURES.items() if s.kind == "input" and s.ret is S]

    def grow(kind: type, depth: int) -> Node:
        leaf = depth >= max_depth or (depth > 1 and rng.random() < 0.3)
        if kind is T:
            if leaf:
                return Node(str(rng.choice(t_inputs)))
            if rng.random() < 0.8:
                return Node(str(rng.choice(UNARY_T)), (grow(T, depth + 1),))
            return Node(str(rng.choice(BINARY_T)), (grow(T, depth + 1), grow(T, depth + 1)))
        if leaf and rng.random() < 0.5:
            return Node(str(rng.choice(s_inputs)))
        r = rng.random()
        if leaf or r < 0.5:
            return Node(str(rng.choice(REDUCE)), (grow(T, depth + 1),))
        if r < 0.8:
            return Node(str(rng.choice(BINARY_S)), (grow(S, depth + 1), grow(S, depth + 1)))
        return Node(str(rng.choice(UNARY_S)), (grow(S, depth + 1),))

    agg = aggregator or str(rng.choice(AGGREGATES))
    if SIGNATURES.get(agg) is None or SIGNATURES[agg].ret is not P:
        raise ProxylabError(f"'{agg}' is not an aggregate: choose one of {', '.join(AGGREGATES)}")
    return Proxy(Node(agg, (grow(S, 1),)))
