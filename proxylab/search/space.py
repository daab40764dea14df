"""Search spaces: YAML presets naming the inputs, operations (with sampling weights) and structure templates.

A space file is validated strictly: an unknown key or an operation the proxy language lacks is a
ProxylabError naming the key and the file, because a typo there would silently change what a search explores.
The names are fixed by CONTRACTS.md ("Proxy language names"), so a space file and the language always agree.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Tuple, Union

from proxylab.errors import ProxylabError

PACKAGE_SPACES = Path(__file__).resolve().parent.parent / "search_spaces"

TENSOR_INPUTS = ("bA", "bG", "bW", "bV", "W", "A", "G", "V", "F", "Q")
SCALAR_INPUTS = ("bits", "params", "macs", "htrace", "heig")
UNARY_OPS = ("log", "abslog", "abs", "pow2", "exp", "zscore", "relu", "invert", "frobenius", "normsum", "l1",
             "softmax", "sigmoid", "logsoftmax", "sqrt", "neg", "minmax", "tomean", "tostd", "noop")
BINARY_OPS = ("add", "sub", "mul", "matmul")
REDUCE_OPS = ("mean", "std", "norm")
SCALAR_UNARY_OPS = ("none", "sneg", "slog", "sabs")  # "none": identity, a search-space choice, not a primitive
SCALAR_BINARY_OPS = ("sadd", "ssub", "smul", "sdiv")
AGGREGATORS = ("mean_layers", "sum_layers", "min_layers", "max_layers")

_GROUPS: Dict[str, Tuple[str, ...]] = {
    "inputs": TENSOR_INPUTS,
    "scalar_inputs": SCALAR_INPUTS,
    "unary": UNARY_OPS,
    "binary": BINARY_OPS,
    "reduce": REDUCE_OPS,
    "scalar_unary": SCALAR_UNARY_OPS,
    "scalar_binary": SCALAR_BINARY_OPS,
    "aggregate": AGGREGATORS,
}
OP_GROUPS = ("unary", "binary", "reduce", "scalar_unary", "scalar_binary", "aggregate")
_STRUCTURE_KEYS: Dict[str, Dict[str, Tuple[type, int, int]]] = {
    # option -> (type, min, max); weight is checked separately
    "tree": {"unary_per_branch": (int, 0, 6)},
    "linear": {"unary_ops": (int, 0, 12)},
    "graph": {"nodes": (int, 1, 8), "inputs": (int, 1, 4)},
    "scalar": {},
}
_STRUCTURE_DEFAULTS = {"tree": {"unary_per_branch": 2}, "linear": {"unary_ops": 4},
                       "graph": {"nodes": 4, "inputs": 2}, "scalar": {}}
_TOP_KEYS = ("name", "description", "structures", "max_size", "scalar_head", *_GROUPS)


@dataclass(frozen=True)
class SearchSpace:
    """A validated space. Weight tables keep only entries with a positive weight, in file order."""

    name: str
    description: str
    weights: Dict[str, Dict[str, float]]            # group -> {name: weight}
    structures: Dict[str, Dict[str, Any]]            # template -> options incl. weight
    max_size: int
    scalar_head: float
    source: str = field(default="", compare=False)   # where it was read from (for messages)

    def to_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"name": self.name, "description": self.description}
        out.update({g: dict(w) for g, w in self.weights.items()})
        out["scalar_head"] = self.scalar_head
        out["structures"] = {k: dict(v) for k, v in self.structures.items()}
        out["max_size"] = self.max_size
        return out

    @property
    def fingerprint(self) -> str:
        """Content hash: two files that define the same space share it (used to refuse a mismatched resume)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def group(self, name: str) -> Dict[str, float]:
        return self.weights.get(name, {})


def _fail(source: str, message: str) -> None:
    raise ProxylabError(f"search space {source}: {message}")


def _weight(source: str, where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 or value == float("inf"):
        _fail(source, f"{where} must be a non-negative number (a sampling weight), got {value!r}")
    return float(value)


def _weight_table(source: str, group: str, raw: Any) -> Dict[str, float]:
    if raw is None:
        return {}
    if isinstance(raw, list):  # a plain list means equal weights
        raw = {k: 1.0 for k in raw}
    if not isinstance(raw, Mapping):
        _fail(source, f"'{group}' must map names to sampling weights, got {type(raw).__name__}")
    allowed = _GROUPS[group]
    out: Dict[str, float] = {}
    for key, value in raw.items():
        if key not in allowed:
            _fail(source, f"unknown name '{key}' in '{group}'; allowed: {', '.join(allowed)}")
        w = _weight(source, f"'{group}.{key}'", value)
        if w > 0:
            out[str(key)] = w
    return out


def _structures(source: str, raw: Any) -> Dict[str, Dict[str, Any]]:
    if not isinstance(raw, Mapping) or not raw:
        _fail(source, f"'structures' must map template names ({', '.join(_STRUCTURE_KEYS)}) to options")
    out: Dict[str, Dict[str, Any]] = {}
    for name, opts in raw.items():
        if name not in _STRUCTURE_KEYS:
            _fail(source, f"unknown structure '{name}'; known: {', '.join(_STRUCTURE_KEYS)}")
        opts = {} if opts is None else opts
        if not isinstance(opts, Mapping):
            _fail(source, f"structure '{name}' must map options to values, got {opts!r}")
        spec = _STRUCTURE_KEYS[name]
        resolved: Dict[str, Any] = {"weight": _weight(source, f"'structures.{name}.weight'", opts.get("weight", 1.0))}
        resolved.update(_STRUCTURE_DEFAULTS[name])
        for key, value in opts.items():
            if key == "weight":
                continue
            if key not in spec:
                allowed = ", ".join(["weight", *spec])
                _fail(source, f"unknown option '{key}' for structure '{name}'; allowed: {allowed}")
            typ, lo, hi = spec[key]
            if isinstance(value, bool) or not isinstance(value, typ) or not lo <= value <= hi:
                _fail(source, f"'structures.{name}.{key}' must be an integer in {lo}..{hi}, got {value!r}")
            resolved[key] = value
        if resolved["weight"] > 0:
            out[str(name)] = resolved
    if not out:
        _fail(source, "every structure has weight 0: the space allows no valid tree")
    return out


def _check_usable(space: SearchSpace) -> None:
    """Static reasons a space allows no valid tree: a drawn structure would need a group that is empty."""
    src = space.source
    for name, opts in space.structures.items():
        needs = ["aggregate"]
        if name == "scalar":
            needs += ["scalar_inputs", "scalar_binary"]
        else:
            needs += ["inputs", "reduce"]
            if name == "tree":
                needs += ["binary"] + (["unary"] if opts["unary_per_branch"] else [])
            if name == "linear" and opts["unary_ops"]:
                needs.append("unary")
            if name == "graph" and not (space.group("unary") or space.group("binary")):
                needs.append("unary")
        empty = [g for g in needs if not space.group(g)]
        if empty:
            _fail(src, f"structure '{name}' needs operations from {', '.join(empty)} but the space lists none "
                       f"with a positive weight: the space allows no valid tree. Add entries or set "
                       f"'structures.{name}.weight: 0'")
    if space.scalar_head > 0 and not (space.group("scalar_inputs") and space.group("scalar_binary")):
        _fail(src, "scalar_head > 0 needs non-empty 'scalar_inputs' and 'scalar_binary'")


def space_from_dict(raw: Any, source: str = "<dict>") -> SearchSpace:
    if not isinstance(raw, Mapping):
        _fail(source, f"the file must hold a mapping of keys ({', '.join(_TOP_KEYS)}), got {type(raw).__name__}")
    unknown = [k for k in raw if k not in _TOP_KEYS]
    if unknown:
        _fail(source, f"unknown key(s) {', '.join(map(str, unknown))}; allowed keys: {', '.join(_TOP_KEYS)}")
    weights = {g: _weight_table(source, g, raw.get(g)) for g in _GROUPS}
    max_size = raw.get("max_size", 24)
    if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 3:
        _fail(source, f"'max_size' must be an integer >= 3 (nodes of the formula tree), got {max_size!r}")
    head = raw.get("scalar_head", 0.0)
    if isinstance(head, bool) or not isinstance(head, (int, float)) or not 0.0 <= head <= 1.0:
        _fail(source, f"'scalar_head' is a probability in [0, 1], got {head!r}")
    space = SearchSpace(
        name=str(raw.get("name", Path(source).stem)),
        description=str(raw.get("description", "")),
        weights=weights,
        structures=_structures(source, raw.get("structures")),
        max_size=int(max_size),
        scalar_head=float(head),
        source=source,
    )
    _check_usable(space)
    return space


def list_spaces() -> list:
    """Names of the presets shipped inside the package (usable as --space NAME)."""
    return sorted(p.stem for p in PACKAGE_SPACES.glob("*.yaml"))


def resolve_space_path(name_or_path: Union[str, Path]) -> Path:
    path = Path(name_or_path)
    if path.is_file():
        return path
    stem = path.stem if path.suffix in (".yaml", ".yml") else path.name
    preset = PACKAGE_SPACES / f"{stem}.yaml"
    # A repo-relative path such as search_spaces/emq.yaml also works from any folder: the preset ships inside.
    if preset.is_file() and (path.parent == Path(".") or path.parent.name == "search_spaces"):
        return preset
    raise ProxylabError(f"search space '{name_or_path}' is neither a file nor a preset; presets: "
                        f"{', '.join(list_spaces())} (or give a path to a YAML file)")


def load_space(name_or_path: Union[str, Path, Mapping, SearchSpace] = "emq") -> SearchSpace:
    """A preset name ('emq', 'extended'), a YAML path, a dict, or an already loaded SearchSpace."""
    if isinstance(name_or_path, SearchSpace):
        return name_or_path
    if isinstance(name_or_path, Mapping):
        return space_from_dict(name_or_path)
    import yaml

    path = resolve_space_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ProxylabError(f"search space {path} is not valid YAML: {e}") from None
    return space_from_dict(raw, str(path))
