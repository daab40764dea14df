"""Turn untrusted request bodies into checked arrays, vectors, metadata and filters.

Everything here raises ``ProxylabError`` with a message naming the problem and the fix; the app maps that to
HTTP 422. Parsing never trusts the client: npz files are read without pickle and with their uncompressed size
checked before anything is decompressed (a small compressed upload must not become gigabytes in memory), JSON
rejects NaN/Infinity (they would break the JSON responses that echo metadata back), and strings must be valid
UTF-8 (a lone surrogate would fail later, inside SQLite or the response encoder, as a 500).
"""
from __future__ import annotations

import io
import json
import math
import zipfile
from typing import Any, Dict, Optional

import numpy as np

from proxylab.utils import read_npz
from proxylab.errors import ProxylabError, require
from proxylab.retrieval.rerank import RERANKERS

IMAGE_SHAPE = (3, 32, 32)  # the canonical image space of proxylab.retrieval.canonical
INT64_MAX = 2**63 - 1
MAX_K = 1000
MAX_TEXT = 500  # longest name / task / family / arch string
MAX_JSON_DEPTH = 8
RERANK_METHODS = tuple(RERANKERS.names())  # probability-based only: a model server gives no features
# metadata keys a client may not set: the service owns them (id is the index's, source says how it came in)
RESERVED_METADATA = ("id", "score", "vector", "source", "calls", "extractor")
FILTER_KEYS = ("task", "family", "arch", "params_min", "params_max", "num_classes")


def loads_json(text: bytes | str, what: str) -> Any:
    """json.loads that refuses NaN/Infinity and says which part of the request was not JSON."""

    def no_constants(name: str) -> Any:
        raise ProxylabError(f"{what}: {name} is not allowed in JSON; send finite numbers only")

    try:
        return json.loads(text, parse_constant=no_constants)
    except ProxylabError:
        raise
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ProxylabError(f"{what} is not valid JSON ({e}); send a JSON object") from None


def check_json_value(value: Any, where: str, depth: int = 0) -> None:
    """JSON-able, finite, int64-sized and UTF-8 encodable, so SQLite and the JSON response both accept it."""
    require(depth <= MAX_JSON_DEPTH, f"{where} is nested deeper than {MAX_JSON_DEPTH} levels; flatten it")
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, int):
        require(-INT64_MAX - 1 <= value <= INT64_MAX, f"{where} = {value} does not fit in 64 bits")
    elif isinstance(value, float):
        require(math.isfinite(value), f"{where} is not a finite number")
    elif isinstance(value, str):
        check_text(value, where, limit=None)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            check_json_value(v, f"{where}[{i}]", depth + 1)
    elif isinstance(value, dict):
        for k, v in value.items():
            require(isinstance(k, str), f"{where} has a non-string key {k!r}")
            check_text(k, f"a key of {where}", limit=MAX_TEXT)
            check_json_value(v, f"{where}.{k}", depth + 1)
    else:
        raise ProxylabError(f"{where} has a value of type {type(value).__name__}; use JSON types only")


def check_text(value: Any, where: str, limit: Optional[int] = MAX_TEXT) -> str:
    require(isinstance(value, str), f"{where} must be a string, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ProxylabError(f"{where} is not valid UTF-8 text (lone surrogate); send plain text") from None
    require("\x00" not in value, f"{where} contains a NUL character; remove it")
    if limit is not None:
        require(len(value) <= limit, f"{where} is longer than {limit} characters; shorten it")
    return value


def check_int(value: Any, where: str, lo: int = 0, hi: int = INT64_MAX) -> int:
    # bool is an int subclass in Python, and True as a parameter count is a client bug worth reporting
    require(isinstance(value, int) and not isinstance(value, bool), f"{where} must be an integer, got {value!r}")
    require(lo <= value <= hi, f"{where} must lie in [{lo}, {hi}], got {value}")
    return value


def check_url(value: Any, where: str = "url") -> str:
    """A model server's base URL: http(s), a host, an optional port and path, nothing else.

    The service appends '/info' and '/predict' to it, so a query (?), a fragment (#) or credentials (user@)
    would make those calls land elsewhere than the path says (http://host/secret.json# fetches /secret.json):
    refused, naming the part. Whitespace and control characters are refused too (http.client would refuse them
    later, less clearly)."""
    from urllib.parse import urlsplit

    check_text(value, where, limit=2000)
    require(not any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in value),
            f"{where} contains whitespace or a control character; give a plain URL such as http://host:8001")
    try:
        parts = urlsplit(value)
        port = parts.port  # raises ValueError on a non-numeric or out-of-range port
    except ValueError as e:
        raise ProxylabError(f"{where} '{value}' is not a valid URL ({e})") from None
    require(parts.scheme in ("http", "https") and bool(parts.hostname),
            f"{where} must be an http(s) URL such as http://host:8001, got '{value}'")
    del port
    for mark, part in (("?", "a query"), ("#", "a fragment")):
        require(mark not in value, f"{where} holds {part} ('{mark}...'); a model-server URL is a base URL such as "
                                   "http://host:8001/path, to which the service appends /info and /predict")
    require("@" not in parts.netloc, f"{where} holds credentials (user:password@); the service sends none: give "
                                     "the model server's URL without them")
    return value.rstrip("/")


def parse_metadata(obj: Any) -> Dict[str, Any]:
    """The metadata a client registers with a model: a name (required, unique) plus typed known keys."""
    require(isinstance(obj, dict), "metadata must be a JSON object such as {\"name\": \"my-model\", \"task\": ...}")
    md = dict(obj)
    require("name" in md, "metadata needs a 'name' (a unique string naming the model)")
    name = check_text(md["name"], "metadata.name")
    require(name.strip() != "", "metadata.name is empty; give the model a name")
    for key in RESERVED_METADATA:
        require(key not in md, f"metadata.{key} is set by the service; remove it from the metadata")
    for key in ("task", "family", "arch"):
        if key in md:
            check_text(md[key], f"metadata.{key}")
    if "params" in md:
        check_int(md["params"], "metadata.params", 0, 2**53)
    if "num_classes" in md:
        check_int(md["num_classes"], "metadata.num_classes", 2, 1_000_000)
    # A url beside a vector or signature would be an address nobody checked that re-ranking later calls on
    # every reader's behalf: refused. The service calls only URLs it probed itself (a URL registration).
    require("url" not in md, "metadata.url is not accepted: the service only calls model servers it probed at "
                             "registration; to make a model re-rankable register it by URL (JSON {\"url\": ..., "
                             "\"metadata\": {...}}), and keep other addresses under another key")
    check_json_value(md, "metadata")
    return md


def parse_filters(obj: Any) -> Dict[str, Any]:
    """Metadata filters of a query or listing, typed as ModelIndex.search expects them."""
    if obj is None:
        return {}
    require(isinstance(obj, dict), f"filters must be a JSON object with keys among {', '.join(FILTER_KEYS)}")
    out: Dict[str, Any] = {}
    for key, value in obj.items():
        require(key in FILTER_KEYS, f"unknown filter '{key}'; filters are {', '.join(FILTER_KEYS)}")
        if key == "task":
            out[key] = check_text(value, "filters.task")
        elif key in ("family", "arch"):
            if isinstance(value, list):
                require(0 < len(value) <= 100, f"filters.{key} must list 1 to 100 names")
                out[key] = [check_text(v, f"filters.{key}[]") for v in value]
            else:
                out[key] = check_text(value, f"filters.{key}")
        elif key == "num_classes":
            out[key] = check_int(value, "filters.num_classes", 0, 1_000_000)
        else:
            out[key] = check_int(value, f"filters.{key}", 0, 2**53)
    if "params_min" in out and "params_max" in out:
        require(out["params_min"] <= out["params_max"],
                f"filters.params_min ({out['params_min']}) is above filters.params_max ({out['params_max']})")
    return out


def parse_k(value: Any) -> int:
    return check_int(value, "k", 1, MAX_K)


def npz_unpacked_size(data: bytes) -> int:
    """Bytes an .npz unpacks to, read from its zip directory alone (nothing is decompressed), so a small upload
    that would unpack to gigabytes is refused first. zipfile's errors pass through: callers word their own."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return sum(i.file_size for i in zf.infolist())


def load_npz(data: bytes, what: str, max_bytes: int) -> Dict[str, np.ndarray]:
    """Arrays of an uploaded .npz, pickle refused, total uncompressed size bounded by max_bytes."""
    require(len(data) > 0, f"{what} is empty; upload an .npz file made with numpy.savez")
    try:
        total = npz_unpacked_size(data)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as e:
        raise ProxylabError(f"{what} is not an .npz file ({e}); save it with numpy.savez") from None
    require(total <= max_bytes, f"{what} unpacks to {total} bytes, over this service's limit of {max_bytes}; "
                                "send fewer or smaller arrays")
    return read_npz(data, what)


def check_samples(arrays: Dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Few-shot labelled samples: images float [N,3,32,32] in [0,1] and integer labels [N], >= 2 classes."""
    require("images" in arrays, f"the samples .npz needs an 'images' array; it holds {sorted(arrays) or 'nothing'}")
    require("labels" in arrays, "the samples .npz has no 'labels' array: queries need labelled images "
                                "(labels [N], one integer class per image)")
    x, y = arrays["images"], arrays["labels"]
    require(x.dtype.kind == "f", f"images must be float32 in [0, 1], got dtype {x.dtype}; "
                                 "convert with images.astype('float32') / 255 for 8-bit images")
    require(x.ndim == 4 and tuple(x.shape[1:]) == IMAGE_SHAPE,
            f"images must have shape [N, 3, 32, 32], got {list(x.shape)}; resize and make them RGB first")
    n = x.shape[0]
    require(n > 0, "images is empty; send a few labelled images per class")
    x = x.astype(np.float32, copy=False)
    require(bool(np.isfinite(x).all()), "images contain NaN or infinite values; send finite pixels in [0, 1]")
    lo, hi = float(x.min()), float(x.max())
    require(lo >= -1e-3 and hi <= 1 + 1e-3,
            f"images must lie in [0, 1], got values in [{lo:.3g}, {hi:.3g}]; send unnormalised pixels / 255")
    require(y.dtype.kind in "iu", f"labels must be integers (class indices), got dtype {y.dtype}")
    require(y.ndim == 1, f"labels must be one-dimensional [N], got shape {list(y.shape)}")
    require(len(y) == n, f"labels has {len(y)} entries but images has {n}; give one label per image")
    y = y.astype(np.int64)
    require(int(y.min()) >= 0, "labels contain negative values (unlabelled images?); every image needs a class "
                               "index >= 0")
    classes = np.unique(y)
    require(len(classes) >= 2, f"all {n} images have the same label {int(classes[0])}; a query needs at least "
                               "two classes")
    return np.ascontiguousarray(np.clip(x, 0.0, 1.0)), y


def check_vector(value: Any, dim: int, what: str = "vector") -> np.ndarray:
    """A JSON list of dim finite numbers, not all zero; returned L2-normalised as float32."""
    require(isinstance(value, list), f"{what} must be a JSON list of {dim} numbers")
    require(len(value) == dim, f"{what} has {len(value)} numbers but this index's vectors have {dim}")
    require(all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value),
            f"{what} must contain numbers only")
    try:
        v = np.asarray(value, dtype=np.float64)
    except OverflowError:
        raise ProxylabError(f"{what} has a number too large for a float") from None
    require(bool(np.isfinite(v).all()), f"{what} contains a non-finite number")
    peak = float(np.abs(v).max())
    require(peak > 0, f"{what} is all zeros; it has no direction to search along")
    v = v / peak  # scale first so the norm of huge or tiny entries neither overflows nor underflows
    return (v / np.linalg.norm(v)).astype(np.float32)
