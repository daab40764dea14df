"""``proxylab serve``: the model-zoo query service over HTTP (FastAPI on uvicorn)."""
from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from proxylab.commands._base import Command
from proxylab.errors import MissingDependencyError, ProxylabError
from proxylab.utils import cache_root


def shipped_index_dir() -> Path:
    from proxylab.commands.zoo import shipped_index_dir as shipped

    return shipped()


def copy_of_shipped_index(cache: Path | None = None) -> Path:
    """A writable copy of the package's zoo index (the package's own files are never written).

    Copied once into the cache; later starts reuse it, so registrations survive restarts. Delete the folder to
    start again from the shipped zoo.
    """
    source = shipped_index_dir()
    if not source.is_dir() or not any(source.iterdir()):
        raise ProxylabError(f"this installation ships no zoo index (expected at {source}); serve your own with "
                            "--index DIR (`proxylab zoo build` makes one; a new DIR starts an empty zoo)")
    target = (cache or cache_root()) / "zoo_index"
    if not target.is_dir():
        target.parent.mkdir(parents=True, exist_ok=True)
        # copy beside the target and rename: two first starts at once never see half a copy
        tmp = _copy_beside(source, target.parent)
        try:
            os.replace(tmp, target)
        except OSError:  # another start won the race; its copy is as good as ours
            shutil.rmtree(tmp, ignore_errors=True)
    _check_copy_matches(source, target)
    return target


def _index_facts(folder: Path, immutable: bool) -> dict:
    """dim, encoder_id (None when not recorded), model names; dim -1 when unreadable.

    immutable=True for the package's own index: a read-only open of a WAL database would still create -wal/-shm
    files beside it. The user's cache copy is read normally, so models still in its write-ahead log (a server
    killed before a checkpoint) are seen."""
    import sqlite3

    from proxylab.retrieval.index import DB_NAME

    facts: dict = {"dim": -1, "encoder_id": None, "names": set()}
    uri = f"file:{folder / DB_NAME}?immutable=1" if immutable else f"file:{folder / DB_NAME}?mode=rw"
    conn = sqlite3.connect(uri, uri=True)
    try:
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        facts["dim"] = int(meta["dim"])
        facts["encoder_id"] = meta.get("encoder_id")
        facts["names"] = {name for (name,) in conn.execute("SELECT name FROM models")}
    except (sqlite3.Error, KeyError, TypeError, ValueError):
        facts["dim"] = -1  # unreadable: let the index's own open report what is wrong
    finally:
        conn.close()
    return facts


def _check_copy_matches(source: Path, target: Path) -> None:
    """A copy made by an older proxylab holds vectors of older encoders: refuse it at start, never delete it
    silently (it may hold the user's own registrations).

    Older encoders show either as another dimension or, with the same dimension (retrained encoders), as a copy
    recording no or another encoder id while the shipped index records one: the dimension alone would let old
    and new vectors mix. A copy that holds nothing but shipped models (no registrations of the user) is only a
    stale cache: it is replaced by a fresh copy, and the start says so."""
    have, want = _index_facts(target, immutable=False), _index_facts(source, immutable=True)
    if have["dim"] > 0 and want["dim"] > 0 and have["dim"] != want["dim"]:
        raise ProxylabError(f"the zoo index copy at {target} holds {have['dim']}-d vectors from an older proxylab, "
                            f"but the shipped encoders make {want['dim']}-d ones: move or delete that folder to start "
                            "again from the shipped zoo (models you registered there would have to be registered "
                            "again), or serve it with the encoders it was built with (--index DIR --encoders FILE)")
    if have["dim"] < 0 or want["dim"] < 0 or want["encoder_id"] is None or have["encoder_id"] == want["encoder_id"]:
        return
    if not have["names"]:
        return  # an empty copy holds no vectors to mix up
    mine = sorted(have["names"] - want["names"])
    made_by = f"encoders {have['encoder_id']}" if have["encoder_id"] else "unrecorded (older) encoders"
    if not mine:
        kept = _replace_copy(source, target)
        print(f"proxylab serve: the zoo index copy at {target} held vectors of {made_by} and no registrations of "
              f"yours; replaced it with a fresh copy of the shipped zoo (encoders {want['encoder_id']}); the old "
              f"copy is kept at {kept} (delete it when you no longer need it)", file=sys.stderr)
        return
    raise ProxylabError(f"the zoo index copy at {target} holds vectors of {made_by}, but the shipped zoo and encoders "
                        f"are {want['encoder_id']}: their vectors are not comparable. It holds {len(mine)} models "
                        f"you registered (e.g. '{mine[0]}'), so it is kept: move or delete that folder to start "
                        "again from the shipped zoo (register those models again there), or serve it with the "
                        "encoders it was built with (--index DIR --encoders FILE)")


def _replace_copy(source: Path, target: Path) -> Path:
    """Swap a stale copy for a fresh one and return where the old one now lies (kept, never deleted).

    Holds the copy's service lock throughout: a server still running on it is refused, not moved from under.
    A swap that fails half way puts the old copy back and says so."""
    from proxylab.service.store import locked_directory

    with locked_directory(target):  # ProxylabError when another service serves this copy
        fresh = _copy_beside(source, target.parent)
        kept = target.parent / f"zoo_index.stale-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        os.replace(target, kept)
        try:
            os.replace(fresh, target)
        except OSError as exc:
            os.replace(kept, target)  # back as it was
            shutil.rmtree(fresh, ignore_errors=True)
            raise ProxylabError(f"could not replace the stale zoo index copy at {target} ({exc}); it is unchanged: "
                                "move or delete it by hand") from None
    return kept


def _copy_beside(source: Path, parent: Path) -> Path:
    """A copy of ``source`` in a fresh hidden folder of ``parent``, ready to be renamed into place."""
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=".zoo_index."))
    shutil.copytree(source, tmp, dirs_exist_ok=True)
    return tmp


def encoders_factory(encoders_file, extractor_file):
    """None (the shipped encoders) or a loader for the given files, run when the service first needs them."""
    if extractor_file and not encoders_file:
        raise ProxylabError("--extractor goes with --encoders (the shipped encoders come with the shipped extractor)")
    if not encoders_file:
        return None
    for path in (encoders_file, extractor_file):
        if path and not Path(path).is_file():
            raise ProxylabError(f"'{path}' does not exist; give a file saved by Encoders.save / FeatureExtractor.save")

    def load():
        from proxylab.retrieval.encoders import Encoders
        from proxylab.retrieval.features import FeatureExtractor

        extractor = FeatureExtractor.load(extractor_file) if extractor_file else None
        return Encoders.load(encoders_file, extractor=extractor)

    return load


def _warm(store) -> None:
    try:
        store.encoders()
    except ProxylabError:
        pass


def _check_port_free(host: str, port: int) -> None:
    """Bind and release host:port the way uvicorn will, so a port in use is one clear line and exit 2 (uvicorn
    would log its own error and exit 3). Called after build_app, which has checked the port's range."""
    import errno
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ProxylabError(f"--host {host!r} is not an address this machine can bind ({e})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:  # as asyncio's server (uvicorn) binds it: IPv6 only
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            sock.bind(address)
        except OSError as e:
            why = ("another server holds it; stop it or pick another --port" if e.errno == errno.EADDRINUSE else
                   "check --host and --port (ports below 1024 need privileges)")
            raise ProxylabError(f"cannot listen on {host}:{port} ({e.strerror or e}): {why}") from None


class Serve(Command):
    help = "run the model-zoo query service (HTTP)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--index", help="index directory to serve (created empty if it holds none); default: "
                                            "a copy of the shipped zoo index in $PROXYLAB_CACHE or ~/.cache/proxylab")
        parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
        parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
        parser.add_argument("--tokens", help="token file: one 'TOKEN [read|write]' per line (default: "
                                             "$PROXYLAB_TOKENS); writes need a write token")
        parser.add_argument("--private", action="store_true", help="reads need a token too (read or write scope)")
        parser.add_argument("--max-body-mb", type=float, default=32.0, help="largest request body in MiB (413 above)")
        parser.add_argument("--fetch-seconds", type=float, default=30.0,
                            help="time the service may wait on users' model servers per request, all calls together "
                                 "(URL registration, re-ranking; default 30)")
        parser.add_argument("--fetch-max-mb", type=float, default=8.0,
                            help="largest answer read from a user's model server, in MiB (default 8)")
        parser.add_argument("--encoders", help="encoder weights to encode signatures and queries with (default: the "
                                               "shipped ones); must be the ones the index's vectors were made with")
        parser.add_argument("--extractor", help="feature extractor weights for --encoders (default: the shipped one)")
        parser.add_argument("--dim", type=int, help="vector dimension of a NEW index (default: the encoders')")
        parser.add_argument("--kind", default="flat", help="FAISS index kind of a NEW index: flat, hnsw or ivf")
        parser.add_argument("--search-threads", type=int, default=1,
                            help="FAISS threads per search (default 1: concurrency comes from parallel requests)")
        parser.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))

    def build_app(self, args: argparse.Namespace):
        import importlib.util

        # python-multipart's module was renamed from multipart to python_multipart; either serves uploads
        for package, modules in (("fastapi", ["fastapi"]), ("uvicorn", ["uvicorn"]),
                                 ("python-multipart", ["python_multipart", "multipart"])):
            if all(importlib.util.find_spec(m) is None for m in modules):
                raise MissingDependencyError(package, "pip install 'proxylab[service]'", "proxylab serve")
        from proxylab.service.app import create_app
        from proxylab.service.auth import load_tokens

        if not 0 <= args.port <= 65535:
            raise ProxylabError(f"--port must lie in 0..65535, got {args.port}")
        from proxylab.service.app import MAX_BODY_BYTES
        from proxylab.service.fetch import MAX_FETCH_BYTES, MAX_FETCH_SECONDS

        # finite and capped here, so inf or 1e300 is one clear line, not an OverflowError at int() or a
        # watchdog timer that dies in its thread
        caps = {"max_body_mb": MAX_BODY_BYTES / (1 << 20), "fetch_seconds": MAX_FETCH_SECONDS,
                "fetch_max_mb": MAX_FETCH_BYTES / (1 << 20)}
        for flag, cap in caps.items():
            value = getattr(args, flag)
            if not (math.isfinite(value) and 0 < value <= cap):  # NaN fails too
                raise ProxylabError(f"--{flag.replace('_', '-')} must be positive and at most {cap:g}, got {value}")
        index = Path(args.index) if args.index else copy_of_shipped_index()
        tokens = load_tokens(args.tokens)
        app = create_app(index, tokens=tokens, open_reads=not args.private,
                         max_body_bytes=int(args.max_body_mb * (1 << 20)), dim=args.dim, kind=args.kind,
                         fetch_seconds=args.fetch_seconds, fetch_max_bytes=int(args.fetch_max_mb * (1 << 20)),
                         encoders=encoders_factory(args.encoders, args.extractor), search_threads=args.search_threads)
        if args.encoders:
            try:  # encoders named explicitly: a bad file stops the start, not the first query hours later
                app.state.store.encoders()
            except ProxylabError:
                app.state.store.close()
                raise
        elif not args.index:
            # the shipped zoo goes with the shipped encoders: load them while uvicorn starts, so the first
            # sample query does not pay seconds of torch import (a failure is kept and reported as 503 later)
            import threading

            threading.Thread(target=_warm, args=(app.state.store,), daemon=True).start()
        writers = sum(1 for s in tokens.values() if s == "write")
        print(f"proxylab serve: index {index} ({len(app.state.store)} models, dim {app.state.store.index.dim}); "
              f"{writers} write / {len(tokens) - writers} read tokens; reads "
              f"{'need a token' if args.private else 'open'}; http://{args.host}:{args.port}/docs", file=sys.stderr)
        if not writers:
            print("proxylab serve: no write tokens configured: every registration and deletion will get 401",
                  file=sys.stderr)
        return app

    def run(self, args: argparse.Namespace) -> Any:
        app = self.build_app(args)  # every check of the arguments and the index first
        import uvicorn

        try:
            _check_port_free(args.host, args.port)
            uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, workers=1,
                        timeout_graceful_shutdown=10)
        finally:
            # uvicorn runs the lifespan shutdown (which saves and unlocks) on a clean stop; this covers a
            # failed start such as a port in use, where the lifespan never ran
            app.state.store.close()
        return None
