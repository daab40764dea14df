"""A model index: L2-normalised model vectors in FAISS, metadata and vectors in SQLite.

SQLite (WAL mode) is the source of truth: every add/remove commits there first, so an acknowledged write
survives a crash. The FAISS file is only a cache: its sha256 and the SQLite revision it was built at are kept
in SQLite, and ``open`` rebuilds it from SQLite whenever they do not match the file or the current revision.

Index kinds (``INDEX_KINDS``): ``flat`` exact inner product (IndexIDMap2 over IndexFlatIP, the default),
``hnsw`` (graph, approximate; FAISS cannot remove from it, so removed ids become tombstones that every search
excludes until a rebuild), ``ivf`` (inverted lists, approximate; needs training, so below
``IVF_MIN_TRAIN`` vectors it searches exactly and ``index.effective_kind`` says "flat").

One process writes an index folder at a time: each ModelIndex keeps the metadata and vectors in memory, so a
second process's writes are seen only after it reopens the folder (``open(path, read_only=True)`` for readers
that must not write, e.g. an index inside an installed package).

Encoder id: vectors are comparable only with vectors (and queries) from the same encoders, so the index
records the id of the encoders that made its vectors (meta key ``encoder_id``, e.g. ``Encoders.id``). Writers and
readers that pass ``encoder_id=`` (``create``, ``open``, ``add``/``add_many``, ``search``) are checked against it
and get an ``EncoderMismatchError`` naming both ids; an EMPTY index takes on the id of whoever writes first, and
so does an index made by this version that holds only raw vectors. An index made BEFORE ids were recorded (no
``encoder_ids`` meta row: ``index.legacy``) may hold vectors of older encoders with the same dimension (the shipped
encoders were retrained), so it never takes on an id by itself: it opens with a warning, and a write naming
encoders raises ``LegacyIndexError`` until the caller has checked that stored vectors re-encode to themselves and
calls ``adopt_encoder`` (``proxylab.retrieval.legacy.adopt_if_vectors_match`` does both), or rebuilds the index.
Vectors added without an ``encoder_id`` (e.g. raw vectors a client computed) are not checked.

Filters go INSIDE the FAISS search (``SearchParameters(sel=IDSelectorBatch(...))``), so a filtered query
still returns its k best matches rather than the filtered remains of an unfiltered top-k.
"""
from __future__ import annotations

import json
import math
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

from proxylab.errors import ProxylabError
from proxylab.registry import Registry
from proxylab.utils import PathLike, atomic_write_bytes, sha256_bytes

DB_NAME = "models.sqlite"
FAISS_NAME = "vectors.faiss"
FORMAT_VERSION = 1
# Columns with their own SQL column (filterable); any other metadata key is a JSON "extra".
_COLUMNS = {"name": str, "task": str, "family": str, "arch": str, "params": int, "num_classes": int}
_RESERVED = {"id", "score", "vector"}
FILTER_KEYS = ("task", "family", "arch", "params_min", "params_max", "num_classes")
# faiss's k-means warns below 39 points per centroid; IVF trains once there are enough for sqrt(N) lists.
IVF_MIN_TRAIN = 2048
_INT64_MAX = 2**63 - 1


class EncoderMismatchError(ProxylabError):
    """The index's vectors were made by other encoders than the ones in use: queries would be meaningless."""


class LegacyIndexError(EncoderMismatchError):
    """A write naming encoders on a non-empty index made before encoder ids were recorded (see the module doc)."""


class LegacyIndexWarning(UserWarning):
    """An index made before encoder ids were recorded: its encoders are unknown."""


class UnknownModelError(ProxylabError, KeyError):
    """No model with this id in the index (a KeyError too, so `except KeyError` code keeps working)."""

    __str__ = BaseException.__str__  # KeyError would quote the message


@dataclass
class Hit:
    """One search result: the model id, its inner product with the query (cosine), its metadata."""

    id: int
    score: float
    metadata: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return {"id": self.id, "score": self.score, **{k: v for k, v in self.metadata.items() if k != "id"}}


# ---------------------------------------------------------------------------------------------- index kinds

INDEX_KINDS = Registry("index kind")


class _Kind:
    name = ""
    supports_remove = True

    def __init__(self, dim: int, options: Mapping[str, Any]):
        self.dim = dim
        self.options = dict(options)
        self.effective = self.name

    def build(self, ids: np.ndarray, vectors: np.ndarray):
        """A FAISS index holding `vectors` under `ids` (int64)."""
        raise NotImplementedError

    def params(self, sel, k: int, fraction: float = 1.0):
        """Search parameters; `fraction` = share of the vectors the filter admits (approximate kinds widen
        their search by 1/fraction so a filtered query still sees about as many admissible candidates)."""
        import faiss

        return faiss.SearchParameters(sel=sel) if sel is not None else None


@INDEX_KINDS.register("flat", help="exact inner-product search (IndexIDMap2 over IndexFlatIP); the default")
class FlatKind(_Kind):
    name = "flat"

    def build(self, ids, vectors):
        import faiss

        index = faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
        if len(ids):
            index.add_with_ids(vectors, ids)
        return index


@INDEX_KINDS.register("hnsw", help="HNSW graph (approximate, fast); removals are tombstones until a rebuild")
class HNSWKind(_Kind):
    name = "hnsw"
    supports_remove = False

    def build(self, ids, vectors):
        import faiss

        inner = faiss.IndexHNSWFlat(self.dim, int(self.options.get("M", 32)), faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = int(self.options.get("ef_construction", 80))
        index = faiss.IndexIDMap2(inner)
        if len(ids):
            index.add_with_ids(vectors, ids)
        return index

    def params(self, sel, k, fraction=1.0):
        import faiss

        ef = max(int(self.options.get("ef_search", 64)), k)  # efSearch below k would cap the hits at efSearch
        ef = int(min(max(ef, 1024), math.ceil(ef / max(fraction, 1e-9))))
        return faiss.SearchParametersHNSW(sel=sel, efSearch=ef) if sel is not None else faiss.SearchParametersHNSW(efSearch=ef)


@INDEX_KINDS.register("ivf", help=f"inverted lists (approximate; trained, exact below {IVF_MIN_TRAIN} vectors)")
class IVFKind(_Kind):
    name = "ivf"

    def __init__(self, dim, options):
        super().__init__(dim, options)
        self.nlist = 0

    def build(self, ids, vectors):
        import faiss

        if len(ids) < IVF_MIN_TRAIN:  # too few points to train centroids: exact search, and say so
            self.effective, self.nlist = "flat", 0
            return FlatKind(self.dim, {}).build(ids, vectors)
        self.nlist = int(self.options.get("nlist") or min(4096, max(1, int(math.sqrt(len(ids))))))
        quantizer = faiss.IndexFlatIP(self.dim)
        index = faiss.IndexIVFFlat(quantizer, self.dim, self.nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = 1234  # fixed k-means seed: the same vectors give the same index
        index.train(vectors)
        index.add_with_ids(vectors, ids)
        self.effective = "ivf"
        return index

    @property
    def nprobe(self) -> int:
        return int(self.options.get("nprobe") or max(1, min(self.nlist, max(8, self.nlist // 8))))

    def params(self, sel, k, fraction=1.0):
        import faiss

        if self.effective != "ivf":
            return super().params(sel, k)
        nprobe = int(min(self.nlist, math.ceil(self.nprobe / max(fraction, 1e-9))))
        return faiss.SearchParametersIVF(sel=sel, nprobe=nprobe) if sel is not None else faiss.SearchParametersIVF(nprobe=nprobe)


# ---------------------------------------------------------------------------------------------- validation

def _check_vector(v: Any, dim: int, what: str = "vector") -> np.ndarray:
    try:
        arr = np.asarray(v, dtype=np.float64)
    except (TypeError, ValueError):
        raise ProxylabError(f"{what} must be numbers, got {type(v).__name__}") from None
    if arr.ndim != 1 or arr.shape[0] != dim:
        raise ProxylabError(f"{what} must have shape [{dim}] (the index dimension), got {list(arr.shape)}")
    if not np.isfinite(arr).all():
        raise ProxylabError(f"{what} holds NaN or inf")
    norm = float(np.linalg.norm(arr))
    if norm == 0.0:
        raise ProxylabError(f"{what} is all zeros: it has no direction to compare by cosine")
    return (arr / norm).astype(np.float32)


def _check_encoder_id(encoder_id: Any) -> Optional[str]:
    if encoder_id is None:
        return None
    if not isinstance(encoder_id, str) or not encoder_id.strip():
        raise ProxylabError(f"encoder_id must be a non-empty string (e.g. Encoders.id), got {encoder_id!r}")
    return encoder_id


def _check_queries(query: Any, dim: int) -> tuple:
    try:
        arr = np.asarray(query, dtype=np.float64)
    except (TypeError, ValueError):
        raise ProxylabError(f"query must be numbers, got {type(query).__name__}") from None
    single = arr.ndim == 1
    if single:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise ProxylabError(f"query must have shape [{dim}] or [Q, {dim}], got {list(np.asarray(query).shape)}")
    if arr.shape[0] == 0:
        raise ProxylabError("no queries given (shape [0, dim])")
    if not np.isfinite(arr).all():
        raise ProxylabError("query holds NaN or inf")
    norms = np.linalg.norm(arr, axis=1)
    if (norms == 0).any():
        raise ProxylabError(f"query {int(np.flatnonzero(norms == 0)[0])} is all zeros: it has no direction")
    return np.ascontiguousarray(arr / norms[:, None], dtype=np.float32), single


def _check_id(model_id: Any) -> int:
    if isinstance(model_id, bool) or not isinstance(model_id, (int, np.integer)):
        raise ProxylabError(f"model id must be an integer, got {model_id!r}")
    if not 0 <= int(model_id) < _INT64_MAX:  # the largest id is kept free: the next automatic id must fit too
        raise ProxylabError(f"model id must lie in 0..2**63-2, got {model_id}")
    return int(model_id)


def _check_metadata(metadata: Any) -> Dict[str, Any]:
    if not isinstance(metadata, Mapping):
        raise ProxylabError(f"metadata must be a dict, got {type(metadata).__name__}")
    md = dict(metadata)
    name = md.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ProxylabError("metadata needs a non-empty string 'name' (unique in the index)")
    bad = _RESERVED & set(md)
    if bad:
        raise ProxylabError(f"metadata may not hold {sorted(bad)}: the index sets those itself (pass model_id to choose the id)")
    for key, typ in _COLUMNS.items():
        value = md.get(key)
        if value is None:
            continue
        if typ is int:
            if (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < 0
                    or int(value) > _INT64_MAX):  # SQLite stores 64-bit integers
                raise ProxylabError(f"metadata '{key}' must be a non-negative integer, got {value!r}")
            md[key] = int(value)
        elif not isinstance(value, str):
            raise ProxylabError(f"metadata '{key}' must be a string, got {type(value).__name__}")
    extras = {k: v for k, v in md.items() if k not in _COLUMNS}
    try:
        json.dumps(extras, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ProxylabError(f"metadata extras must be JSON-able (str, numbers, lists, dicts; no NaN): {e}") from None
    return md


def _str_or_list(key: str, value: Any) -> frozenset:
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, (list, tuple, set, frozenset)) or not values or not all(isinstance(v, str) for v in values):
        raise ProxylabError(f"filter '{key}' takes a string or a non-empty list of strings, got {value!r}")
    return frozenset(values)


def _int_filter(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ProxylabError(f"filter '{key}' takes an integer, got {value!r}")
    return int(value)


def _filter_key(filters: Mapping[str, Any]) -> Any:
    """A hashable, order-free form of validated filters (for the allowed-ids cache)."""
    return tuple(sorted((k, tuple(sorted(v)) if isinstance(v, (list, tuple, set, frozenset)) else v)
                        for k, v in filters.items()))


def compile_filters(filters: Optional[Mapping[str, Any]]) -> Optional[Callable[[Mapping[str, Any]], bool]]:
    """A predicate over metadata for the allowed filter keys; ProxylabError on unknown keys or bad values."""
    if not filters:
        return None
    if not isinstance(filters, Mapping):
        raise ProxylabError(f"filters must be a dict, got {type(filters).__name__}")
    unknown = sorted(set(filters) - set(FILTER_KEYS))
    if unknown:
        raise ProxylabError(f"unknown filter key(s) {unknown}; known: {', '.join(FILTER_KEYS)}")
    tests: List[Callable[[Mapping[str, Any]], bool]] = []
    if "task" in filters:
        if not isinstance(filters["task"], str):
            raise ProxylabError(f"filter 'task' takes a string, got {filters['task']!r}")
        task = filters["task"]
        tests.append(lambda m: m.get("task") == task)
    for key in ("family", "arch"):
        if key in filters:
            allowed = _str_or_list(key, filters[key])
            tests.append(lambda m, key=key, allowed=allowed: m.get(key) in allowed)
    if "params_min" in filters:
        lo = _int_filter("params_min", filters["params_min"])
        tests.append(lambda m: m.get("params") is not None and m["params"] >= lo)
    if "params_max" in filters:
        hi = _int_filter("params_max", filters["params_max"])
        tests.append(lambda m: m.get("params") is not None and m["params"] <= hi)
    if "num_classes" in filters:
        nc = _int_filter("num_classes", filters["num_classes"])
        tests.append(lambda m: m.get("num_classes") == nc)
    return lambda m: all(t(m) for t in tests)


# ---------------------------------------------------------------------------------------------- locking

class _RWLock:
    """Many concurrent searches, or one writer: FAISS releases the GIL in search, so readers run in parallel.
    Writer-preferring: once a writer waits, new readers wait behind it, so a steady stream of overlapping
    searches cannot starve registrations."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._waiting_writers = 0

    def read(self):
        return _Guard(self, write=False)

    def write(self):
        return _Guard(self, write=True)


class _Guard:
    def __init__(self, lock: _RWLock, write: bool):
        self.lock, self.write = lock, write

    def __enter__(self):
        c = self.lock._cond
        with c:
            if self.write:
                self.lock._waiting_writers += 1
                try:
                    while self.lock._writer or self.lock._readers:
                        c.wait()
                finally:
                    self.lock._waiting_writers -= 1
                self.lock._writer = True
            else:
                while self.lock._writer or self.lock._waiting_writers:
                    c.wait()
                self.lock._readers += 1

    def __exit__(self, *exc):
        c = self.lock._cond
        with c:
            if self.write:
                self.lock._writer = False
            else:
                self.lock._readers -= 1
            c.notify_all()


# ---------------------------------------------------------------------------------------------- the index

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS models (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, task TEXT, family TEXT, arch TEXT,
    params INTEGER, num_classes INTEGER, extra TEXT NOT NULL, vector BLOB NOT NULL);
"""


def _gpu_count() -> int:
    import faiss

    try:
        return int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0
    except Exception:  # a faiss-gpu build without a usable driver behaves as CPU-only
        return 0


class ModelIndex:
    """Model vectors (cosine = inner product of L2-normalised vectors) with metadata; see the module docstring.

    Build with ``ModelIndex.create(path_or_None, dim, kind)``, reopen with ``ModelIndex.open(path)``.
    Kind options (``create(..., options={...})``): hnsw M, ef_construction, ef_search; ivf nlist, nprobe.
    """

    def __init__(self, conn: sqlite3.Connection, path: Optional[Path], dim: int, kind: str,
                 options: Mapping[str, Any]):
        self._conn = conn
        self.path = path
        self.dim = int(dim)
        self.kind = kind
        self.options = dict(options)
        self._kind = INDEX_KINDS.get(kind)(self.dim, self.options)
        self._lock = _RWLock()
        # Writers queue on this mutex and do their slow SQLite commit holding only it, so searches keep running
        # during the disk sync; the exclusive lock is taken just for the in-memory and FAISS update after.
        self._write_mutex = threading.Lock()
        self._meta: Dict[int, Dict[str, Any]] = {}
        self._vectors: Dict[int, np.ndarray] = {}
        self._names: Dict[str, int] = {}
        self._tombstones: set = set()
        self._index = None
        self._gpu_index = None
        self._use_gpu = _gpu_count() > 0
        self.rebuilt_on_open = False
        # per filter: a repeated filter (a service's common case) skips the O(N) metadata scan and selector build
        self._allowed_cache: Dict[Any, tuple] = {}  # filter key -> (selector, allowed ids)
        self.read_only = False
        self._encoder_id: Optional[str] = None
        self._tracks_encoders = True  # False: made before encoder ids were recorded (no 'encoder_ids' meta row)

    # ------------------------------------------------------------------ encoder id
    @property
    def encoder_id(self) -> Optional[str]:
        """Id of the encoders that made the vectors (None: not recorded, an index made before ids were kept)."""
        return self._encoder_id

    def check_encoder(self, encoder_id: Optional[str], action: str = "used") -> None:
        """EncoderMismatchError when the index holds vectors of encoders other than `encoder_id`.

        An empty index holds no vectors, so any encoders may use it (its record changes at the next write)."""
        encoder_id = _check_encoder_id(encoder_id)
        if encoder_id is None or self._encoder_id is None or encoder_id == self._encoder_id or not self._meta:
            return
        where = self._where()
        raise EncoderMismatchError(
            f"{where} holds {len(self._meta)} vectors made by encoders {self._encoder_id}, but it was {action} with "
            f"encoders {encoder_id}; vectors of different encoders are not comparable. Re-encode: rebuild the index "
            "with the current encoders (a zoo index: delete ZOO/index and rerun `proxylab zoo build --out ZOO`; the "
            "shipped index: `python -m proxylab.retrieval.train_encoders --zoo ZOO --index-only`; a service: "
            "re-register its models), or use the encoders the index was built with (--encoders FILE)")

    @property
    def legacy(self) -> bool:
        """True for a NON-EMPTY index made before encoder ids were recorded that records none yet: its vectors'
        encoders are unknown (they may be older encoders of the same dimension)."""
        return not self._tracks_encoders and self._encoder_id is None and bool(self._meta)

    def _where(self) -> str:
        return f"index '{self.path}'" if self.path is not None else "this in-memory index"

    def refuse_legacy(self, encoder_id: str) -> None:
        raise LegacyIndexError(
            f"{self._where()} was made before proxylab recorded encoder ids: which encoders made its {len(self._meta)} "
            f"vectors is unknown (the shipped encoders have been retrained since, with the same dimension), so vectors "
            f"of encoders {encoder_id} are not added to it. Rebuild it with the current encoders (a zoo index: delete "
            "ZOO/index and rerun `proxylab zoo build --out ZOO`, which keeps the old index instead when its stored "
            "signatures re-encode to its vectors; a service: re-register its models in a new index), or serve it "
            "with the encoders it was built with (--encoders FILE)")

    def adopt_encoder(self, encoder_id: str) -> None:
        """Record `encoder_id` on an index that records none. ONLY for a caller that has checked that the stored
        vectors are these encoders' (``legacy.adopt_if_vectors_match``); a different recorded id is refused."""
        encoder_id = _check_encoder_id(encoder_id)
        if encoder_id is None:
            raise ProxylabError("adopt_encoder needs an encoder id (e.g. Encoders.id)")
        self._writable()
        with self._write_mutex:
            self.check_encoder(encoder_id, "adopted")
            if self._encoder_id == encoder_id and self._tracks_encoders:
                return
            with self._conn:
                self._conn.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                                       [("encoder_id", encoder_id), ("encoder_ids", "recorded")])
            self._encoder_id = encoder_id
            self._tracks_encoders = True

    def _warn_legacy(self, encoder_id: str) -> None:
        import warnings

        where = self._where()
        warnings.warn(f"{where} was made before proxylab recorded encoder ids: which encoders made its {len(self._meta)} "
                      f"vectors is unknown (they may be older encoders'); searching it with encoders {encoder_id} "
                      "gives meaningless results unless they made it. Writes naming encoders are refused until "
                      "the index is rebuilt or its stored signatures are shown to re-encode to its vectors "
                      "(`proxylab zoo build`/`zoo add` do that check in a zoo folder).",
                      LegacyIndexWarning, stacklevel=3)

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(cls, path: Optional[PathLike], dim: int, kind: str = "flat",
               options: Optional[Mapping[str, Any]] = None, encoder_id: Optional[str] = None) -> "ModelIndex":
        """A new, empty index; `encoder_id` records which encoders will make its vectors (see the module doc)."""
        encoder_id = _check_encoder_id(encoder_id)
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or int(dim) < 1:
            raise ProxylabError(f"index dimension must be a positive integer, got {dim!r}")
        INDEX_KINDS.get(kind)  # unknown kind -> ProxylabError naming the known ones
        options = dict(options or {})
        if path is None:
            conn = sqlite3.connect(":memory:", check_same_thread=False)
            folder = None
        else:
            folder = Path(path)
            if (folder / DB_NAME).exists():
                raise ProxylabError(f"an index already exists at '{folder}'; open it with ModelIndex.open or pick another folder")
            if folder.exists() and not folder.is_dir():
                raise ProxylabError(f"index path '{folder}' is a file; an index is a folder")
            folder.mkdir(parents=True, exist_ok=True)
            conn = cls._connect(folder / DB_NAME)
        conn.executescript(_SCHEMA)
        with conn:
            conn.executemany("INSERT INTO meta(key, value) VALUES (?, ?)", [
                ("format_version", str(FORMAT_VERSION)), ("dim", str(int(dim))), ("kind", kind),
                ("options", json.dumps(options)), ("revision", "0"), ("next_id", "0"), ("encoder_ids", "recorded")])
            if encoder_id is not None:
                conn.execute("INSERT INTO meta(key, value) VALUES ('encoder_id', ?)", (encoder_id,))
        index = cls(conn, folder, int(dim), kind, options)
        index._encoder_id = encoder_id
        index._index = index._kind.build(np.zeros(0, np.int64), np.zeros((0, int(dim)), np.float32))
        if folder is not None:
            index.save()
        return index

    @staticmethod
    def _connect(db: Path) -> sqlite3.Connection:
        conn = sqlite3.connect(str(db), check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")  # readers never block the writer; a commit is one WAL append
        conn.execute("PRAGMA synchronous=FULL")  # an acknowledged add survives power loss
        return conn

    @classmethod
    def open(cls, path: PathLike, read_only: bool = False, encoder_id: Optional[str] = None) -> "ModelIndex":
        """Open an index folder. `read_only` opens SQLite as immutable (no -wal/-shm files, nothing written:
        for an index inside an installed package); add/remove/save then raise ProxylabError.
        `encoder_id`: the encoders the caller will use; EncoderMismatchError when the index records others
        (a LegacyIndexWarning when it records none: an index made before ids were recorded)."""
        encoder_id = _check_encoder_id(encoder_id)
        folder = Path(path)
        db = folder / DB_NAME
        if not db.is_file():
            inside = folder / "index" / DB_NAME
            hint = (f"'{folder}' is a zoo folder: its index is '{folder / 'index'}'" if inside.is_file() else
                    "create one with `proxylab zoo add` (Python: ModelIndex.create)")
            raise ProxylabError(f"no model index at '{folder}' (no {DB_NAME}); {hint}")
        try:
            if read_only:
                conn = sqlite3.connect(f"{db.resolve().as_uri()}?immutable=1", uri=True, check_same_thread=False)
            else:
                conn = cls._connect(db)
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            rows = conn.execute("SELECT id, name, task, family, arch, params, num_classes, extra, vector FROM models ORDER BY id").fetchall()
        except sqlite3.DatabaseError as e:
            raise ProxylabError(f"the index database '{db}' is unreadable ({e}); rebuild the index") from None
        try:
            version = int(meta["format_version"])
            dim, kind = int(meta["dim"]), meta["kind"]
            options = json.loads(meta.get("options", "{}"))
        except (KeyError, ValueError) as e:
            raise ProxylabError(f"the index database '{db}' lacks its settings ({e}); rebuild the index") from None
        if version > FORMAT_VERSION:
            raise ProxylabError(f"index '{folder}' has format {version}, newer than this proxylab ({FORMAT_VERSION}); upgrade proxylab")
        index = cls(conn, folder, dim, kind, options)
        index.read_only = bool(read_only)
        index._encoder_id = meta.get("encoder_id")
        index._tracks_encoders = "encoder_ids" in meta
        for row in rows:
            index._load_row(row)
        try:
            index.check_encoder(encoder_id, "opened")
        except EncoderMismatchError:
            conn.close()
            raise
        if encoder_id is not None and index.legacy:
            index._warn_legacy(encoder_id)
        index._index = index._load_faiss(meta)
        return index

    def _load_row(self, row: Sequence[Any]) -> None:
        mid, name, task, family, arch, params, num_classes, extra, blob = row
        vec = np.frombuffer(blob, dtype=np.float32)
        if vec.shape != (self.dim,):
            raise ProxylabError(f"model {mid} in '{self.path}' has a vector of {vec.size} floats, not {self.dim}: the database is corrupt")
        md = {"name": name, "task": task, "family": family, "arch": arch, "params": params, "num_classes": num_classes}
        md = {k: v for k, v in md.items() if v is not None}
        md.update(json.loads(extra))
        self._meta[int(mid)] = md
        self._vectors[int(mid)] = vec.copy()
        self._names[name] = int(mid)

    def _load_faiss(self, meta: Mapping[str, str]):
        """The cached FAISS file when it matches SQLite byte for byte and revision; else a rebuild."""
        import faiss

        file = self.path / FAISS_NAME
        if (file.is_file() and meta.get("faiss_revision") == meta.get("revision")
                and meta.get("faiss_kind") == self.kind):
            data = file.read_bytes()
            if sha256_bytes(data) == meta.get("faiss_sha256"):
                try:
                    index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
                except RuntimeError:
                    index = None
                if index is not None and index.ntotal == len(self._meta):
                    self._kind.effective = meta.get("faiss_effective", self.kind)
                    if isinstance(self._kind, IVFKind) and self._kind.effective == "ivf":
                        self._kind.nlist = int(faiss.extract_index_ivf(index).nlist)
                    return index
        self.rebuilt_on_open = True
        return self._build()

    def _build(self):
        ids = np.array(sorted(self._vectors), dtype=np.int64)
        vecs = np.stack([self._vectors[i] for i in ids]) if len(ids) else np.zeros((0, self.dim), np.float32)
        self._tombstones = set()
        self._gpu_index = None
        return self._kind.build(ids, np.ascontiguousarray(vecs, dtype=np.float32))

    # ------------------------------------------------------------------ properties
    @property
    def effective_kind(self) -> str:
        """The structure actually searched: "flat" for an ivf index still too small to train."""
        return self._kind.effective

    def __len__(self) -> int:
        return len(self._meta)

    def __contains__(self, model_id: Any) -> bool:
        try:
            return int(model_id) in self._meta
        except (TypeError, ValueError):
            return False

    def _require(self, model_id: Any) -> int:
        mid = _check_id(model_id)
        if mid not in self._meta:
            raise UnknownModelError(f"no model with id {mid} in the index ({len(self)} models); list them with `proxylab zoo list` (Python: idx.list())")
        return mid

    # Reads take the read lock, so a concurrent remove cannot strike between the id check and the read.
    def get(self, model_id: int) -> Dict[str, Any]:
        with self._lock.read():
            mid = self._require(model_id)
            return {"id": mid, **self._meta[mid]}

    def id_of(self, name: str) -> int:
        with self._lock.read():
            if name not in self._names:
                raise UnknownModelError(f"no model named '{name}' in the index")
            return self._names[name]

    def vector(self, model_id: int) -> np.ndarray:
        with self._lock.read():
            return self._vectors[self._require(model_id)].copy()

    def list(self, filters: Optional[Mapping[str, Any]] = None, limit: Optional[int] = None, offset: int = 0) -> List[Dict[str, Any]]:
        keep = compile_filters(filters)
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 0):
            raise ProxylabError(f"limit must be a non-negative integer, got {limit!r}")
        if isinstance(offset, bool) or not isinstance(offset, (int, np.integer)) or offset < 0:
            raise ProxylabError(f"offset must be a non-negative integer, got {offset!r}")
        with self._lock.read():
            ids = [i for i in sorted(self._meta) if keep is None or keep(self._meta[i])]
            ids = ids[offset:] if limit is None else ids[offset:offset + limit]
            return [{"id": i, **self._meta[i]} for i in ids]

    def count(self, filters: Optional[Mapping[str, Any]] = None) -> int:
        """How many models the filters admit (all of them without filters)."""
        keep = compile_filters(filters)
        with self._lock.read():
            return len(self._meta) if keep is None else sum(1 for m in self._meta.values() if keep(m))

    # ------------------------------------------------------------------ writes
    def _next_id(self) -> int:
        (value,) = self._conn.execute("SELECT value FROM meta WHERE key='next_id'").fetchone()
        return int(value)

    def _bump(self, next_id: Optional[int]) -> None:
        self._allowed_cache.clear()
        self._conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key='revision'")
        if next_id is not None:
            self._conn.execute("UPDATE meta SET value = ? WHERE key='next_id'", (str(next_id),))

    def add(self, vector: Any, metadata: Mapping[str, Any], model_id: Optional[int] = None,
            encoder_id: Optional[str] = None) -> int:
        """Add one model; returns its id. Everything is validated before anything is written.
        `encoder_id`: the encoders that made `vector` (checked against the index's, recorded if it has none)."""
        return self.add_many([vector], [metadata], None if model_id is None else [model_id], encoder_id=encoder_id)[0]

    def add_many(self, vectors: Any, metadatas: Sequence[Mapping[str, Any]],
                 model_ids: Optional[Sequence[int]] = None, encoder_id: Optional[str] = None) -> List[int]:
        """Add several models in one SQLite transaction (all or nothing); returns their ids."""
        encoder_id = _check_encoder_id(encoder_id)
        vecs = list(vectors) if not isinstance(vectors, np.ndarray) else [v for v in vectors]
        metas = list(metadatas)
        if len(vecs) != len(metas):
            raise ProxylabError(f"{len(vecs)} vectors but {len(metas)} metadata dicts: give one per model")
        if model_ids is not None and len(model_ids) != len(vecs):
            raise ProxylabError(f"{len(model_ids)} ids for {len(vecs)} vectors: give one id per model or none")
        self._writable()
        checked = [_check_vector(v, self.dim, f"vector {i}") for i, v in enumerate(vecs)]
        metas = [_check_metadata(m) for m in metas]
        with self._write_mutex:  # only writers change state, and they queue here: no reader lock needed to check
            self.check_encoder(encoder_id, "grown")
            record = encoder_id is not None and encoder_id != self._encoder_id
            if record and self.legacy:  # never take on an id over vectors of unknown encoders
                self.refuse_legacy(encoder_id)
            names = [m["name"] for m in metas]
            seen: set = set()
            for n in names:
                if n in self._names or n in seen:
                    raise ProxylabError(f"a model named '{n}' is already in the index; names are unique (remove it first)")
                seen.add(n)
            next_id = self._next_id()
            if model_ids is None:
                if next_id + len(vecs) > _INT64_MAX:
                    raise ProxylabError("no automatic model ids are left (ids reached 2**63-1); give explicit ids")
                ids = list(range(next_id, next_id + len(vecs)))
            else:
                ids = [_check_id(i) for i in model_ids]
                if len(set(ids)) != len(ids):
                    raise ProxylabError("the same model id is given twice")
                taken = [i for i in ids if i in self._meta]
                if taken:
                    raise ProxylabError(f"model id {taken[0]} is already in the index; remove it first or omit model_id")
            rows = []
            for mid, md, vec in zip(ids, metas, checked):
                extra = {k: v for k, v in md.items() if k not in _COLUMNS}
                rows.append((mid, md["name"], md.get("task"), md.get("family"), md.get("arch"), md.get("params"),
                             md.get("num_classes"), json.dumps(extra, allow_nan=False), vec.tobytes()))
            new_next = max([next_id, *(i + 1 for i in ids)])
            try:
                with self._conn:  # one transaction: committed before FAISS changes, rolled back on error
                    self._conn.executemany("INSERT INTO models VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
                    if record:  # in the same transaction as the vectors it describes
                        self._conn.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                                               [("encoder_id", encoder_id), ("encoder_ids", "recorded")])
                    self._bump(new_next)
            except sqlite3.IntegrityError as e:  # a race with another process writing the same file
                raise ProxylabError(f"cannot add: {e}") from None
            with self._lock.write():
                try:
                    self._faiss_add(np.array(ids, dtype=np.int64), np.stack(checked))
                except BaseException:
                    with self._conn:  # FAISS refused: undo the commit so SQLite and memory agree
                        self._conn.executemany("DELETE FROM models WHERE id = ?", [(i,) for i in ids])
                        if record:
                            self._restore_encoder_record()
                        self._bump(None)
                    self._index = self._build()
                    raise
                if record:
                    self._encoder_id = encoder_id
                    self._tracks_encoders = True
                for mid, md, vec in zip(ids, metas, checked):
                    self._meta[mid] = md
                    self._vectors[mid] = vec
                    self._names[md["name"]] = mid
                self._allowed_cache.clear()  # a search during the commit may have cached the old allowed ids
        return ids

    def _restore_encoder_record(self) -> None:
        if self._encoder_id is None:
            self._conn.execute("DELETE FROM meta WHERE key='encoder_id'")
        else:
            self._conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('encoder_id', ?)", (self._encoder_id,))

    def _faiss_add(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        self._gpu_index = None
        if self._tombstones & set(ids.tolist()):
            # HNSW still holds a removed copy of a reused id: rebuild, which drops every tombstone
            self._index = self._build()
        if isinstance(self._kind, IVFKind) and self._kind.effective != "ivf" and len(self._meta) + len(ids) >= IVF_MIN_TRAIN:
            # enough vectors to train the inverted lists now: rebuild everything as IVF
            pending = dict(self._vectors)
            pending.update(zip(ids.tolist(), vecs))
            all_ids = np.array(sorted(pending), dtype=np.int64)
            self._index = self._kind.build(all_ids, np.ascontiguousarray(np.stack([pending[i] for i in all_ids])))
            return
        self._index.add_with_ids(np.ascontiguousarray(vecs, dtype=np.float32), ids)

    def _writable(self) -> None:
        if self.read_only:
            raise ProxylabError(f"index '{self.path}' is open read-only; copy the folder and open the copy to change it")

    def remove(self, model_id: int) -> None:
        import faiss

        self._writable()
        with self._write_mutex:  # the commit first, searches still running; then the exclusive update
            mid = self._require(model_id)
            with self._conn:
                self._conn.execute("DELETE FROM models WHERE id = ?", (mid,))
                self._bump(None)
            with self._lock.write():
                md = self._meta.pop(mid)
                self._vectors.pop(mid)
                self._names.pop(md["name"], None)
                self._gpu_index = None
                if self._kind.effective != "hnsw":  # flat and ivf remove natively
                    self._index.remove_ids(faiss.IDSelectorBatch(np.array([mid], dtype=np.int64)))
                else:
                    self._tombstones.add(mid)
                    # past a fifth of the graph, dead nodes cost more search time than a rebuild
                    if len(self._tombstones) > max(64, 0.2 * self._index.ntotal):
                        self._index = self._build()
                self._allowed_cache.clear()  # a search during the commit may have cached the old allowed ids

    def rebuild(self) -> None:
        """Rebuild the FAISS structure from the stored vectors (drops HNSW tombstones, retrains IVF)."""
        with self._write_mutex, self._lock.write():
            self._index = self._build()

    def save(self) -> None:
        """Write the FAISS cache atomically (tmp + os.replace) and record its sha256 in SQLite.

        Nothing to do for an in-memory index. SQLite itself is already durable after every add/remove."""
        import faiss

        if self.path is None:
            return
        self._writable()
        with self._write_mutex, self._lock.write():
            if self._tombstones:
                self._index = self._build()
            data = faiss.serialize_index(self._index).tobytes()
            atomic_write_bytes(self.path / FAISS_NAME, data)
            (revision,) = self._conn.execute("SELECT value FROM meta WHERE key='revision'").fetchone()
            with self._conn:
                self._conn.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", [
                    ("faiss_sha256", sha256_bytes(data)), ("faiss_revision", str(revision)),
                    ("faiss_kind", self.kind), ("faiss_effective", self._kind.effective)])

    def close(self) -> None:
        with self._write_mutex, self._lock.write():
            self._conn.close()

    def __enter__(self) -> "ModelIndex":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ search
    def _selector(self, keep, filters):
        """(selector, keepalive) for the allowed ids, or (None, None) when every stored vector is allowed."""
        import faiss

        if keep is None and not self._tombstones:
            return None, None
        if keep is None:
            batch = faiss.IDSelectorBatch(np.array(sorted(self._tombstones), dtype=np.int64))
            return faiss.IDSelectorNot(batch), batch  # the Not selector does not own `batch`
        key = _filter_key(filters)
        cached = self._allowed_cache.get(key)
        if cached is None:
            allowed = np.array([i for i, m in self._meta.items() if keep(m)], dtype=np.int64)
            # FAISS only reads a selector during a search, so concurrent searches can share one
            cached = (faiss.IDSelectorBatch(allowed) if allowed.size else "empty", allowed)
            if len(self._allowed_cache) >= 64:
                self._allowed_cache.clear()
            self._allowed_cache[key] = cached
        return cached

    def _searcher(self, sel):
        """The GPU copy for unfiltered flat/ivf searches when faiss-gpu sees a GPU; else the CPU index."""
        if sel is not None or not self._use_gpu or self._kind.effective == "hnsw":
            return self._index
        if self._gpu_index is None:
            import faiss

            try:
                self._gpu_index = faiss.index_cpu_to_all_gpus(self._index)
            except Exception:  # GPU present but this index type unsupported there: stay on the CPU
                self._use_gpu = False
                return self._index
        return self._gpu_index

    def search(self, query: Any, k: int = 10, filters: Optional[Mapping[str, Any]] = None,
               encoder_id: Optional[str] = None) -> Union[List[Hit], List[List[Hit]]]:
        """Best-first hits for one query [dim] (a list) or several [Q, dim] (a list of lists).
        `encoder_id`: the encoders that made the query (EncoderMismatchError when the index's are others)."""
        q, single = _check_queries(query, self.dim)
        self.check_encoder(encoder_id, "queried")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ProxylabError(f"k must be a positive integer, got {k!r}")
        keep = compile_filters(filters)
        with self._lock.read():
            sel, _keepalive = self._selector(keep, filters)
            if isinstance(sel, str) or len(self._meta) == 0:  # "empty": the filters admit no model
                results: List[List[Hit]] = [[] for _ in range(q.shape[0])]
            else:
                kk = int(min(k, len(self._meta)))
                index = self._searcher(sel)
                fraction = 1.0 if keep is None else len(_keepalive) / max(1, self._index.ntotal)
                params = self._kind.params(sel, kk, fraction)
                try:
                    scores, labels = index.search(q, kk, params=params) if params is not None else index.search(q, kk)
                except RuntimeError:
                    if index is self._index:
                        raise
                    self._use_gpu, self._gpu_index = False, None  # the GPU copy failed: the CPU index answers
                    scores, labels = self._index.search(q, kk, params=params) if params is not None else self._index.search(q, kk)
                results = [[Hit(int(i), float(s), {"id": int(i), **self._meta[int(i)]})
                            for s, i in zip(srow, lrow) if i >= 0 and int(i) in self._meta]
                           for srow, lrow in zip(scores, labels)]
        return results[0] if single else results

    def __repr__(self) -> str:
        where = str(self.path) if self.path else "memory"
        return f"ModelIndex({where}, dim={self.dim}, kind={self.kind!r}, models={len(self)})"
