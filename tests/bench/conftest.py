"""Small hand-made tables: the format tests need no network, only text a person could have written."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from proxylab.bench import format as fmt
from proxylab.utils import sha256_file


def write_table(folder: Path, n_layers: int = 3, bit_choices=(2, 3, 4), seed: int = 0, name: str = "tiny",
                halves: bool = True, splits=None) -> dict:
    """All 3**n_layers configurations with a synthetic accuracy that rises with bits, written by hand."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    params = [100 * (i + 1) for i in range(n_layers)]
    macs = [1000 * (i + 1) for i in range(n_layers)]
    lines = [fmt.HEADER]
    for cfg_id, bits in enumerate(itertools.product(bit_choices, repeat=n_layers)):
        size = sum(b * p for b, p in zip(bits, params)) / 8 / 2**20
        ops = sum(b * m * 8 for b, m in zip(bits, macs))
        acc = float(np.clip(0.1 + 0.08 * sum(bits) + rng.normal(0, 0.01), 0, 1))
        ha = float(np.clip(acc + rng.normal(0, 0.005), 0, 1)) if halves else None
        hb = float(np.clip(acc + rng.normal(0, 0.005), 0, 1)) if halves else None
        lines.append(fmt.format_row(cfg_id, bits, size, ops, acc, ha, hb).rstrip("\n"))
    (folder / fmt.TABLE_FILE).write_text("\n".join(lines) + "\n")
    meta = {
        "schema_version": fmt.SCHEMA_VERSION, "name": name,
        "layer_names": [f"layer{i}" for i in range(n_layers)], "params": params, "macs": macs,
        "bit_choices": list(bit_choices), "act_bits": 8, "has_halves": halves,
        "splits": splits or {"seed": 0, "fractions": {"search": 0.3, "select": 0.2, "test": 0.5}},
        "sha256": {fmt.TABLE_FILE: sha256_file(folder / fmt.TABLE_FILE)},
    }
    (folder / fmt.META_FILE).write_text(json.dumps(meta))
    return meta


def reseal(folder: Path) -> None:
    """Record the csv's current sha256, so a test reaches the validation behind the checksum."""
    meta = json.loads((folder / fmt.META_FILE).read_text())
    meta["sha256"][fmt.TABLE_FILE] = sha256_file(folder / fmt.TABLE_FILE)
    (folder / fmt.META_FILE).write_text(json.dumps(meta))


@pytest.fixture
def tiny_table_dir(tmp_path):
    folder = tmp_path / "tiny"
    write_table(folder)
    return folder
