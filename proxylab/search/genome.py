"""Genomes: a structure template plus a fixed-length list of genes, compiled to a proxy-language formula.

Each template position ("slot") draws from one domain (the tensor inputs, the unary ops, a reference to an
earlier graph node, ...). A gene is an index into its slot's domain, so uniform crossover and per-gene
mutation always give a well-typed genome of the same template; validity beyond typing (shapes, NaNs,
constant scores) is left to the fitness evaluation. Operation sampling priority (OSP) is the domain weights;
switching it off makes every operation domain uniform.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import numpy as np

from proxylab.search.space import SearchSpace

NONE = "none"  # "skip this position" in scalar slots; `noop` is stripped too, both are the identity
_IDENT = re.compile(r"[A-Za-z_]\w*")


@dataclass(frozen=True)
class Domain:
    labels: Tuple[str, ...]
    probs: Tuple[float, ...]

    @classmethod
    def of(cls, weights: Dict[str, float], uniform: bool = False) -> "Domain":
        labels = tuple(weights)
        w = np.ones(len(labels)) if uniform else np.array([weights[k] for k in labels], dtype=float)
        return cls(labels, tuple((w / w.sum()).tolist()))

    def draw(self, rng: np.random.Generator) -> int:
        if len(self.labels) == 1:
            return 0
        return int(rng.choice(len(self.labels), p=self.probs))


@dataclass(frozen=True)
class Genome:
    structure: str
    genes: Tuple[int, ...]

    def to_json(self) -> List:
        return [self.structure, list(self.genes)]

    @classmethod
    def from_json(cls, data: Sequence) -> "Genome":
        return cls(str(data[0]), tuple(int(g) for g in data[1]))


def formula_size(formula: str) -> int:
    """Nodes of the formula tree (every op and every leaf)."""
    return len(_IDENT.findall(formula))


def _call(op: str, *args: str) -> str:
    if op in ("noop", NONE):
        return args[0]
    return f"{op}({', '.join(args)})"


class Template:
    """One structure: named slots with domains, and how a gene vector becomes a formula."""

    def __init__(self, name: str, slots: List[Tuple[str, Domain]]):
        self.name = name
        self.slot_names = [s for s, _ in slots]
        self.domains = [d for _, d in slots]

    def __len__(self) -> int:
        return len(self.domains)

    def labels(self, genes: Sequence[int]) -> Dict[str, str]:
        return {s: d.labels[g] for s, d, g in zip(self.slot_names, self.domains, genes)}

    def compile(self, genes: Sequence[int]) -> str:  # pragma: no cover - overridden
        raise NotImplementedError


def _head_slots(space: SearchSpace, uniform: bool) -> List[Tuple[str, Domain]]:
    if space.scalar_head <= 0:
        return []
    ops = space.group("scalar_binary")
    w = np.ones(len(ops)) if uniform else np.array(list(ops.values()))
    w = w / w.sum() * space.scalar_head
    head = {NONE: 1.0 - space.scalar_head, **{k: float(v) for k, v in zip(ops, w)}}
    head = {k: v for k, v in head.items() if v > 0}
    return [("head_op", Domain.of(head)), ("head_unary", _scalar_unary(space, uniform)),
            ("head_in", Domain.of(space.group("scalar_inputs")))]


def _scalar_unary(space: SearchSpace, uniform: bool) -> Domain:
    return Domain.of(space.group("scalar_unary") or {NONE: 1.0}, uniform)


def _finish(layer: str, lab: Dict[str, str]) -> str:
    """reduce -> optional scalar head -> aggregate over layers."""
    if lab.get("head_op", NONE) != NONE:
        layer = _call(lab["head_op"], layer, _call(lab["head_unary"], lab["head_in"]))
    return _call(lab["aggregate"], layer)


class TreeTemplate(Template):
    def __init__(self, space: SearchSpace, opts: Dict, uniform: bool):
        self.depth = opts["unary_per_branch"]
        d_in, d_un = Domain.of(space.group("inputs")), Domain.of(space.group("unary"), uniform)
        slots = [("in_a", d_in), ("in_b", d_in)]
        slots += [(f"a{i}", d_un) for i in range(self.depth)] + [(f"b{i}", d_un) for i in range(self.depth)]
        slots += [("binary", Domain.of(space.group("binary"), uniform)),
                  ("reduce", Domain.of(space.group("reduce"), uniform)),
                  ("aggregate", Domain.of(space.group("aggregate"), uniform))]
        super().__init__("tree", slots + _head_slots(space, uniform))

    def compile(self, genes: Sequence[int]) -> str:
        lab = self.labels(genes)
        a, b = lab["in_a"], lab["in_b"]
        for i in range(self.depth):
            a, b = _call(lab[f"a{i}"], a), _call(lab[f"b{i}"], b)
        return _finish(_call(lab["reduce"], _call(lab["binary"], a, b)), lab)


class LinearTemplate(Template):
    def __init__(self, space: SearchSpace, opts: Dict, uniform: bool):
        self.length = opts["unary_ops"]
        d_un = Domain.of(space.group("unary"), uniform)
        slots = [("input", Domain.of(space.group("inputs")))] + [(f"u{i}", d_un) for i in range(self.length)]
        slots += [("reduce", Domain.of(space.group("reduce"), uniform)),
                  ("aggregate", Domain.of(space.group("aggregate"), uniform))]
        super().__init__("linear", slots + _head_slots(space, uniform))

    def compile(self, genes: Sequence[int]) -> str:
        lab = self.labels(genes)
        x = lab["input"]
        for i in range(self.length):
            x = _call(lab[f"u{i}"], x)
        return _finish(_call(lab["reduce"], x), lab)


class GraphTemplate(Template):
    """A DAG: node k applies a unary or binary op to inputs / earlier nodes; the last node is the output."""

    def __init__(self, space: SearchSpace, opts: Dict, uniform: bool):
        self.n_nodes, self.n_inputs = opts["nodes"], opts["inputs"]
        node_ops = {**space.group("unary"), **space.group("binary")}
        self.binary = set(space.group("binary"))
        d_in, d_op = Domain.of(space.group("inputs")), Domain.of(node_ops, uniform)
        slots = [(f"in{i}", d_in) for i in range(self.n_inputs)]
        for k in range(self.n_nodes):
            ref = Domain.of({str(j): 1.0 for j in range(self.n_inputs + k)})
            slots += [(f"op{k}", d_op), (f"x{k}", ref), (f"y{k}", ref)]
        slots += [("reduce", Domain.of(space.group("reduce"), uniform)),
                  ("aggregate", Domain.of(space.group("aggregate"), uniform))]
        super().__init__("graph", slots + _head_slots(space, uniform))

    def compile(self, genes: Sequence[int]) -> str:
        lab = self.labels(genes)
        values = [lab[f"in{i}"] for i in range(self.n_inputs)]
        for k in range(self.n_nodes):
            op, x, y = lab[f"op{k}"], values[int(lab[f"x{k}"])], values[int(lab[f"y{k}"])]
            values.append(_call(op, x, y) if op in self.binary else _call(op, x))
        return _finish(_call(lab["reduce"], values[-1]), lab)


class ScalarTemplate(Template):
    def __init__(self, space: SearchSpace, opts: Dict, uniform: bool):
        d_in, d_un = Domain.of(space.group("scalar_inputs")), _scalar_unary(space, uniform)
        super().__init__("scalar", [("s0", d_in), ("f0", d_un), ("s1", d_in), ("f1", d_un),
                                    ("join", Domain.of(space.group("scalar_binary"), uniform)),
                                    ("aggregate", Domain.of(space.group("aggregate"), uniform))])

    def compile(self, genes: Sequence[int]) -> str:
        lab = self.labels(genes)
        layer = _call(lab["join"], _call(lab["f0"], lab["s0"]), _call(lab["f1"], lab["s1"]))
        return _call(lab["aggregate"], layer)


_TEMPLATES = {"tree": TreeTemplate, "linear": LinearTemplate, "graph": GraphTemplate, "scalar": ScalarTemplate}


class GenomeSampler:
    """Draws, recombines and mutates genomes of a space; every random choice comes from the caller's rng."""

    def __init__(self, space: SearchSpace, osp: bool = True):
        self.space = space
        uniform = not osp
        self.templates: Dict[str, Template] = {
            name: _TEMPLATES[name](space, opts, uniform) for name, opts in space.structures.items()
        }
        self.structures = Domain.of({k: v["weight"] for k, v in space.structures.items()})

    def sample(self, rng: np.random.Generator) -> Genome:
        name = self.structures.labels[self.structures.draw(rng)]
        return Genome(name, tuple(d.draw(rng) for d in self.templates[name].domains))

    def crossover(self, a: Genome, b: Genome, rng: np.random.Generator, p: float = 0.5) -> Genome:
        """Uniform crossover: each gene from b with probability p. Parents of different templates cannot
        exchange genes position by position, so the child is then a copy of the first parent."""
        if a.structure != b.structure:
            return a
        take_b = rng.random(len(a.genes)) < p
        return Genome(a.structure, tuple(gb if t else ga for ga, gb, t in zip(a.genes, b.genes, take_b)))

    def mutate(self, g: Genome, rng: np.random.Generator, p_mutate: float = 0.5, p_gene: float = 0.5) -> Genome:
        """With probability p_mutate, resample each gene with probability p_gene from its domain's weights."""
        if rng.random() >= p_mutate:
            return g
        domains = self.templates[g.structure].domains
        hit = rng.random(len(g.genes)) < p_gene
        genes = tuple(d.draw(rng) if h else v for v, d, h in zip(g.genes, domains, hit))
        return Genome(g.structure, genes)

    def formula(self, g: Genome) -> str:
        return self.templates[g.structure].compile(g.genes)

    def check(self, g: Genome) -> None:
        """A genome read back from a checkpoint must fit this space's templates."""
        t = self.templates.get(g.structure)
        if t is None or len(g.genes) != len(t) or any(not 0 <= v < len(d.labels) for v, d in zip(g.genes, t.domains)):
            raise ValueError(f"genome {g} does not fit the search space")
