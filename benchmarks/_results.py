"""Writing a benchmark's results CSV: one implementation for every script in benchmarks/.

Scripts run as `python benchmarks/NAME.py`, so this sibling module is importable as `_results`. The file is
written atomically (temporary file + rename): a benchmark killed while writing leaves the previous results intact.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

from proxylab.utils import atomic_write_text, rows_to_csv


def write_csv(path, rows: Iterable[Mapping[str, Any]], columns: Optional[Sequence[str]] = None,
              float_format: Optional[Callable[[float], Any]] = None, lineterminator: str = "\r\n") -> Path:
    """Rows (dicts) -> CSV at `path`. `columns` default: the first row's keys; keys outside `columns` are left
    out. `float_format` renders float cells (e.g. ``lambda v: f"{v:.4f}"``); other cells are written as they are."""
    rows = list(rows)
    cols = list(columns) if columns is not None else list(rows[0]) if rows else []
    fmt = (lambda v: float_format(v) if isinstance(v, float) else v) if float_format else (lambda v: v)
    out = Path(path)
    atomic_write_text(out, rows_to_csv(rows, cols, cell=fmt, lineterminator=lineterminator))
    return out
