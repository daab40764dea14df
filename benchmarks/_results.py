"""Writing a benchmark's results CSV: one implementation for every script in benchmarks/.

Scripts run as `python benchmarks/NAME.py`, so this sibling module is importable as `_results`. The file is
written atomically (temporary file + rename): a benchmark killed while writing leaves the previous results intact.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

from proxylab.utils import atomic_write_text


def write_csv(path, rows: Iterable[Mapping[str, Any]], columns: Optional[Sequence[str]] = None,
              float_format: Optional[Callable[[float], Any]] = None, lineterminator: str = "\r\n") -> Path:
    """Rows (dicts) -> CSV at `path`. `columns` default: the first row's keys; keys outside `columns` are left
    out. `float_format` renders float cells (e.g. ``lambda v: f"{v:.4f}"``); other cells are written as they are."""
    rows = list(rows)
    cols = list(columns) if columns is not None else list(rows[0]) if rows else []
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator=lineterminator)
    writer.writeheader()
    for row in rows:
        if float_format is not None:
            row = {k: (float_format(v) if isinstance(v, float) else v) for k, v in row.items()}
        writer.writerow(row)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, buf.getvalue())
    return out
