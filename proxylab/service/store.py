"""The zoo behind the service: a ModelIndex directory plus the rules the HTTP layer needs.

No HTTP here, so the logic is testable without a server. Durability comes from ModelIndex: SQLite (WAL) is
the source of truth and commits every add/remove before it returns, and the FAISS file is a cache rebuilt on
open when stale. So a registration acknowledged to a client is on disk, and one killed half-way is absent.

Concurrency: searches run in parallel with writes (ModelIndex allows it); writes take one lock, so the
duplicate-name check and the add are one step. Across processes, an exclusive flock on the index directory
keeps a second service from writing the same zoo. Expensive work (probing a model server, encoding a
signature) happens before the lock is taken, so one slow registration never stalls the others' commits.
"""
from __future__ import annotations

import fcntl
import logging
import math
import os
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import numpy as np

from proxylab.errors import ProxylabError, require
from proxylab.service.fetch import (DEFAULT_FETCH_MAX_BYTES, DEFAULT_FETCH_SECONDS, BoundedHTTPBlackBox,
                                    FetchBudget, check_fetch_max_bytes, check_fetch_seconds)
from proxylab.service.payloads import check_vector

log = logging.getLogger("proxylab.service")
LOCK_NAME = ".proxylab-serve.lock"

RERANK_MAX = 20  # results re-scored per query; the rest keep their index order


class NotFound(ProxylabError):
    """HTTP 404."""


class Conflict(ProxylabError):
    """HTTP 409: the name is taken."""


class Unavailable(ProxylabError):
    """HTTP 503: the service lacks a component (encoders) that this request needs."""


def _lock_directory(path: Path):
    handle = open(path / LOCK_NAME, "a+")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise ProxylabError(f"another proxylab service is already serving the index '{path}'; stop it or "
                            "serve a copy") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def unlock_directory(handle) -> None:
    fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    handle.close()


@contextmanager
def locked_directory(path: Path) -> Iterator[None]:
    """Hold ``path``'s service lock for a block (ProxylabError when a service is serving it)."""
    handle = _lock_directory(path)
    try:
        yield
    finally:
        unlock_directory(handle)


def _holds_an_index(path: Path) -> bool:
    """True for an index folder; ProxylabError for a folder of other files (never turned into a zoo by mistake)."""
    from proxylab.retrieval.index import DB_NAME

    if (path / DB_NAME).is_file():
        return True
    if path.exists() and (not path.is_dir() or any(p.name != LOCK_NAME for p in path.iterdir())):
        raise ProxylabError(f"'{path}' holds files but no model index ({DB_NAME}); give an index folder or a new "
                            "empty one")
    return False


def fetch_seconds_from(fetch_seconds: Optional[float], probe_timeout: Optional[float], stacklevel: int) -> float:
    """fetch_seconds, or the deprecated probe_timeout mapped onto it with a DeprecationWarning (both: an error)."""
    if probe_timeout is None:
        return check_fetch_seconds(DEFAULT_FETCH_SECONDS if fetch_seconds is None else fetch_seconds)
    if fetch_seconds is not None:
        raise ProxylabError("give fetch_seconds only: probe_timeout is its deprecated name")
    warnings.warn("probe_timeout is deprecated: use fetch_seconds, the seconds one request (a URL registration or "
                  "a re-ranked query) may spend waiting on model servers, all calls together (probe_timeout was a "
                  "per-call timeout)", DeprecationWarning, stacklevel=stacklevel + 1)
    return check_fetch_seconds(probe_timeout, "probe_timeout")


def _default_encoders():
    try:
        from proxylab.retrieval.encoders import Encoders
    except ImportError as e:
        raise Unavailable(f"this installation has no retrieval encoders ({e}); only vector registration and "
                          "vector queries are served") from None
    return Encoders.default()


class ZooStore:
    """A served zoo. ``encoders``: an Encoders object, a zero-argument factory, or None for the shipped ones.

    fetch_seconds (default 30, at most fetch.MAX_FETCH_SECONDS) and fetch_max_bytes bound the calls to model
    servers (see proxylab.service.fetch); probe_timeout is fetch_seconds' deprecated name."""

    def __init__(self, index_dir, encoders: Any = None, dim: Optional[int] = None, kind: str = "flat",
                 max_array_bytes: int = 256 << 20, fetch_seconds: Optional[float] = None,
                 fetch_max_bytes: int = DEFAULT_FETCH_MAX_BYTES, search_threads: Optional[int] = None,
                 probe_timeout: Optional[float] = None, _warn_stacklevel: int = 1):
        from proxylab.retrieval.index import ModelIndex

        # checked before anything touches the folder: a bad limit leaves no lock and no new index behind
        self.fetch_seconds = fetch_seconds_from(fetch_seconds, probe_timeout, _warn_stacklevel + 1)
        self.fetch_max_bytes = check_fetch_max_bytes(fetch_max_bytes)
        self.path = Path(index_dir).expanduser().resolve()
        self.max_array_bytes = max_array_bytes
        self.search_threads = search_threads
        # a ready Encoders object goes through the same first-use checks (dimension, encoder id) as a factory's
        self._encoders_obj = None
        self._encoders_factory: Callable[[], Any] = (
            _default_encoders if encoders is None else encoders if callable(encoders) else (lambda: encoders))
        self._encoders_error: Optional[str] = None
        # encoders refused only because the index holds other encoders' vectors: kept, and checked again on each
        # use, so once every such model is deleted (an empty index takes any encoders) they are served
        self._mismatched = None
        self.encoder_id: Optional[str] = None  # the loaded encoders' id (Encoders.id), set when they load
        self._encoders_lock = threading.Lock()
        self._write_lock = threading.Lock()
        fresh = not _holds_an_index(self.path)
        made_folder = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        self._dir_lock = _lock_directory(self.path)
        try:
            if fresh:
                if dim is None:
                    try:
                        dim = self.encoders().dim
                    except Unavailable as e:
                        raise ProxylabError(f"'{self.path}' holds no index yet and its vector size cannot be taken "
                                            f"from the encoders ({e}); give --dim to create an empty one") from None
                    # the vectors of an index sized by the encoders are theirs: record which they are
                    encoder_id = self.encoder_id
                else:
                    encoder_id = None  # --dim: a vector index; the first signature registration records the id
                require(isinstance(dim, int) and dim > 0, f"index dimension must be a positive integer, got {dim!r}")
                self.index = ModelIndex.create(str(self.path), dim=dim, kind=kind, encoder_id=encoder_id)
                log.info("created an empty %s index of dimension %d at %s", kind, dim, self.path)
            else:
                self.index = ModelIndex.open(str(self.path))
        except BaseException:
            self._release()
            if made_folder:  # a failed start leaves no half-made index folder behind
                import shutil

                shutil.rmtree(self.path, ignore_errors=True)
            raise
        self.started = time.time()

    # --- components ---------------------------------------------------------------------------------
    def encoders(self):
        """The encoders, loaded once on first use; Unavailable (503) when this installation has none."""
        if self._encoders_obj is not None:
            return self._encoders_obj
        with self._encoders_lock:
            if self._encoders_obj is None:
                if self._mismatched is not None:
                    return self._accept_if_index_allows(*self._mismatched)
                if self._encoders_error is not None:
                    raise Unavailable(self._encoders_error)
                try:
                    enc = self._encoders_factory()
                except Unavailable as e:
                    self._encoders_error = str(e)
                    raise
                except ProxylabError as e:
                    self._encoders_error = f"this service cannot load its encoders: {e}"
                    raise Unavailable(self._encoders_error) from None
                if hasattr(self, "index") and enc.dim != self.index.dim:
                    self._encoders_error = (f"the encoders make {enc.dim}-d vectors but the index at {self.path} "
                                            f"holds {self.index.dim}-d vectors: serve an index built with them")
                    raise Unavailable(self._encoders_error)
                encoder_id = str(enc.id)  # a hash of the weights: computed once, not per request
                if not hasattr(self, "index"):  # sizing a new index: nothing to check the id against yet
                    self.encoder_id, self._encoders_obj = encoder_id, enc
                else:
                    self._accept_if_index_allows(enc, encoder_id)
        return self._encoders_obj

    def _accept_if_index_allows(self, enc, encoder_id: str):
        """Serve ``enc`` unless the index holds vectors of other encoders (503 then, never mixed vectors).
        Called under the encoders lock; cheap (an id comparison), so a refused service re-checks per request."""
        from proxylab.retrieval.index import EncoderMismatchError

        try:
            if self.index.legacy:
                if all(m.get("source") == "vector" for m in self.index.list()):
                    # only clients' own vectors (a --dim index of an older release): no encoders made any of
                    # them, so there is nothing to mix; record these encoders, as a new vector index would at
                    # its first signature
                    with self._write_lock:
                        self.index.adopt_encoder(encoder_id)
                else:  # vectors of unknown (possibly older, same-size) encoders: never mix
                    self.index.refuse_legacy(encoder_id)
            self.index.check_encoder(encoder_id, "served")
        except EncoderMismatchError as e:
            self._mismatched, self._encoders_error = (enc, encoder_id), str(e)
            raise Unavailable(f"{e} (or delete every model of those encoders: an empty index takes any "
                              "encoders)") from None
        self._mismatched, self._encoders_error = None, None
        self.encoder_id, self._encoders_obj = encoder_id, enc
        return enc

    def encoders_state(self) -> str:
        if self._encoders_obj is not None:
            return "loaded"
        return "unavailable" if self._encoders_error else "not loaded"

    # --- reads ----------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.index)

    def get(self, model_id: int, with_vector: bool = False) -> Dict[str, Any]:
        try:
            if model_id not in self.index:
                raise NotFound(f"no model with id {model_id}; GET /v1/models lists the ids")
            md = dict(self.index.get(model_id))
            if with_vector:
                md["vector"] = [float(v) for v in self.index.vector(model_id)]
        except NotFound:
            raise
        except (KeyError, ProxylabError):  # removed between the check and the read
            raise NotFound(f"no model with id {model_id}; GET /v1/models lists the ids") from None
        return md

    def list(self, filters: Dict[str, Any], limit: int, offset: int) -> Dict[str, Any]:
        models = self.index.list(filters=filters or None, limit=limit, offset=offset)
        total = self.index.count(filters or None)
        return {"models": [dict(m) for m in models], "total": total, "limit": limit, "offset": offset}

    def search(self, vector: np.ndarray, k: int, filters: Dict[str, Any],
               encoder_id: Optional[str] = None) -> List[Any]:
        """encoder_id: the encoders that made ``vector`` (a query encoded here), checked against the index's;
        None for a client's raw vector."""
        if self.search_threads is not None:
            import faiss

            # OpenMP's thread count is per calling thread, so it is set in the worker thread that searches
            faiss.omp_set_num_threads(self.search_threads)
        return list(self.index.search(vector, k=k, filters=filters or None, encoder_id=encoder_id))

    def encode_query(self, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
        vec = self.encoders().encode_query(images, labels)
        return np.asarray(vec, dtype=np.float32)

    def _model_server(self, url: str, budget: FetchBudget) -> BoundedHTTPBlackBox:
        return BoundedHTTPBlackBox(url, budget, max_bytes=self.fetch_max_bytes)

    def rerank(self, hits: List[Any], images: np.ndarray, labels: np.ndarray, method: str) -> Dict[str, Any]:
        """Re-score the hits of models registered by URL with LEEP/NCE on the query's samples.

        Only a URL the service probed itself at registration (``source == "url"``) is ever called; a ``url``
        in other metadata (an index written by older versions) stays inert. All calls share one time budget
        (``fetch_seconds``); once it is spent the remaining results keep their index order. Each model is
        scored on its own, so one model server failing costs only that model its re-score (reported per
        result) instead of failing the query. Re-scored results come first, best first.
        """
        from proxylab.retrieval.rerank import rerank

        budget = FetchBudget(self.fetch_seconds)
        rescored, kept, calls = [], [], 0
        for rank, hit in enumerate(hits):
            row = _hit_row(hit)
            url = hit.metadata.get("url")
            if rank >= RERANK_MAX:
                # each re-score calls a remote server: bounded, so one query cannot hold a worker for hours
                row["rerank"] = f"skipped: only the top {RERANK_MAX} results are re-ranked"
                kept.append(row)
                continue
            if not url or hit.metadata.get("source") != "url":
                row["rerank"] = ("skipped: the model was registered without a URL" if not url else
                                 "skipped: its url was not probed by a URL registration, so it is never called")
                kept.append(row)
                continue
            if budget.remaining() <= 0:
                row["rerank"] = f"skipped: {budget.exhausted_message()}"
                kept.append(row)
                continue
            model = None
            try:
                model = self._model_server(url, budget)
                (new_hit,), spent = rerank([hit], lambda _id, m=model: m, images, labels, method=method)
            except Exception as e:  # noqa: BLE001 - a remote model's failure must not fail the whole query
                calls += model.calls if model is not None else 0  # images sent before the failure were sent
                if isinstance(e, ProxylabError):  # our own messages, which never quote a server's answer
                    row["rerank"] = f"failed: {type(e).__name__}: {e}"
                else:  # an unforeseen error's text may quote the answer: the operator's log only
                    log.warning("re-ranking with %s failed: %s: %s", url, type(e).__name__, e)
                    row["rerank"] = f"failed: {type(e).__name__} (details in the service's log)"
                kept.append(row)
                continue
            calls += int(spent)
            if not math.isfinite(new_hit.score):  # JSON cannot carry it, and it ranks nothing
                row["rerank"] = f"failed: {method} gave {new_hit.score}"
                kept.append(row)
                continue
            row["rerank_score"] = float(new_hit.score)
            row["rerank"] = method
            rescored.append(row)
        rescored.sort(key=lambda r: -r["rerank_score"])
        return {"results": rescored + kept, "calls": calls}

    # --- writes ---------------------------------------------------------------------------------------
    def _check_name_free(self, name: str) -> None:
        """The index keeps the name -> id map; a copy here could only drift from it."""
        from proxylab.retrieval.index import UnknownModelError

        try:
            model_id = self.index.id_of(name)
        except UnknownModelError:
            return
        raise Conflict(f"a model named '{name}' is already registered (id {model_id}); pick "
                       "another name or DELETE it first")

    def _add(self, vector: np.ndarray, metadata: Dict[str, Any], encoder_id: Optional[str] = None) -> Dict[str, Any]:
        with self._write_lock:
            self._check_name_free(metadata["name"])
            model_id = int(self.index.add(vector, metadata, encoder_id=encoder_id))
        return {**metadata, "id": model_id}

    def register_vector(self, vector: Any, metadata: Dict[str, Any]) -> Dict[str, Any]:
        vec = check_vector(vector, self.index.dim)
        return self._add(vec, {**metadata, "source": "vector"})

    def register_signature(self, data: bytes, metadata: Dict[str, Any]) -> Dict[str, Any]:
        from proxylab.service.payloads import load_npz

        self._check_name_free(metadata["name"])  # fail fast; checked again under the write lock
        arrays = load_npz(data, "the signature file", self.max_array_bytes)  # bounded and pickle-free
        enc = self.encoders()
        from proxylab.retrieval.signature import Signature

        try:
            sig = Signature.from_arrays(arrays)
        except ProxylabError as e:
            raise ProxylabError(f"the signature is not valid: {e}") from None
        except Exception as e:  # noqa: BLE001 - untrusted bytes: any parse failure is the upload's fault
            raise ProxylabError(f"the signature is not valid ({type(e).__name__}: {e}); make it with "
                                "`proxylab zoo signature`") from None
        return self._add_signature(sig, metadata, enc, source="signature")

    def register_url(self, url: str, metadata: Dict[str, Any], seed: int = 0) -> Dict[str, Any]:
        """Probe the user's model server ourselves (black box), then register it with its URL for re-ranking.

        Every call to the server is bounded (fetch_seconds in total, fetch_max_bytes per answer, http(s) only,
        no redirects): the URL is the client's choice."""
        self._check_name_free(metadata["name"])
        enc = self.encoders()
        from proxylab.retrieval.signature import capture_signature

        try:
            model = self._model_server(url, FetchBudget(self.fetch_seconds))
            sig = capture_signature(model, extractor=enc.extractor, seed=seed)
        except ProxylabError as e:
            raise ProxylabError(f"probing the model server at {url} failed: {e}") from None
        except Exception as e:  # noqa: BLE001 - garbage replies the black box did not foresee: the URL's fault
            # its message may quote what the server sent (the URL is the client's choice): the operator's log
            # gets it, the client only its class
            log.warning("probing %s failed: %s: %s", url, type(e).__name__, e)
            raise ProxylabError(f"could not probe the model server at {url} ({type(e).__name__}); check "
                                "that it runs (`proxylab zoo serve-model`) and that this service can reach it") from None
        return self._add_signature(sig, {**metadata, "url": url}, enc, source="url")

    def _add_signature(self, sig, metadata: Dict[str, Any], enc, source: str) -> Dict[str, Any]:
        if "num_classes" in metadata and metadata["num_classes"] != sig.num_classes:
            raise ProxylabError(f"metadata.num_classes is {metadata['num_classes']} but the signature has "
                                f"{sig.num_classes} classes; drop it or fix it")
        try:
            vec = np.asarray(enc.encode_signature(sig), dtype=np.float32)
        except ProxylabError as e:
            raise ProxylabError(f"the signature cannot be encoded: {e}") from None
        md = {**metadata, "num_classes": int(sig.num_classes), "source": source, "calls": int(sig.calls),
              "extractor": str(sig.extractor)}
        return self._add(vec, md, encoder_id=self.encoder_id)

    def delete(self, model_id: int) -> Dict[str, Any]:
        with self._write_lock:
            md = self.get(model_id)
            self.index.remove(model_id)
        return md

    # --- life cycle -----------------------------------------------------------------------------------
    def _release(self) -> None:
        handle, self._dir_lock = getattr(self, "_dir_lock", None), None
        if handle is not None:
            unlock_directory(handle)

    def close(self) -> None:
        """Save the FAISS cache (so the next start skips the rebuild) and free the directory. Idempotent."""
        if self._dir_lock is None:
            return
        try:
            with self._write_lock:
                self.index.save()
                self.index.close()
        finally:
            self._release()


def _hit_row(hit) -> Dict[str, Any]:
    """A search hit as the JSON the service returns: id, index score, metadata (without the repeated id)."""
    md = {k: v for k, v in dict(hit.metadata).items() if k != "id"}
    return {"id": int(hit.id), "score": float(hit.score), "metadata": md}


def hit_rows(hits: List[Any]) -> List[Dict[str, Any]]:
    return [_hit_row(h) for h in hits]
