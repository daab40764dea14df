"""The proxy language: types, primitive names and signatures, and DEAP's typed primitive set over them.

Three types: ``T`` a per-layer tensor, ``S`` a per-layer scalar, ``P`` the network score. A formula is one
aggregate (S->P) over a per-layer expression, so every proxy is a per-layer score table plus an aggregation
(CONTRACTS.md, "Proxy language names"). The names below are fixed by that contract: the search spaces and
the parser read them from here.

DEAP classes are defined at module level (never ``creator.create``) so trees pickle and cross processes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

from deap import base, gp


class T:
    """Per-layer tensor (evaluated for one layer at one bit choice)."""


class S:
    """Per-layer scalar."""


class P:
    """Network score (the aggregate over layers)."""


TYPE_NAMES = {T: "T", S: "S", P: "P"}

# Tensor inputs: name -> (stats key, scaled by the layer's bit-width).  Q is bit-dependent by itself.
TENSOR_INPUTS: Dict[str, Tuple[str, bool]] = {
    "bW": ("weight", True),
    "bA": ("act", True),
    "bG": ("grad", True),
    "bV": ("virtual_grad", True),
    "W": ("weight", False),
    "A": ("act", False),
    "G": ("grad", False),
    "V": ("virtual_grad", False),
    "F": ("fisher", False),
    "Q": ("qerr", False),
}
# Scalar inputs: name -> where the value comes from (see proxylab.proxy.inputs).
SCALAR_INPUTS: Dict[str, str] = {
    "bits": "the layer's bit-width b",
    "params": "parameters of the layer: its weights plus its bias and folded BatchNorm (what its size counts)",
    "macs": "multiply-accumulates of the layer per image",
    "htrace": "Hutchinson trace of the layer's Hessian block",
    "heig": "top eigenvalue of the layer's Hessian block",
}
BIT_DEPENDENT_INPUTS = frozenset(["bW", "bA", "bG", "bV", "Q", "bits"])

UNARY_T = (
    "log", "abslog", "abs", "pow2", "exp", "zscore", "relu", "invert", "frobenius", "normsum", "l1",
    "softmax", "sigmoid", "logsoftmax", "sqrt", "neg", "minmax", "tomean", "tostd", "noop",
)
BINARY_T = ("add", "sub", "mul", "matmul")
REDUCE = ("mean", "std", "norm")
BINARY_S = ("sadd", "ssub", "smul", "sdiv")
UNARY_S = ("sneg", "slog", "sabs")
AGGREGATES = ("mean_layers", "sum_layers", "min_layers", "max_layers")
DECOMPOSABLE = frozenset(["mean_layers", "sum_layers"])
COMMUTATIVE = frozenset(["add", "mul", "sadd", "smul"])

DOC: Dict[str, str] = {
    "log": "log(x), entries <= 0 give 0 (EMQ: they are set to 1 first)",
    "abslog": "log|x|, zero entries give 0 (EMQ)",
    "abs": "|x|",
    "pow2": "x^2",
    "exp": "e^x",
    "zscore": "(x - mean) / (std + 1e-9), unbiased std over the whole tensor",
    "relu": "max(x, 0)",
    "invert": "1/x (a zero entry makes the proxy invalid)",
    "frobenius": "sqrt(sum x^2) (0-d)",
    "normsum": "sum(x) / numel (0-d)",
    "l1": "sum|x| / numel (0-d)",
    "softmax": "softmax along the first axis (EMQ)",
    "sigmoid": "1 / (1 + e^-x)",
    "logsoftmax": "log-softmax along the first axis (EMQ)",
    "sqrt": "sqrt(x), entries <= 0 give 0 (EMQ)",
    "neg": "-x",
    "minmax": "(x - min) / (max - min + 1e-9)",
    "tomean": "mean (0-d)",
    "tostd": "unbiased std (0-d; a 1-element tensor makes the proxy invalid)",
    "noop": "x",
    "add": "x + y (broadcast; incompatible shapes make the proxy invalid)",
    "sub": "x - y (broadcast)",
    "mul": "x * y (broadcast)",
    "matmul": "x.reshape(rows, -1) @ y.reshape(rows', -1).T (column counts must agree)",
    "mean": "mean of all entries",
    "std": "unbiased std of all entries",
    "norm": "L2 (Frobenius) norm of all entries",
    "sadd": "a + b",
    "ssub": "a - b",
    "smul": "a * b",
    "sdiv": "a / b (b = 0 makes the proxy invalid)",
    "sneg": "-a",
    "slog": "log|a|, a = 0 gives 0 (like abslog)",
    "sabs": "|a|",
    "mean_layers": "mean over layers (decomposable)",
    "sum_layers": "sum over layers (decomposable)",
    "min_layers": "min over layers",
    "max_layers": "max over layers",
}


@dataclass(frozen=True)
class Signature:
    name: str
    args: Tuple[type, ...]
    ret: type
    kind: str  # "input", "unary_t", "binary_t", "reduce", "binary_s", "unary_s", "aggregate"


def _signatures() -> Dict[str, Signature]:
    sig: Dict[str, Signature] = {}
    for n in TENSOR_INPUTS:
        sig[n] = Signature(n, (), T, "input")
    for n in SCALAR_INPUTS:
        sig[n] = Signature(n, (), S, "input")
    for n in UNARY_T:
        sig[n] = Signature(n, (T,), T, "unary_t")
    for n in BINARY_T:
        sig[n] = Signature(n, (T, T), T, "binary_t")
    for n in REDUCE:
        sig[n] = Signature(n, (T,), S, "reduce")
    for n in BINARY_S:
        sig[n] = Signature(n, (S, S), S, "binary_s")
    for n in UNARY_S:
        sig[n] = Signature(n, (S,), S, "unary_s")
    for n in AGGREGATES:
        sig[n] = Signature(n, (S,), P, "aggregate")
    return sig


SIGNATURES: Dict[str, Signature] = _signatures()


def _primitive_placeholder(name: str):
    # DEAP wants a callable per primitive for its own `compile`; proxylab never uses that path (it evaluates
    # batched over bit choices), so the placeholder says where evaluation really lives.
    def primitive(*_args):
        raise RuntimeError(f"'{name}' is evaluated by proxylab.proxy.evaluate, not deap.gp.compile")

    primitive.__name__ = name
    return primitive


def build_pset() -> gp.PrimitiveSetTyped:
    pset = gp.PrimitiveSetTyped("proxy", [], P)
    for s in SIGNATURES.values():
        if s.kind == "input":
            pset.addTerminal(s.name, s.ret, name=s.name)
        else:
            pset.addPrimitive(_primitive_placeholder(s.name), list(s.args), s.ret, name=s.name)
    return pset


PSET = build_pset()


class ProxyFitness(base.Fitness):
    """Single objective, maximised (rank correlation)."""

    weights = (1.0,)


class ProxyTree(gp.PrimitiveTree):
    """A DEAP typed tree over PSET, with a fitness slot for DEAP's evolutionary operators."""

    def __init__(self, content):
        super().__init__(content)
        self.fitness = ProxyFitness()


def describe_primitives():
    """Rows for ``proxylab proxy list --primitives``: name, signature, group, meaning."""
    groups = {
        "input": "input", "unary_t": "unary T->T", "binary_t": "binary T,T->T", "reduce": "reduce T->S",
        "binary_s": "binary S,S->S", "unary_s": "unary S->S", "aggregate": "aggregate S->P",
    }
    rows = []
    for s in SIGNATURES.values():
        args = ", ".join(TYPE_NAMES[a] for a in s.args)
        sig = f"{s.name}({args}) -> {TYPE_NAMES[s.ret]}" if s.args else f"{s.name} : {TYPE_NAMES[s.ret]}"
        if s.kind == "input":
            meaning = SCALAR_INPUTS.get(s.name) or _input_doc(s.name)
        else:
            meaning = DOC[s.name]
        rows.append({"name": s.name, "signature": sig, "group": groups[s.kind], "meaning": meaning})
    return rows


def _input_doc(name: str) -> str:
    key, scaled = TENSOR_INPUTS[name]
    if key == "qerr":
        return "W - Q_b(W): the layer's weight quantization error at bit-width b"
    return f"b * {key}" if scaled else key
