"""The model-zoo query service: FastAPI routes over a ZooStore.

Routes (all JSON unless said otherwise; errors are ``{"error": "what is wrong and what to do"}``):

    GET    /v1/health                 liveness + index size (always open)
    GET    /metrics                   Prometheus text format (always open)
    GET    /v1/models                 list; filters task, family, arch, params_min, params_max, num_classes; limit/offset
    GET    /v1/models/{id}            one model's metadata (?vector=true adds its vector)
    DELETE /v1/models/{id}            write scope
    POST   /v1/models                 write scope; multipart (signature .npz + metadata JSON) or JSON {url|vector, metadata}
    POST   /v1/query                  multipart (samples .npz: images + labels; k, filters, rerank, method) or JSON {vector, k, filters}

Status codes: 400 unparseable body, 401 missing/invalid token, 403 token lacks scope, 404 unknown id or route,
409 name taken, 413 body too large, 415 unsupported content type, 422 invalid content, 503 the service lacks
encoders for this request. A 500 means a bug: it is logged with its traceback.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Dict, List, Optional

from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from proxylab.errors import ProxylabError, require
from proxylab.service import openapi_bodies as bodies
from proxylab.service.auth import AuthError, TokenChecker
from proxylab.service.body_limit import BodyLimitMiddleware, BodyTooLarge
from proxylab.service.fetch import DEFAULT_FETCH_MAX_BYTES
from proxylab.service.metrics import Metrics, MetricsMiddleware
from proxylab.service.payloads import (INT64_MAX, MAX_K, RERANK_METHODS, check_int, check_samples, check_url,
                                       check_vector, load_npz, loads_json, parse_filters, parse_k, parse_metadata)
from proxylab.service.store import Conflict, NotFound, Unavailable, ZooStore, hit_rows

log = logging.getLogger("proxylab.service")
API_VERSION = "v1"
DEFAULT_MAX_BODY = 32 << 20
MAX_BODY_BYTES = 4 << 30  # a sane cap: an upload is held in memory, and unpacked up to 4x its size


class AsciiJSONResponse(JSONResponse):
    """JSON with non-ASCII escaped: a lone UTF-16 surrogate a client smuggled into a name, filter key or remote
    error text is then echoed as `\\udXXX` instead of failing to encode (a 500)."""

    def render(self, content: Any) -> bytes:
        import json

        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def _error(status: int, message: str, headers: Optional[Dict[str, str]] = None) -> JSONResponse:
    return AsciiJSONResponse({"error": message}, status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("query", "path", "body"))
        parts.append(f"{loc}: {err.get('msg', 'invalid')}" if loc else str(err.get("msg", "invalid")))
    return "; ".join(parts) or "invalid request"


def _install_error_handlers(app: FastAPI) -> None:
    statuses = {NotFound: 404, Conflict: 409, Unavailable: 503, ProxylabError: 422, BodyTooLarge: 413}
    for cls, status in statuses.items():
        app.add_exception_handler(cls, lambda request, exc, status=status: _error(status, str(exc)))

    @app.exception_handler(AuthError)
    async def auth_error(request: Request, exc: AuthError):
        headers = {"WWW-Authenticate": 'Bearer realm="proxylab"'} if exc.status == 401 else None
        return _error(exc.status, exc.message, headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        return _error(422, _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no route {request.url.path}; the API lives under /{API_VERSION} (see /docs)"
        return _error(exc.status_code, message, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception):
        # the only path to a 500: a bug. Log it whole; tell the client nothing internal.
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _error(500, "internal error in the proxylab service; the operator's log has the details")


async def _json_body(request: Request, what: str) -> Dict[str, Any]:
    body = await request.body()
    obj = loads_json(body, what)
    require(isinstance(obj, dict), f"{what} must be a JSON object")
    return obj


async def _read_form(request: Request, max_bytes: int, allowed: tuple) -> Dict[str, bytes]:
    """A multipart body as {field: bytes}, each field at most once; upload temp files closed before returning."""
    out: Dict[str, bytes] = {}
    async with request.form(max_files=4, max_fields=16, max_part_size=max_bytes) as form:
        unknown = sorted(set(form.keys()) - set(allowed))
        require(not unknown, f"unknown form field(s) {unknown}; the fields are {', '.join(allowed)}")
        for key in form.keys():
            values = form.getlist(key)
            require(len(values) == 1, f"form field '{key}' is given {len(values)} times; send it once")
            value = values[0]
            out[key] = await value.read() if isinstance(value, UploadFile) else value.encode("utf-8")
    return out


def _text(form: Dict[str, bytes], key: str) -> Optional[str]:
    if key not in form:
        return None
    try:
        return form[key].decode("utf-8")
    except UnicodeDecodeError:
        raise ProxylabError(f"form field '{key}' is not UTF-8 text") from None


def _content_kind(request: Request) -> str:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json":
        return "json"
    if ctype == "multipart/form-data":
        return "multipart"
    raise StarletteHTTPException(415, f"unsupported Content-Type '{ctype or '(none)'}'; send application/json "
                                      "or multipart/form-data")


def _parse_bool(text: str, what: str) -> bool:
    low = text.strip().lower()
    require(low in ("true", "false", "1", "0", "yes", "no"), f"{what} must be true or false, got '{text[:40]}'")
    return low in ("true", "1", "yes")


def create_app(index_dir, tokens: Optional[Dict[str, str]] = None, open_reads: bool = True,
               max_body_bytes: int = DEFAULT_MAX_BODY, encoders: Any = None, dim: Optional[int] = None,
               kind: str = "flat", fetch_seconds: Optional[float] = None,
               fetch_max_bytes: int = DEFAULT_FETCH_MAX_BYTES, search_threads: Optional[int] = 1,
               probe_timeout: Optional[float] = None) -> FastAPI:
    """The ASGI app serving the index in ``index_dir`` (created empty when the folder holds none).

    tokens: token -> "read" | "write" (see proxylab.service.auth); open_reads=False closes reads to read tokens.
    encoders: Encoders object or factory (default: the shipped ones, loaded on first need).
    dim/kind: for a new index only (dim defaults to the encoders' dimension).
    fetch_seconds / fetch_max_bytes: limits on the service's own calls to model servers (URL registration,
    re-ranking): seconds spent waiting on them per request in total (default 30), bytes per answer
    (proxylab.service.fetch). probe_timeout: fetch_seconds' deprecated name (a DeprecationWarning; it was a
    per-call timeout, it now bounds all of a request's calls together).
    search_threads: FAISS OpenMP threads per search (None leaves FAISS's default). The service's parallelism
    comes from concurrent requests (FAISS releases the GIL), and OpenMP teams inside each search then fight
    over the cores: on a busy 2-core machine a 10k-vector search took 88 ms with the default and 0.34 ms
    with one thread.
    """
    from proxylab import __version__

    require(search_threads is None or (isinstance(search_threads, int) and search_threads >= 1),
            "search_threads must be an integer >= 1 (or None for FAISS's default)")
    checker = TokenChecker(tokens or {}, open_reads=open_reads)
    require(open_reads or len(checker) > 0, "--private closes reads to token holders, but no tokens are configured: "
                                            "give --tokens FILE or set PROXYLAB_TOKENS")
    require(isinstance(max_body_bytes, int) and not isinstance(max_body_bytes, bool)
            and 0 < max_body_bytes <= MAX_BODY_BYTES,
            f"max_body_bytes must be a positive integer of at most {MAX_BODY_BYTES}, got {max_body_bytes!r}")
    store = ZooStore(index_dir, encoders=encoders, dim=dim, kind=kind, max_array_bytes=4 * max_body_bytes,
                     fetch_seconds=fetch_seconds, fetch_max_bytes=fetch_max_bytes, search_threads=search_threads,
                     probe_timeout=probe_timeout, _warn_stacklevel=2)
    metrics = Metrics()
    metrics.gauge("proxylab_index_models", lambda: len(store), "models in the served index")
    metrics.gauge("proxylab_uptime_seconds", lambda: time.time() - store.started, "seconds since start")

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        store.close()

    app = FastAPI(title="proxylab model-zoo query service", version=__version__, lifespan=lifespan,
                  description=__doc__, default_response_class=AsciiJSONResponse)
    app.state.store = store
    app.state.metrics = metrics
    _install_error_handlers(app)
    # order: metrics sees everything (413s included); the body limit wraps the body reads of every handler,
    # which happen after the route's token check (the dependencies below), so a 401/403 never reads the body
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    # as dependencies, the token is checked before any parameter is validated: a caller without the right to
    # ask learns nothing from a 422 about its parameters
    async def need_read(request: Request) -> None:
        checker.require(request.headers.get("authorization"), "read")

    async def need_write(request: Request) -> None:
        checker.require(request.headers.get("authorization"), "write")

    reader, writer = [Depends(need_read)], [Depends(need_write)]

    @app.get(f"/{API_VERSION}/health", summary="liveness and index size")
    def health() -> Dict[str, Any]:
        return {"status": "ok", "version": __version__, "models": len(store), "dim": store.index.dim,
                "kind": store.index.kind, "encoders": store.encoders_state(), "private": not open_reads,
                "max_body_bytes": max_body_bytes, "fetch_seconds": store.fetch_seconds,
                "fetch_max_bytes": store.fetch_max_bytes}

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics (text format 0.0.4)")
    def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get(f"/{API_VERSION}/models", summary="list models, filtered and paged", dependencies=reader)
    def list_models(task: Optional[str] = None,
                    family: Optional[List[str]] = Query(None),
                    arch: Optional[List[str]] = Query(None),
                    params_min: Optional[int] = Query(None, ge=0, le=2**53),
                    params_max: Optional[int] = Query(None, ge=0, le=2**53),
                    num_classes: Optional[int] = Query(None, ge=0, le=1_000_000),
                    limit: int = Query(100, ge=1, le=1000),
                    offset: int = Query(0, ge=0, le=INT64_MAX)) -> Dict[str, Any]:
        raw = {"task": task, "family": family[0] if family and len(family) == 1 else family,
               "arch": arch[0] if arch and len(arch) == 1 else arch, "params_min": params_min,
               "params_max": params_max, "num_classes": num_classes}
        filters = parse_filters({k: v for k, v in raw.items() if v is not None})
        return store.list(filters, limit, offset)

    @app.get(f"/{API_VERSION}/models/{{model_id}}", summary="one model's metadata", dependencies=reader)
    def get_model(model_id: int = Path(ge=0, le=INT64_MAX),
                  vector: bool = Query(False, description="include the model's vector")) -> Dict[str, Any]:
        return store.get(model_id, with_vector=vector)

    @app.delete(f"/{API_VERSION}/models/{{model_id}}", summary="remove a model (write scope)", dependencies=writer)
    def delete_model(model_id: int = Path(ge=0, le=INT64_MAX)) -> Dict[str, Any]:
        md = store.delete(model_id)
        return {"deleted": model_id, "name": md["name"]}

    @app.post(f"/{API_VERSION}/models", status_code=201, summary="register a model (write scope)",
              openapi_extra=bodies.REGISTER, dependencies=writer)
    async def register(request: Request) -> JSONResponse:
        if _content_kind(request) == "json":
            obj = await _json_body(request, "the request body")
            unknown = set(obj) - {"url", "vector", "metadata", "seed"}
            require(not unknown, f"unknown field(s) {sorted(unknown)}; send url or vector, metadata, seed")
            require(("url" in obj) != ("vector" in obj), "send exactly one of 'url' (a model server to probe) or "
                                                         "'vector' (a model vector made with this zoo's encoders)")
            metadata = parse_metadata(obj.get("metadata"))
            if "url" in obj:
                seed = check_int(obj.get("seed", 0), "seed", 0, 2**31 - 1)
                url = check_url(obj["url"])
                row = await run_in_threadpool(store.register_url, url, metadata, seed)
            else:
                require("seed" not in obj, "'seed' goes with 'url' registrations only")
                row = await run_in_threadpool(store.register_vector, obj["vector"], metadata)
        else:
            form = await _read_form(request, max_body_bytes, ("signature", "metadata"))
            data = form.get("signature")
            require(data is not None, "the form needs a 'signature' file (made by `proxylab zoo signature`)")
            text = _text(form, "metadata")
            require(text is not None, "the form needs a 'metadata' field: JSON such as {\"name\": \"my-model\"}")
            metadata = parse_metadata(loads_json(text, "metadata"))
            row = await run_in_threadpool(store.register_signature, data, metadata)
        metrics.inc("proxylab_registrations_total", help="models registered since start")
        return AsciiJSONResponse(row, status_code=201, headers={"Location": f"/{API_VERSION}/models/{row['id']}"})

    @app.post(f"/{API_VERSION}/query", summary="rank the zoo's models for a task", openapi_extra=bodies.QUERY,
              dependencies=reader)
    async def query(request: Request) -> Dict[str, Any]:
        started = time.perf_counter()
        if _content_kind(request) == "json":
            obj = await _json_body(request, "the request body")
            unknown = set(obj) - {"vector", "k", "filters"}
            require(not unknown, f"unknown field(s) {sorted(unknown)}; a JSON query has vector, k, filters (re-ranking "
                                 "needs labelled samples: send them as multipart)")
            require("vector" in obj, "a JSON query needs 'vector'; to query with images, upload them as multipart")
            vector = check_vector(obj["vector"], store.index.dim)
            k, filters = parse_k(obj.get("k", 10)), parse_filters(obj.get("filters"))
            samples, rerank, method = None, False, None
            encoder_id = None  # a client's own vector: nothing to check it against
        else:
            form = await _read_form(request, max_body_bytes, ("samples", "k", "filters", "rerank", "method"))
            data = form.get("samples")
            require(data is not None, "the form needs a 'samples' .npz file with 'images' and 'labels'")
            k_text = _text(form, "k")
            try:
                k = parse_k(int(k_text) if k_text is not None else 10)
            except ValueError:
                raise ProxylabError(f"k must be an integer in [1, {MAX_K}], got '{k_text[:40]}'") from None
            f_text = _text(form, "filters")
            filters = parse_filters(loads_json(f_text, "filters") if f_text else None)
            r_text = _text(form, "rerank")
            rerank = _parse_bool(r_text, "rerank") if r_text is not None else False
            method = _text(form, "method") or "leep"
            require(method in RERANK_METHODS, f"method must be one of {', '.join(RERANK_METHODS)}, got '{method[:40]}'")
            # unpacking and checking up to max_body_bytes of pixels is CPU work: off the event loop
            samples = await run_in_threadpool(
                lambda: check_samples(load_npz(data, "the samples file", store.max_array_bytes)))
            vector = await run_in_threadpool(store.encode_query, *samples)
            encoder_id = store.encoder_id
        encoded = time.perf_counter()
        hits = await run_in_threadpool(store.search, vector, k, filters, encoder_id)
        searched = time.perf_counter()
        answer: Dict[str, Any] = {"k": k, "filters": filters, "calls": 0}
        if rerank:
            answer.update(await run_in_threadpool(store.rerank, hits, samples[0], samples[1], method))
            metrics.inc("proxylab_model_calls_total", answer["calls"], help="images sent to model servers")
        else:
            answer["results"] = hit_rows(hits)
        for rank, row in enumerate(answer["results"], 1):
            row["rank"] = rank
        answer["timing_ms"] = {"encode": 1e3 * (encoded - started), "search": 1e3 * (searched - encoded),
                               "total": 1e3 * (time.perf_counter() - started)}
        return answer

    return app
