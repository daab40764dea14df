"""Formula text <-> DEAP tree, with type checking, readable errors and a canonical form for hashing.

Grammar:  expr := NAME | NAME '(' expr (',' expr)* ')'.  Whitespace is free. The printed form is DEAP's
(``op(a, b)``), so ``str(tree)`` parses back to the same tree. Errors name the token, its position (a caret
under the formula) and the type that was expected there.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import List, Optional, Tuple

from proxylab.errors import ProxylabError
from proxylab.proxy.language import (
    COMMUTATIVE,
    P,
    PSET,
    S,
    SIGNATURES,
    T,
    TYPE_NAMES,
    ProxyTree,
)

_TOKEN = re.compile(r"\s*(?:([A-Za-z_][A-Za-z0-9_]*)|(\()|(\))|(,)|(\S))")
_TYPE_WORDS = {T: "T (per-layer tensor)", S: "S (per-layer scalar)", P: "P (network score)"}
_SCALAR_TWIN = {"add": "sadd", "sub": "ssub", "mul": "smul", "neg": "sneg", "abs": "sabs", "abslog": "slog",
                "log": "slog", "sadd": "add", "ssub": "sub", "smul": "mul", "sneg": "neg", "sabs": "abs"}


@dataclass(frozen=True)
class Node:
    """A parsed formula node: the primitive name, its children, and where it started in the text."""

    name: str
    children: Tuple["Node", ...] = ()
    pos: int = 0

    @property
    def ret(self):
        return SIGNATURES[self.name].ret

    def __str__(self) -> str:
        if not self.children:
            return self.name
        return f"{self.name}({', '.join(str(c) for c in self.children)})"


def _tokens(text: str) -> List[Tuple[str, str, int]]:
    out = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:  # only trailing whitespace left
            break
        name, lp, rp, comma, other = m.groups()
        start = m.start(m.lastindex)
        if name:
            out.append(("name", name, start))
        elif lp:
            out.append(("(", lp, start))
        elif rp:
            out.append((")", rp, start))
        elif comma:
            out.append((",", comma, start))
        else:
            out.append(("bad", other, start))
        pos = m.end()
    out.append(("end", "", len(text.rstrip()) if text.strip() else 0))
    return out


def _error(text: str, pos: int, message: str) -> ProxylabError:
    caret = " " * pos + "^"
    return ProxylabError(f"{message} (formula position {pos}):\n  {text}\n  {caret}")


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.toks = _tokens(text)
        self.i = 0

    def peek(self):
        return self.toks[self.i]

    def take(self, kind: str, what: str):
        tok = self.peek()
        if tok[0] != kind:
            shown = f"'{tok[1]}'" if tok[1] else "the end of the formula"
            raise _error(self.text, tok[2], f"expected {what} but found {shown}")
        self.i += 1
        return tok

    def expr(self, expected: type, context: str) -> Node:
        tok = self.peek()
        if tok[0] != "name":
            shown = f"'{tok[1]}'" if tok[1] else "the end of the formula"
            raise _error(self.text, tok[2], f"expected {context}, a {_TYPE_WORDS[expected]}, but found {shown}")
        _, name, pos = tok
        sig = SIGNATURES.get(name)
        if sig is None:
            close = difflib.get_close_matches(name, list(SIGNATURES), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise _error(self.text, pos, f"unknown primitive '{name}'{hint} (`proxylab proxy list --primitives` lists them)")
        if sig.ret is not expected:
            twin = _SCALAR_TWIN.get(name)
            hint = ""
            if twin and SIGNATURES[twin].ret is expected:
                hint = f"; use '{twin}' for {_TYPE_WORDS[expected].split(' ', 1)[1].strip('()')}s"
            raise _error(
                self.text, pos,
                f"'{name}' gives {_TYPE_WORDS[sig.ret]} but {context} needs {_TYPE_WORDS[expected]}{hint}",
            )
        self.i += 1
        if not sig.args:
            if self.peek()[0] == "(":
                raise _error(self.text, self.peek()[2], f"'{name}' is an input and takes no arguments")
            return Node(name, (), pos)
        self.take("(", f"'(' after '{name}' (it takes {len(sig.args)} argument{'s' * (len(sig.args) > 1)})")
        children = []
        for k, arg_type in enumerate(sig.args):
            if k:
                tok = self.peek()
                if tok[0] == ")":
                    raise _error(self.text, tok[2], f"'{name}' takes {len(sig.args)} arguments, got {k}")
                self.take(",", f"',' between the arguments of '{name}'")
            children.append(self.expr(arg_type, f"argument {k + 1} of '{name}'"))
        tok = self.peek()
        if tok[0] == ",":
            raise _error(self.text, tok[2], f"'{name}' takes {len(sig.args)} argument{'s' * (len(sig.args) > 1)}, got more")
        self.take(")", f"')' closing '{name}'")
        return Node(name, tuple(children), pos)


def parse_node(text: str) -> Node:
    """Formula text -> Node tree (type checked; the root must be an aggregate over layers)."""
    if not isinstance(text, str) or not text.strip():
        raise ProxylabError("empty proxy formula: give e.g. 'mean_layers(mean(abs(bW)))' or a known proxy name")
    p = _Parser(text)
    tok = p.peek()
    if tok[0] == "name" and tok[1] in SIGNATURES and SIGNATURES[tok[1]].ret is not P:
        raise _error(
            text, tok[2],
            f"a proxy must be one aggregate over layers ({', '.join(n for n, s in SIGNATURES.items() if s.ret is P)}), "
            f"e.g. mean_layers({text.strip()}) if that is a scalar; '{tok[1]}' gives {_TYPE_WORDS[SIGNATURES[tok[1]].ret]}",
        )
    node = p.expr(P, "the whole formula")
    tok = p.peek()
    if tok[0] != "end":
        raise _error(text, tok[2], f"unexpected '{tok[1]}' after the end of the formula")
    return node


def node_to_tree(node: Node) -> ProxyTree:
    prefix = []

    def walk(n: Node):
        prefix.append(PSET.mapping[n.name])
        for c in n.children:
            walk(c)

    walk(node)
    return ProxyTree(prefix)


def tree_to_node(tree) -> Node:
    """DEAP prefix list (a ProxyTree or any PrimitiveTree over PSET) -> Node, checking types on the way."""
    items = list(tree)
    if not items:
        raise ProxylabError("empty proxy tree")
    index = 0

    def build(expected: Optional[type]) -> Node:
        nonlocal index
        if index >= len(items):
            raise ProxylabError("proxy tree ends early: a primitive is missing arguments")
        prim = items[index]
        index += 1
        sig = SIGNATURES.get(prim.name)
        if sig is None:
            raise ProxylabError(f"proxy tree holds '{prim.name}', which is not in the proxy language")
        if expected is not None and sig.ret is not expected:
            raise ProxylabError(f"proxy tree: '{prim.name}' gives {TYPE_NAMES[sig.ret]} where {TYPE_NAMES[expected]} is needed")
        return Node(sig.name, tuple(build(a) for a in sig.args), 0)

    root = build(P)
    if index != len(items):
        raise ProxylabError("proxy tree has extra nodes after a complete formula")
    return root


def canonical(node: Node) -> str:
    """Normal form for hashing: noop removed, arguments of commutative ops sorted (add(a,b) == add(b,a))."""
    if node.name == "noop":
        return canonical(node.children[0])
    if not node.children:
        return node.name
    args = [canonical(c) for c in node.children]
    if node.name in COMMUTATIVE:
        args.sort()
    return f"{node.name}({','.join(args)})"
