"""The on-disk MQ-Bench table format: ``table.csv`` + ``meta.json`` (+ ``weights.pt`` beside them).

``table.csv`` is plain text a person can read and diff: one row per bit configuration,
``cfg_id,bits,size_mb,bitops,acc,acc_half_a,acc_half_b`` where ``bits`` is space-separated integers in the
layer order of ``meta.json``'s ``layer_names``. The two half accuracies are measured on two disjoint halves of
the test split; their rank agreement is the table's noise ceiling. Imported tables that never measured halves
leave both fields empty (``meta["has_halves"]`` is false).

Every parse error names the file and the line, because a table is data a user may have edited by hand.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from proxylab.errors import ProxylabError
from proxylab.utils import sha256_file

SCHEMA_VERSION = 1
COLUMNS = ("cfg_id", "bits", "size_mb", "bitops", "acc", "acc_half_a", "acc_half_b")
HEADER = ",".join(COLUMNS)
TABLE_FILE = "table.csv"
META_FILE = "meta.json"
WEIGHTS_FILE = "weights.pt"

# Keys every meta.json must carry; the rest (network, dataset, protocol, build ...) are optional so that an
# imported table without weights is still a valid table.
REQUIRED_META = ("schema_version", "name", "layer_names", "params", "macs", "bit_choices", "act_bits", "splits")


def format_float(x: float) -> str:
    """Shortest text that round-trips exactly, so a rewritten table has the same bytes and the same sha256."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    return repr(float(x))


def format_row(cfg_id: int, bits: Sequence[int], size_mb: float, bitops: float, acc: float,
               acc_half_a: Optional[float], acc_half_b: Optional[float]) -> str:
    bits_text = " ".join(str(int(b)) for b in bits)
    fields = [str(int(cfg_id)), bits_text, format_float(size_mb), format_float(float(bitops)), format_float(acc),
              format_float(acc_half_a), format_float(acc_half_b)]
    return ",".join(fields) + "\n"


def parse_row(line: str, where: str, n_layers: Optional[int], halves: bool) -> Tuple[int, Tuple[int, ...], float, float, float, float, float]:
    """One csv line -> (cfg_id, bits, size_mb, bitops, acc, half_a, half_b); ProxylabError naming ``where``."""
    parts = line.rstrip("\r\n").split(",")
    if len(parts) != len(COLUMNS):
        raise ProxylabError(f"{where}: expected {len(COLUMNS)} comma-separated fields ({HEADER}), got {len(parts)}")
    try:
        cfg_id = int(parts[0])
    except ValueError:
        raise ProxylabError(f"{where}: cfg_id '{parts[0]}' is not an integer") from None
    try:
        bits = tuple(int(t) for t in parts[1].split())
    except ValueError:
        raise ProxylabError(f"{where}: bits '{parts[1]}' must be space-separated integers such as '4 3 2'") from None
    if n_layers is not None and len(bits) != n_layers:
        raise ProxylabError(f"{where}: {len(bits)} bit values but meta.json lists {n_layers} layers; "
                            "each row needs one bit-width per layer, in layer order")
    if any(b < 1 or b > 16 for b in bits):
        raise ProxylabError(f"{where}: bit-widths must lie in 1..16, got '{parts[1]}'")

    def number(i: int, allow_empty: bool = False) -> float:
        text = parts[i].strip()
        if text == "" and allow_empty:
            return float("nan")
        try:
            value = float(text)
        except ValueError:
            raise ProxylabError(f"{where}: {COLUMNS[i]} '{parts[i]}' is not a number") from None
        if not math.isfinite(value):
            raise ProxylabError(f"{where}: {COLUMNS[i]} is {text}; every measured value must be a finite number")
        return value

    size, ops, acc = number(2), number(3), number(4)
    ha, hb = number(5, allow_empty=not halves), number(6, allow_empty=not halves)
    for col, v in (("acc", acc), ("acc_half_a", ha), ("acc_half_b", hb)):
        if not math.isnan(v) and not 0.0 <= v <= 1.0:
            raise ProxylabError(f"{where}: {col} = {v} is outside [0, 1] (accuracy is a fraction, not a percentage)")
    return cfg_id, bits, size, ops, acc, ha, hb


def read_lines(path: Path) -> List[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ProxylabError(f"{path} does not exist: a table folder needs {TABLE_FILE} and {META_FILE}") from None


def read_table_csv(path: Path, n_layers: int, halves: bool = True) -> Dict[str, np.ndarray]:
    """Parse and validate a whole ``table.csv``: header, field types, bit counts, finite accuracies,
    unique cfg_ids, unique configurations. Returns column arrays sorted by cfg_id."""
    path = Path(path)
    lines = read_lines(path)
    if not lines or lines[0].strip() != HEADER:
        first = lines[0].strip() if lines else "(empty file)"
        raise ProxylabError(f"{path} line 1: header must be '{HEADER}', got '{first}'")
    rows = []
    seen_ids: Dict[int, int] = {}
    seen_bits: Dict[Tuple[int, ...], int] = {}
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        where = f"{path} line {lineno}"
        row = parse_row(line, where, n_layers, halves)
        if row[0] in seen_ids:
            raise ProxylabError(f"{where}: cfg_id {row[0]} already appears on line {seen_ids[row[0]]}")
        if row[1] in seen_bits:
            raise ProxylabError(f"{where}: configuration '{' '.join(map(str, row[1]))}' (cfg_id {row[0]}) duplicates "
                                f"line {seen_bits[row[1]]}; each configuration must appear once")
        seen_ids[row[0]] = lineno
        seen_bits[row[1]] = lineno
        rows.append(row)
    if not rows:
        raise ProxylabError(f"{path}: the table has a header but no rows")
    rows.sort(key=lambda r: r[0])
    return {
        "cfg_id": np.array([r[0] for r in rows], dtype=np.int64),
        "bits": np.array([r[1] for r in rows], dtype=np.int64).reshape(len(rows), n_layers),
        "size_mb": np.array([r[2] for r in rows], dtype=np.float64),
        "bitops": np.array([r[3] for r in rows], dtype=np.float64),
        "acc": np.array([r[4] for r in rows], dtype=np.float64),
        "acc_half_a": np.array([r[5] for r in rows], dtype=np.float64),
        "acc_half_b": np.array([r[6] for r in rows], dtype=np.float64),
    }


def table_csv_text(columns: Dict[str, np.ndarray]) -> str:
    order = np.argsort(columns["cfg_id"], kind="stable")
    out = [HEADER + "\n"]
    for i in order:
        out.append(format_row(columns["cfg_id"][i], columns["bits"][i], columns["size_mb"][i], columns["bitops"][i],
                              columns["acc"][i], columns["acc_half_a"][i], columns["acc_half_b"][i]))
    return "".join(out)


def read_meta(folder: Path) -> Dict[str, Any]:
    path = Path(folder) / META_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ProxylabError(f"{path} does not exist: a table folder needs {TABLE_FILE} and {META_FILE}") from None
    except json.JSONDecodeError as e:
        raise ProxylabError(f"{path} is not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(meta, dict):
        raise ProxylabError(f"{path} must hold a JSON object")
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise ProxylabError(f"{path} lacks the key(s) {', '.join(missing)}")
    if meta["schema_version"] != SCHEMA_VERSION:
        raise ProxylabError(f"{path}: schema_version {meta['schema_version']} is not supported "
                            f"(this proxylab reads version {SCHEMA_VERSION}); upgrade proxylab or rebuild the table")
    n = len(meta["layer_names"])
    for key in ("params", "macs"):
        if len(meta[key]) != n:
            raise ProxylabError(f"{path}: '{key}' has {len(meta[key])} entries but layer_names has {n}")
    return meta


def verify_sha256(folder: Path, meta: Dict[str, Any], files: Iterable[str]) -> None:
    """Refuse a file whose bytes no longer match the sha256 recorded when the table was built."""
    recorded = meta.get("sha256") or {}
    for name in files:
        expected = recorded.get(name)
        path = Path(folder) / name
        if expected is None:
            raise ProxylabError(f"{Path(folder) / META_FILE} records no sha256 for {name}; "
                                "the table is unfinished or was edited by hand (rebuild or re-import it)")
        actual = sha256_file(path)
        if actual != expected:
            raise ProxylabError(f"{path}: sha256 {actual[:12]}... does not match {expected[:12]}... recorded in "
                                f"{META_FILE}; the file was modified after the table was built (restore or rebuild it)")
