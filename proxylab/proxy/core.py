"""Proxy objects: a formula (or a hand-written known proxy) that maps NetworkStats + bit configs to scores.

Every proxy is a per-layer score table S[L, n_bits] plus an aggregation over layers, so
``score_configs(p, stats, bits)`` costs one table per candidate and a gather per configuration, while
``p.score_naive(stats, bits_row)`` recomputes one configuration from scratch (EMQ's way; the oracle).
"""
from __future__ import annotations

import hashlib
from typing import FrozenSet, Optional

import numpy as np
import torch

from proxylab.errors import ProxylabError
from proxylab.proxy.errors import InvalidProxy
from proxylab.proxy.evaluate import (
    Program,
    bits_to_columns,
    compile_node,
    layer_table,
    scores_from_table,
)
from proxylab.proxy.language import DECOMPOSABLE, SIGNATURES, ProxyTree
from proxylab.proxy.naive import naive_score
from proxylab.utils import torch_threads
from proxylab.proxy.parse import Node, canonical, node_to_tree, parse_node, tree_to_node


class BaseProxy:
    """What scoring needs: ``layer_table``, ``aggregator``, ``score_naive``, a name or formula and a hash."""

    name: Optional[str] = None
    source: str = ""
    aggregator: str = "mean_layers"

    @property
    def decomposable(self) -> bool:
        """True when the score is a (mean or sum) of per-layer terms, so bit allocation can be an ILP."""
        return self.aggregator in DECOMPOSABLE

    @property
    def hash(self) -> str:
        raise NotImplementedError

    def layer_table(self, stats, dtype=torch.float64, threads: Optional[int] = 1) -> np.ndarray:
        raise NotImplementedError

    def score_naive(self, stats, bits_row) -> float:
        raise NotImplementedError

    def score(self, stats, bits_matrix) -> np.ndarray:
        return score_configs(self, stats, bits_matrix)

    @property
    def uses_hessian(self) -> bool:
        return False

    def __eq__(self, other) -> bool:
        return isinstance(other, BaseProxy) and self.hash == other.hash

    def __hash__(self) -> int:
        return hash(self.hash)


class Proxy(BaseProxy):
    """A formula in the proxy language. ``str(p)`` prints it; ``parse_proxy(str(p)) == p``."""

    def __init__(self, node: Node, name: Optional[str] = None, source: str = ""):
        self.node = node
        self.name = name
        self.source = source
        self.aggregator = node.name
        self._program: Optional[Program] = None

    @classmethod
    def from_tree(cls, tree) -> "Proxy":
        """From a DEAP tree over PSET (what DEAP's crossover / mutation produce)."""
        return cls(tree_to_node(tree))

    @property
    def tree(self) -> ProxyTree:
        return node_to_tree(self.node)

    @property
    def formula(self) -> str:
        return str(self.node)

    @property
    def canonical(self) -> str:
        return canonical(self.node)

    @property
    def hash(self) -> str:
        """sha256 of the canonical formula: equal for add(a, b) and add(b, a), or with noop inserted."""
        return hashlib.sha256(self.canonical.encode()).hexdigest()

    @property
    def inputs(self) -> FrozenSet[str]:
        names = set()

        def walk(n: Node):
            if not n.children:
                names.add(n.name)
            for c in n.children:
                walk(c)

        walk(self.node)
        return frozenset(names)

    @property
    def uses_hessian(self) -> bool:
        return bool(self.inputs & {"htrace", "heig"})

    @property
    def program(self) -> Program:
        if self._program is None:
            self._program = compile_node(self.node)
        return self._program

    def layer_table(self, stats, dtype=torch.float64, threads: Optional[int] = 1) -> np.ndarray:
        """[L, n_bits]; ``threads``: torch intra-op threads while evaluating (None keeps torch's setting)."""
        return layer_table(self.program, stats, dtype, threads)

    def score_naive(self, stats, bits_row) -> float:
        with torch_threads(1):
            return naive_score(self.node, stats, bits_row)

    def __str__(self) -> str:
        return self.formula

    def __repr__(self) -> str:
        return f"Proxy({self.formula!r})" if self.name is None else f"Proxy({self.name}: {self.formula!r})"

    def __reduce__(self):  # pickle as text: small, and independent of DEAP's internals
        return (_proxy_from_text, (self.formula, self.name, self.source))


def _proxy_from_text(text: str, name: Optional[str], source: str) -> Proxy:
    return Proxy(parse_node(text), name, source)


def parse_proxy(text) -> BaseProxy:
    """A formula (type checked, errors point at the token) or a known proxy's name -> a proxy object."""
    if isinstance(text, BaseProxy):
        return text
    if isinstance(text, str) and text.strip() and "(" not in text:
        from proxylab.proxy.known import KNOWN_PROXIES

        name = text.strip()
        if name in KNOWN_PROXIES:
            return KNOWN_PROXIES.get(name)
        import difflib

        if name not in SIGNATURES:  # a bare word is a known proxy's name (a lone primitive gets its type error below)
            close = difflib.get_close_matches(name, KNOWN_PROXIES.names(), n=2)
            hint = f"; did you mean {' or '.join(close)}?" if close else ":"
            raise ProxylabError(f"unknown proxy '{name}'{hint} known proxies are {', '.join(KNOWN_PROXIES.names())}; "
                                "or give a formula such as 'mean_layers(mean(bW))'")
    return Proxy(parse_node(text))


def score_configs(proxy, stats, bits_matrix) -> np.ndarray:
    """[N] scores for [N, L] bit configurations: one layer table, one gather, one aggregate."""
    proxy = parse_proxy(proxy)
    columns = bits_to_columns(bits_matrix, stats.bit_choices, stats.layer_names)
    return scores_from_table(proxy.layer_table(stats), columns, proxy.aggregator)


def validate(proxy, stats) -> Optional[InvalidProxy]:
    """None when the proxy gives a finite value on every layer and bit choice, else the InvalidProxy
    (layer, op, reason). Fails fast: stops at the first invalid layer."""
    try:
        parse_proxy(proxy).layer_table(stats)
    except InvalidProxy as e:
        return e
    return None
