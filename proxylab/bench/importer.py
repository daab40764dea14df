"""Import the MQ-Bench-101 release file into the proxylab table format.

The release is a pickle ``{idx: {'bit_cfg': '(4, 4, 2, ...)', 'acc': top-1 %}}`` for ResNet-18 on ImageNet with
18 bit positions: the stem, the 16 block convs and the fc. The three downsample convs have no position of their
own; they take the bits of the block conv they run beside (positions 6, 10, 14, 0-based). The official code
zipped 18 bits against 20 convs and silently dropped them; here every module gets its bits by name, and the
table stores one bit per *module* (21 of them) while ``meta["positions"]`` keeps the 18-position grouping, so
``lookup`` accepts either an 18- or a 21-long configuration.

Unpickling runs arbitrary code, so the file is refused unless the caller says it trusts it.
"""
from __future__ import annotations

import math
import pickle
import re
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np

from proxylab.bench import format as fmt
from proxylab.bench.table import DEFAULT_SPLITS, BenchTable, expand_positions, summarize
from proxylab.errors import ProxylabError
from proxylab.utils import atomic_write_json, atomic_write_text, read_head, sha256_file

MQBENCH_ACT_BITS = 8
DUPLICATE_POLICIES = ("error", "mean", "first")


def resnet18_imagenet_layers() -> Tuple[List[str], List[int], List[int], List[List[str]]]:
    """(module names in forward order, parameters, MACs at 224x224, the 18 MQ-Bench positions).

    Parameters follow proxylab.quant.LayerInfo and MQ-Bench: weight (+ bias) plus the affine parameters of
    the BatchNorm folded into the layer (2 per output channel). Derived from the architecture (channels,
    kernels, strides), so the counts can be checked against any ResNet-18 rather than trusted as constants."""
    names: List[str] = ["conv1"]
    params: List[int] = [3 * 64 * 7 * 7 + 2 * 64]
    macs: List[int] = [3 * 64 * 7 * 7 * 112 * 112]
    positions: List[List[str]] = [["conv1"]]
    cin, hw = 64, 56  # after the stride-2 stem and the stride-2 max-pool
    for stage, cout in enumerate((64, 128, 256, 512), start=1):
        for block in range(2):
            stride = 2 if (stage > 1 and block == 0) else 1
            hw_out = hw // stride
            prefix = f"layer{stage}.{block}"
            names += [f"{prefix}.conv1", f"{prefix}.conv2"]
            params += [cin * cout * 9 + 2 * cout, cout * cout * 9 + 2 * cout]
            macs += [cin * cout * 9 * hw_out * hw_out, cout * cout * 9 * hw_out * hw_out]
            positions.append([f"{prefix}.conv1"])
            conv2_group = [f"{prefix}.conv2"]
            if stride != 1 or cin != cout:
                # the 1x1 shortcut runs after conv2 in forward order and shares conv2's position
                names.append(f"{prefix}.downsample.0")
                params.append(cin * cout + 2 * cout)
                macs.append(cin * cout * hw_out * hw_out)
                conv2_group.append(f"{prefix}.downsample.0")
            positions.append(conv2_group)
            cin, hw = cout, hw_out
    names.append("fc")
    params.append(512 * 1000 + 1000)
    macs.append(512 * 1000)
    positions.append(["fc"])
    return names, params, macs, positions


def _load_trusted_pickle(path: Path, trust_pickle: bool) -> Any:
    head = read_head(path, 1, "MQ-Bench-101 release", "give the release file (a pickle) inside it")
    if head not in (b"\x80", b"(", b"}"):  # PROTO (protocols >= 2); a dict in protocol 0 / 1
        raise ProxylabError(f"{path} is not a pickle: `bench import` reads the MQ-Bench-101 release file "
                            "({idx: {'bit_cfg': ..., 'acc': ...}}); a proxylab table folder opens as it is "
                            "(--bench FOLDER)")
    if not trust_pickle:
        raise ProxylabError(f"{path} is a pickle, and loading a pickle can run arbitrary code; "
                            "pass --trust-pickle (trust_pickle=True) only for a file from a source you trust")
    try:
        with open(path, "rb") as f:
            return pickle.load(f)
    except Exception as e:
        raise ProxylabError(f"{path} is not a readable pickle ({type(e).__name__}: {e})") from None


def _parse_entry(path: Path, key: Any, entry: Any, n_positions: int) -> Tuple[Tuple[int, ...], float]:
    where = f"{path} entry {key!r}"
    if not isinstance(entry, dict) or "bit_cfg" not in entry or "acc" not in entry:
        raise ProxylabError(f"{where}: expected a dict with 'bit_cfg' and 'acc', got {type(entry).__name__}"
                            + (f" with keys {sorted(map(str, entry))}" if isinstance(entry, dict) else ""))
    cfg = entry["bit_cfg"]
    if isinstance(cfg, str):
        tokens = re.findall(r"-?\d+(?:\.\d+)?", cfg)
        if re.sub(r"[\s\d.,()\[\]-]", "", cfg):
            raise ProxylabError(f"{where}: bit_cfg '{cfg}' is not a list of integers such as '(4, 3, 2, ...)'")
    elif isinstance(cfg, (list, tuple)):
        tokens = [str(t) for t in cfg]
    else:
        raise ProxylabError(f"{where}: bit_cfg must be a string like '(4, 3, 2, ...)', got {type(cfg).__name__}")
    try:
        bits = tuple(int(t) for t in tokens)
    except ValueError:
        raise ProxylabError(f"{where}: bit_cfg '{cfg}' holds a non-integer bit-width") from None
    if len(bits) != n_positions:
        raise ProxylabError(f"{where}: bit_cfg has {len(bits)} bit-widths; MQ-Bench-101's ResNet-18 has "
                            f"{n_positions} positions (stem, 16 block convs, fc)")
    if any(b < 1 or b > 16 for b in bits):
        raise ProxylabError(f"{where}: bit-widths must lie in 1..16, got {cfg}")
    try:
        acc = float(entry["acc"])
    except (TypeError, ValueError):
        raise ProxylabError(f"{where}: acc {entry['acc']!r} is not a number") from None
    if not math.isfinite(acc):
        raise ProxylabError(f"{where}: acc is {acc}; every accuracy must be a finite number")
    return bits, acc


def import_mqbench101(pickle_path, out_dir, trust_pickle: bool = False, name: str = "mqbench101-resnet18",
                      acc_scale: str = "percent", on_duplicate: str = "error", split_seed: int = 0,
                      overwrite: bool = False) -> BenchTable:
    """Convert a release pickle into ``out_dir/table.csv`` + ``meta.json``; returns the loaded table."""
    pickle_path, out_dir = Path(pickle_path), Path(out_dir)
    if acc_scale not in ("percent", "fraction"):
        raise ProxylabError(f"acc_scale must be 'percent' or 'fraction', got '{acc_scale}'")
    if on_duplicate not in DUPLICATE_POLICIES:
        raise ProxylabError(f"on_duplicate must be one of {', '.join(DUPLICATE_POLICIES)}, got '{on_duplicate}'")
    if (out_dir / fmt.TABLE_FILE).exists() and not overwrite:
        raise ProxylabError(f"{out_dir / fmt.TABLE_FILE} already exists; choose another --out or pass --overwrite")
    data = _load_trusted_pickle(pickle_path, trust_pickle)
    if not isinstance(data, dict) or not data:
        raise ProxylabError(f"{pickle_path}: expected a non-empty dict {{idx: {{'bit_cfg': ..., 'acc': ...}}}}, "
                            f"got {type(data).__name__}")

    layer_names, params, macs, positions = resnet18_imagenet_layers()
    keys = sorted(data, key=lambda k: (not isinstance(k, int), k if isinstance(k, int) else str(k)))
    first_key: Dict[Tuple[int, ...], Any] = {}
    accs: Dict[Tuple[int, ...], List[float]] = {}
    for key in keys:
        bits, acc = _parse_entry(pickle_path, key, data[key], len(positions))
        if bits in first_key:
            if on_duplicate == "error":
                raise ProxylabError(f"{pickle_path} entry {key!r}: configuration {bits} duplicates entry "
                                    f"{first_key[bits]!r}; pass --on-duplicate mean (or first) to merge them")
            if on_duplicate == "first":
                continue
        else:
            first_key[bits] = key
        accs.setdefault(bits, []).append(acc)

    configs = list(accs)
    acc = np.array([np.mean(accs[c]) for c in configs], dtype=np.float64)
    if acc_scale == "percent":
        if acc.max() <= 1.0:
            raise ProxylabError(f"{pickle_path}: every accuracy is <= 1, which looks like fractions rather than "
                                "top-1 percentages; pass --acc-scale fraction")
        if acc.min() < 0 or acc.max() > 100:
            raise ProxylabError(f"{pickle_path}: accuracies must lie in [0, 100] percent, got {acc.min()}..{acc.max()}")
        acc = acc / 100.0
    elif acc.min() < 0 or acc.max() > 1:
        raise ProxylabError(f"{pickle_path}: fractions must lie in [0, 1], got {acc.min()}..{acc.max()}")

    expanded = np.array([expand_positions(c, positions, layer_names) for c in configs], dtype=np.int64)
    p, m = np.array(params, dtype=np.float64), np.array(macs, dtype=np.float64)
    int_keys = all(isinstance(first_key[c], int) for c in configs)
    columns = {
        "cfg_id": np.array([first_key[c] if int_keys else i for i, c in enumerate(configs)], dtype=np.int64),
        "bits": expanded,
        "size_mb": (expanded * p).sum(axis=1) / 8 / 2**20,
        "bitops": (expanded * m).sum(axis=1) * MQBENCH_ACT_BITS,
        "acc": acc,
        "acc_half_a": np.full(len(configs), np.nan),
        "acc_half_b": np.full(len(configs), np.nan),
    }
    bit_choices = sorted({int(b) for c in configs for b in c})
    meta = {
        "schema_version": fmt.SCHEMA_VERSION,
        "name": name,
        "network": None,
        "network_description": "ResNet-18 (ImageNet, 224x224), MQ-Bench-101 release",
        "dataset": {"name": "imagenet", "note": "accuracies as released; the images are not part of proxylab"},
        "layer_names": layer_names,
        "positions": positions,
        "params": params,
        "params_convention": "weight (+ bias) + folded BatchNorm affine parameters, as proxylab.quant.layer_info",
        "macs": macs,
        "bit_choices": bit_choices,
        "act_bits": MQBENCH_ACT_BITS,
        "protocol": {"name": "mqbench101-release", "note": "AdaRound/BRECQ-style PTQ as released"},
        "has_halves": False,
        "weights": None,
        "splits": {"seed": int(split_seed), "fractions": dict(DEFAULT_SPLITS["fractions"])},
        "source": {"format": "MQ-Bench-101 release pickle", "file": pickle_path.name,
                   "sha256": sha256_file(pickle_path), "entries": len(data), "acc_scale": acc_scale,
                   "on_duplicate": on_duplicate},
        "command": f"proxylab bench import {pickle_path.name} --out {out_dir} --trust-pickle --name {name}",
    }
    atomic_write_text(out_dir / fmt.TABLE_FILE, fmt.table_csv_text(columns))
    meta["sha256"] = {fmt.TABLE_FILE: sha256_file(out_dir / fmt.TABLE_FILE)}
    meta["summary"] = summarize(columns)
    atomic_write_json(out_dir / fmt.META_FILE, meta)
    return BenchTable.load(out_dir)

