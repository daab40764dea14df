"""The build's on-disk progress: ``table.csv`` grown one fsync'd row at a time.

A killed build leaves complete rows plus, at worst, one torn last line (no trailing newline: the write was cut
short, so even a line that parses may have lost digits). Resuming drops that line, checks every surviving row
against the plan (a row from another build is an error, never silently reused) and appends the rest.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from proxylab.bench import format as fmt
from proxylab.errors import ProxylabError

Row = Tuple[int, Tuple[int, ...], float, float, float, float, float]


def read_progress(path: Path, plan: Sequence[Tuple[int, ...]], log=None) -> Dict[int, Row]:
    """cfg_id -> row already measured; truncates a torn last line in place."""
    path = Path(path)
    if not path.exists():
        return {}
    raw = path.read_bytes()
    if raw and not raw.endswith(b"\n"):
        keep = raw.rfind(b"\n") + 1
        with open(path, "r+b") as f:
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
        if log:
            log(f"{path}: dropped a torn last line ({len(raw) - keep} bytes) left by an interrupted build")
        raw = raw[:keep]
    lines = raw.decode("utf-8").splitlines()
    if not lines:
        return {}
    if lines[0].strip() != fmt.HEADER:
        raise ProxylabError(f"{path} line 1: header must be '{fmt.HEADER}'; this file was not written by "
                            "`proxylab bench build` (choose an empty --out)")
    n_layers = len(plan[0]) if plan else None
    done: Dict[int, Row] = {}
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        where = f"{path} line {lineno}"
        row = fmt.parse_row(line, where, n_layers, halves=True)
        cfg_id = row[0]
        if not 0 <= cfg_id < len(plan) or tuple(plan[cfg_id]) != row[1]:
            expected = " ".join(map(str, plan[cfg_id])) if 0 <= cfg_id < len(plan) else "no such cfg_id"
            raise ProxylabError(f"{where}: cfg_id {cfg_id} holds bits '{' '.join(map(str, row[1]))}' but this build "
                                f"plans '{expected}'; the folder belongs to a different build (use another --out)")
        if cfg_id in done:
            raise ProxylabError(f"{where}: cfg_id {cfg_id} was already measured on an earlier line; the file was "
                                "edited by hand (remove the duplicate line)")
        done[cfg_id] = row
    return done


class RowWriter:
    """Appends rows durably: each row is flushed and fsync'd before the next configuration starts."""

    def __init__(self, path: Path):
        self.path = Path(path)
        fresh = not self.path.exists() or self.path.stat().st_size == 0
        self._f = open(self.path, "a", encoding="utf-8")
        if fresh:
            self._write(fmt.HEADER + "\n")

    def _write(self, text: str) -> None:
        self._f.write(text)
        self._f.flush()
        os.fsync(self._f.fileno())

    def write(self, cfg_id: int, bits: Sequence[int], size_mb: float, bitops: float, acc: float, acc_a: float,
              acc_b: float) -> None:
        self._write(fmt.format_row(cfg_id, bits, size_mb, bitops, acc, acc_a, acc_b))

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "RowWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def stderr_log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def missing_ids(done: Dict[int, Row], n_planned: int) -> List[int]:
    return [i for i in range(n_planned) if i not in done]
