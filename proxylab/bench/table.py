"""``BenchTable``: an MQ-Bench table in memory (configurations -> accuracy, size, BitOps) with fixed splits.

The search / select / test splits are a property of the table, not of the caller: they are drawn once from
``meta["splits"]`` (seed and fractions) over the rows ordered by cfg_id, so every search, every report and
every user sees the same disjoint sets, and a proxy is never tested on configurations it was evolved on.
A filtered or subset table keeps each row's split label from the full table.
"""
from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from proxylab.bench import format as fmt
from proxylab.errors import ProxylabError

SPLIT_NAMES = ("search", "select", "test")
DEFAULT_SPLITS = {"seed": 0, "fractions": {"search": 0.3, "select": 0.2, "test": 0.5}}
SHIPPED_DIR = Path(__file__).resolve().parent / "shipped"
_ARRAY_COLUMNS = ("size_mb", "bitops", "acc", "acc_half_a", "acc_half_b")


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation; NaN when either side is constant or fewer than 3 rows (no ranking exists)."""
    from scipy.stats import spearmanr

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return float("nan")
    return float(spearmanr(a[ok], b[ok]).statistic)


def summarize(columns: Dict[str, np.ndarray]) -> Dict[str, Any]:
    """The numbers meta.json records when a table is finished."""
    acc = columns["acc"]

    def finite_or_none(x: float):  # JSON has no NaN
        return None if math.isnan(x) else x

    return {
        "n_rows": int(len(acc)),
        "acc_min": float(acc.min()),
        "acc_mean": float(acc.mean()),
        "acc_max": float(acc.max()),
        "noise_ceiling": finite_or_none(spearman(columns["acc_half_a"], columns["acc_half_b"])),
        "spearman_size_acc": finite_or_none(spearman(columns["size_mb"], acc)),
    }


def split_labels(n_rows: int, splits: Dict[str, Any]) -> np.ndarray:
    """Row -> split index (0 search, 1 select, 2 test), a seeded permutation cut by the recorded fractions."""
    fractions = splits.get("fractions", {})
    if set(fractions) != set(SPLIT_NAMES) or any(f < 0 for f in fractions.values()):
        raise ProxylabError(f"meta.json 'splits.fractions' must give non-negative search/select/test fractions, got {fractions}")
    total = sum(fractions.values())
    if not math.isclose(total, 1.0, abs_tol=1e-6):
        raise ProxylabError(f"meta.json split fractions must sum to 1, got {total}")
    perm = np.random.default_rng(int(splits.get("seed", 0))).permutation(n_rows)
    n_search = int(round(fractions["search"] * n_rows))
    n_select = int(round(fractions["select"] * n_rows))
    labels = np.full(n_rows, 2, dtype=np.int8)
    labels[perm[:n_search]] = 0
    labels[perm[n_search:n_search + n_select]] = 1
    return labels


class BenchTable:
    """Rows sorted by cfg_id; ``bits`` is [N, L] in the layer order of ``layer_names``."""

    def __init__(self, columns: Dict[str, np.ndarray], meta: Dict[str, Any], folder: Optional[Path] = None,
                 labels: Optional[np.ndarray] = None):
        self.meta = meta
        self.folder = Path(folder) if folder is not None else None
        self.cfg_id = np.asarray(columns["cfg_id"], dtype=np.int64)
        self.bits = np.asarray(columns["bits"], dtype=np.int64)
        for name in _ARRAY_COLUMNS:
            setattr(self, name, np.asarray(columns[name], dtype=np.float64))
        self._labels = labels if labels is not None else split_labels(len(self.cfg_id), meta.get("splits", DEFAULT_SPLITS))
        self._index = {tuple(int(b) for b in row): i for i, row in enumerate(self.bits)}

    # -- loading ------------------------------------------------------------------------------------------
    @classmethod
    def load(cls, folder: Union[str, Path], verify: bool = True) -> "BenchTable":
        folder = Path(folder)
        meta = fmt.read_meta(folder)
        if verify:
            fmt.verify_sha256(folder, meta, [fmt.TABLE_FILE])
        columns = fmt.read_table_csv(folder / fmt.TABLE_FILE, len(meta["layer_names"]),
                                     halves=bool(meta.get("has_halves", True)))
        return cls(columns, meta, folder)

    # -- description --------------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return str(self.meta.get("name", self.folder.name if self.folder else "table"))

    @property
    def layer_names(self) -> List[str]:
        return list(self.meta["layer_names"])

    @property
    def bit_choices(self) -> Tuple[int, ...]:
        return tuple(int(b) for b in self.meta["bit_choices"])

    @property
    def params(self) -> np.ndarray:
        return np.asarray(self.meta["params"], dtype=np.int64)

    @property
    def macs(self) -> np.ndarray:
        return np.asarray(self.meta["macs"], dtype=np.int64)

    @property
    def noise_ceiling(self) -> float:
        """Spearman between the accuracies on the two test halves: no proxy can rank these rows better
        than the table ranks itself. NaN for imported tables that measured no halves."""
        return spearman(self.acc_half_a, self.acc_half_b)

    def __len__(self) -> int:
        return len(self.cfg_id)

    def __repr__(self) -> str:
        return f"BenchTable({self.name!r}, rows={len(self)}, layers={len(self.layer_names)})"

    def row(self, i: int) -> Dict[str, Any]:
        out: Dict[str, Any] = {"cfg_id": int(self.cfg_id[i]), "bits": tuple(int(b) for b in self.bits[i])}
        for name in _ARRAY_COLUMNS:
            value = float(getattr(self, name)[i])
            out[name] = None if math.isnan(value) else value  # halves an imported table never measured
        out["split"] = SPLIT_NAMES[int(self._labels[i])]
        return out

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        return (self.row(i) for i in range(len(self)))

    def to_numpy(self) -> Tuple[np.ndarray, np.ndarray]:
        """(bits [N, L] int64, acc [N] float64): the regression view a proxy is scored against."""
        return self.bits.copy(), self.acc.copy()

    # -- queries ------------------------------------------------------------------------------------------
    def _as_config(self, cfg: Any) -> Tuple[int, ...]:
        if isinstance(cfg, (str, bytes)):
            raise ProxylabError(f"a configuration is a tuple of ints, not a string ({cfg!r}); "
                                "parse it first, e.g. tuple(int(t) for t in text.split())")
        try:
            values = tuple(int(b) for b in cfg)
        except (TypeError, ValueError):
            raise ProxylabError(f"a configuration must be a sequence of ints, got {cfg!r}") from None
        if any(float(b) != int(b) for b in cfg):
            raise ProxylabError(f"a configuration holds integer bit-widths, got {cfg!r}")
        positions = self.meta.get("positions")
        if positions and len(values) == len(positions) and len(values) != len(self.layer_names):
            values = expand_positions(values, positions, self.layer_names)
        if len(values) != len(self.layer_names):
            raise ProxylabError(f"configuration has {len(values)} bit values but table '{self.name}' has "
                                f"{len(self.layer_names)} layers ({', '.join(self.layer_names[:3])}, ...)")
        return values

    def index_of(self, cfg: Sequence[int]) -> int:
        key = self._as_config(cfg)
        try:
            return self._index[key]
        except KeyError:
            raise ProxylabError(f"configuration {' '.join(map(str, key))} is not in table '{self.name}' "
                                f"({len(self)} rows); it was never measured") from None

    def __contains__(self, cfg: Sequence[int]) -> bool:
        try:
            return self._as_config(cfg) in self._index
        except ProxylabError:
            return False

    def lookup(self, cfg: Sequence[int]) -> Dict[str, Any]:
        return self.row(self.index_of(cfg))

    def subset(self, idx: Union[Sequence[int], np.ndarray]) -> "BenchTable":
        idx = np.asarray(idx)
        if idx.dtype == bool:
            if idx.shape != (len(self),):
                raise ProxylabError(f"a boolean mask must have {len(self)} entries, got {idx.shape}")
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise ProxylabError(f"row index out of range for a table of {len(self)} rows")
        columns = {"cfg_id": self.cfg_id[idx], "bits": self.bits[idx]}
        for name in _ARRAY_COLUMNS:
            columns[name] = getattr(self, name)[idx]
        return BenchTable(columns, self.meta, self.folder, labels=self._labels[idx])

    def filter_size(self, max_mb: Optional[float] = None, min_mb: Optional[float] = None) -> "BenchTable":
        mask = np.ones(len(self), dtype=bool)
        if max_mb is not None:
            mask &= self.size_mb <= max_mb
        if min_mb is not None:
            mask &= self.size_mb >= min_mb
        return self.subset(mask)

    def filter_bitops(self, max_bitops: float) -> "BenchTable":
        return self.subset(self.bitops <= max_bitops)

    def split(self, name: str) -> np.ndarray:
        """Row indices of the 'search', 'select' or 'test' split (or 'all'), ascending."""
        if name == "all":
            return np.arange(len(self))
        if name not in SPLIT_NAMES:
            raise ProxylabError(f"unknown split '{name}': use one of {', '.join(SPLIT_NAMES)} or 'all'")
        return np.flatnonzero(self._labels == SPLIT_NAMES.index(name))

    def split_table(self, name: str) -> "BenchTable":
        return self.subset(self.split(name))

    # -- the network the table measured -------------------------------------------------------------------
    def load_network(self):
        """(model in eval mode, dataset, config) of the reference network whose quantized accuracies fill
        the table. The weights' sha256 is checked against meta.json first."""
        from proxylab.bench.weights import load_reference_network

        return load_reference_network(self)


def expand_positions(values: Sequence[int], positions: Sequence[Sequence[str]], layer_names: Sequence[str]) -> Tuple[int, ...]:
    """Bits per position (MQ-Bench-101's 18) -> bits per module: modules grouped in one position share it."""
    by_name = {}
    for b, names in zip(values, positions):
        for n in names:
            by_name[n] = int(b)
    return tuple(by_name[n] for n in layer_names)


def list_tables() -> List[str]:
    """Names of the tables shipped inside the package."""
    if not SHIPPED_DIR.is_dir():
        return []
    return sorted(p.name for p in SHIPPED_DIR.iterdir() if (p / fmt.META_FILE).is_file())


def resolve_table_dir(name_or_dir: Union[str, Path]) -> Path:
    path = Path(name_or_dir)
    if path.is_dir():
        return path
    shipped = SHIPPED_DIR / str(name_or_dir)
    if str(name_or_dir) in list_tables():
        return shipped
    known = list_tables()
    close = difflib.get_close_matches(str(name_or_dir), known, n=3)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ProxylabError(f"no table '{name_or_dir}': not a folder and not a shipped table.{hint} "
                        f"Shipped: {', '.join(known) or '(none)'}")


def load_table(name_or_dir: Union[str, Path], verify: bool = True) -> BenchTable:
    """A shipped table by name (e.g. 'resnet20-mnist5k') or a table folder; table.csv's sha256 is verified."""
    return BenchTable.load(resolve_table_dir(name_or_dir), verify=verify)
