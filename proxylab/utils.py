"""Small shared helpers: seeding, hashing, atomic writes. Nothing here knows about networks or proxies."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import random
import secrets
import threading
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

PathLike = Union[str, os.PathLike]


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch so the same command with the same seed gives the same result."""
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def sha256_file(path: PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_out_not_a_file(out: PathLike) -> None:
    """--out, or the nearest existing folder above it, must not be a file: mkdir would fail with a traceback."""
    from proxylab.errors import ProxylabError

    out = Path(out)
    existing = next((p for p in (out, *out.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        where = "" if existing == out else f" lies inside {existing}, which"
        raise ProxylabError(f"--out {out}{where} is a file, not a folder: give a folder path for --out")


def read_head(path: PathLike, n: int, what: str, folder_hint: str) -> bytes:
    """The first ``n`` bytes of a user's file, to tell its kind before a loader's own (misleading) error does;
    a missing file, a folder (``folder_hint`` says what to give instead) or an unreadable path is a clear error."""
    from proxylab.errors import ProxylabError

    try:
        with open(path, "rb") as f:
            return f.read(n)
    except FileNotFoundError:
        raise ProxylabError(f"{what} '{path}' does not exist") from None
    except IsADirectoryError:
        raise ProxylabError(f"{what} '{path}' is a folder: {folder_hint}") from None
    except OSError as e:  # a path through a file, no permission, ...
        raise ProxylabError(f"cannot read {what} '{path}': {e.strerror or e}") from None


def _create_temporary(folder: Path, name: str) -> Tuple[int, str]:
    """An exclusive new file beside the target. Created with mode 0o666 so the kernel applies the process's
    umask (and a folder's default ACL) as for a plain open(); tempfile.mkstemp would force 0600."""
    for _ in range(100):
        tmp = str(folder / f".{name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {folder / name}")


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write via a temporary file in the same folder and rename: a killed job never leaves half a file. A new
    file gets the permissions a plain open() would; a replaced file keeps its own."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temporary(path.parent, path.name)
    try:
        try:
            os.fchmod(fd, path.stat().st_mode & 0o7777)
        except (OSError, AttributeError):  # a new file, a file system without modes, no fchmod: as created
            pass
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


# numpy parses each member's header with ast.literal_eval, and CPython 3.11's AST validation is not safe across
# threads ("constructor recursion depth mismatch" under concurrent model-server / service requests): one at a time.
_NPZ_LOCK = threading.Lock()


NPZ_HINT = "save it with numpy.savez(..., name=array) (not numpy.save)"


def npz_bytes(compressed: bool = False, /, **arrays: Any) -> bytes:
    """The bytes of an .npz of `arrays` (what ``read_npz`` reads back; the service client's upload format).
    `compressed` is positional-only, so an array may be named "compressed" too."""
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return buf.getvalue()


def _leading_bytes(source, n: int = 8):
    """The first `n` bytes of a path or bytes (None when they cannot be read here: np.load then says why)."""
    if isinstance(source, (bytes, bytearray)):
        return bytes(source[:n])
    if not isinstance(source, (str, os.PathLike)):  # a file object or descriptor: np.load reads it as it is
        return None
    try:
        with open(source, "rb") as f:
            return f.read(n)
    except (OSError, TypeError):
        return None


def read_npz(source, what: str, hint: str = NPZ_HINT) -> dict:
    """Every array of an .npz (a path, or bytes received over HTTP) as a dict, without pickles.

    A .npy file, a truncated or corrupt zip, or a pickled member raises ProxylabError naming `what` and ending
    with ``hint`` (what to do), never the TypeError/BadZipFile/zlib.error numpy and zipfile would let escape."""
    from proxylab.errors import ProxylabError

    head = _leading_bytes(source)
    if head is not None and not head.startswith((b"PK", b"\x93NUMPY")):  # zip (.npz) or .npy magic
        # np.load would try such a file as a pickle and say "allow_pickle=...": advice nobody should follow here
        raise ProxylabError(f"{what} is not an .npz archive (it starts with {head[:8]!r}); {hint}")
    with _NPZ_LOCK:
        try:
            data = np.load(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source,
                           allow_pickle=False)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise ProxylabError(f"{what} is not readable .npz data ({e}); {hint}") from None
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ProxylabError(f"{what} holds a single .npy array, not an .npz archive; {hint}")
        try:
            with data:
                return {k: np.asarray(data[k]) for k in data.files}
        except ValueError as e:
            if "pickle" in str(e).lower():
                raise ProxylabError(f"{what} holds object arrays, which need pickle; only numeric arrays are "
                                    "accepted") from None
            raise ProxylabError(f"{what} is a damaged .npz archive ({e}); {hint}") from None
        except Exception as e:  # noqa: BLE001 - zlib, zipfile, EOF...: any failure to decode given bytes is theirs
            raise ProxylabError(f"{what} is a damaged .npz archive ({type(e).__name__}: {e}); {hint}") from None


def csv_cell(v: Any) -> Any:
    """How proxylab writes a cell: floats at full precision (nan spelled out), lists as space-separated values."""
    if isinstance(v, float):
        return "nan" if math.isnan(v) else repr(v)
    if isinstance(v, (list, tuple)):
        return " ".join(str(x) for x in v)
    return v


def rows_to_csv(rows: Iterable[Mapping[str, Any]], columns: Optional[Sequence[str]] = None,
                cell: Callable[[Any], Any] = csv_cell, lineterminator: str = "\n") -> str:
    """Dict rows -> CSV text. `columns` default: every key, in first-seen order; keys outside `columns` are left
    out. `cell` renders each value."""
    rows = list(rows)
    if columns is None:
        columns = []
        for r in rows:
            columns += [c for c in r if c not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator=lineterminator)
    writer.writeheader()
    for r in rows:
        writer.writerow({c: cell(r.get(c, "")) for c in columns})
    return buf.getvalue()


def cache_root() -> Path:
    """Where proxylab keeps caches: $PROXYLAB_CACHE, or ~/.cache/proxylab when the variable is unset."""
    return Path(os.environ.get("PROXYLAB_CACHE") or Path.home() / ".cache" / "proxylab")


@contextmanager
def torch_threads(n: Optional[int]) -> Iterator[None]:
    """Run with n torch intra-op threads (None: as they are), then restore the previous count. Small tensors
    (proxy scoring, encoders) run faster on one thread: torch's synchronisation costs more than it saves there
    (proxy scoring measured 10x slower with 2 threads than 1 on a busy 2-core machine)."""
    import torch

    if n is None or n == torch.get_num_threads():
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
