"""`proxylab zoo build | signature | add | remove | list | query | eval | serve-model`: thin wrappers over
proxylab.retrieval (zoo, signature, encoders, index, rerank, evaluate)."""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any, Dict, List, Optional

from proxylab.commands._base import Command, parse_int_list
from proxylab.errors import ProxylabError

def _rerank_methods():
    from proxylab.retrieval.rerank import FEATURE_RERANKERS, RERANKERS

    return tuple(RERANKERS.names() + FEATURE_RERANKERS.names())  # logme: features (gray-box; zoo models are local)


def shipped_index_dir() -> Path:
    import proxylab.retrieval

    return Path(proxylab.retrieval.__file__).parent / "shipped" / "zoo_index"


def _add_encoder_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--encoders", help="encoder file (Encoders.save); default: the shipped encoders")
    parser.add_argument("--extractor", help="feature extractor file the --encoders were trained on "
                                            "(FeatureExtractor.save); default: the shipped extractor")


def _extractor(path: Optional[str]):
    """None (the shipped extractor, loaded where needed) or the extractor saved at `path`."""
    if path is None:
        return None
    from proxylab.retrieval.features import FeatureExtractor

    if not Path(path).is_file():
        raise ProxylabError(f"extractor file '{path}' does not exist; leave --extractor out to use the shipped one")
    return FeatureExtractor.load(path)


def _encoders(path: Optional[str], extractor_path: Optional[str] = None):
    from proxylab.retrieval.encoders import Encoders

    if path is None:
        if extractor_path:
            raise ProxylabError("--extractor goes with --encoders (the shipped encoders come with the shipped extractor)")
        return Encoders.default()
    if not Path(path).is_file():
        raise ProxylabError(f"encoder file '{path}' does not exist; leave --encoders out to use the shipped encoders")
    return Encoders.load(path, extractor=_extractor(extractor_path))


def _open_index(path: Optional[str], encoder_id: Optional[str] = None):
    """An existing index folder, or (no path) the shipped zoo index opened read-only so the package is never
    written. A user's index opens normally: SQLite's read-only "immutable" mode would not see additions still
    in its write-ahead log (a running service's, say). `encoder_id`: the encoders about to be used with it
    (an index made by other encoders is refused)."""
    from proxylab.retrieval.index import ModelIndex

    if path is None:
        folder = shipped_index_dir()
        if not folder.is_dir():
            raise ProxylabError(f"this installation ships no zoo index (expected at {folder}); give --index DIR "
                                "(`proxylab zoo build --out ZOO` makes ZOO/index)")
        return ModelIndex.open(folder, read_only=True, encoder_id=encoder_id)
    return ModelIndex.open(path, encoder_id=encoder_id)


def _filters(args: argparse.Namespace) -> Optional[Dict[str, Any]]:
    """--task/--family/--arch (comma lists) and --max-params/--min-params -> ModelIndex filters."""
    out: Dict[str, Any] = {}
    for key in ("task", "family", "arch"):
        value = getattr(args, key, None)
        if value:
            names = [v.strip() for v in value.split(",") if v.strip()]
            if not names:
                raise ProxylabError(f"--{key} is empty: give one name or a comma-separated list")
            out[key] = names[0] if (len(names) == 1 and key == "task") else names
    if getattr(args, "max_params", None) is not None:
        out["params_max"] = int(args.max_params)
    if getattr(args, "min_params", None) is not None:
        out["params_min"] = int(args.min_params)
    if (out.get("params_min") or 0) > out.get("params_max", float("inf")):
        raise ProxylabError(f"--min-params {out['params_min']} is above --max-params {out['params_max']}: nothing can match")
    return out or None


def _add_filter_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", help="only models of this source task (e.g. mnist5k-lo)")
    parser.add_argument("--family", help="only these task families, comma separated (mnist5k, animal, digits, shapes)")
    parser.add_argument("--arch", help="only these architectures, comma separated (resnet20, resnet18, mobilenetv2, vgg_small)")
    parser.add_argument("--max-params", type=int, help="only models with at most this many parameters")
    parser.add_argument("--min-params", type=int, help="only models with at least this many parameters")


def load_samples(path: str):
    """A query file: npz with `images` float32 [N, 3, 32, 32] in [0, 1] and `labels` [N] -> (images tensor,
    labels int64 0..C-1)."""
    from proxylab.retrieval.canonical import check_images
    from proxylab.retrieval.encoders import check_query_labels
    from proxylab.utils import read_npz

    p = Path(path)
    if not p.is_file():
        raise ProxylabError(f"samples file '{path}' does not exist; save one with numpy.savez(path, images=..., labels=...)")
    arrays = read_npz(p, f"samples file '{path}'")
    missing = [k for k in ("images", "labels") if k not in arrays]
    if missing:
        raise ProxylabError(f"samples file '{path}' lacks {' and '.join(missing)} (it holds {', '.join(arrays) or 'nothing'}): "
                            "it needs images [N, 3, 32, 32] float32 in [0, 1] and labels [N] int")
    images = check_images(arrays["images"], what=f"images in '{path}'")
    # Integer or string class labels, relabelled 0..C-1 (the estimators and encoders take that form).
    return images, check_query_labels(arrays["labels"], int(images.shape[0]))


class ZooBuild(Command):
    help = "train a model zoo, capture signatures, build its index"
    interrupted = "interrupted; finished models are saved: rerun the same command to continue"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--out", required=True, help="zoo folder (rerun with the same folder to resume or grow it)")
        parser.add_argument("--n-models", type=int, default=200, help="number of models (default 200)")
        parser.add_argument("--seed", type=int, default=0, help="zoo seed: plans and trains every model (default 0)")
        parser.add_argument("--scheduler", help="Dask scheduler address (tcp://host:8786): train on that cluster")
        parser.add_argument("--no-signatures", action="store_true", help="train only (no signatures, no index)")
        parser.add_argument("--no-index", action="store_true", help="do not build zoo_dir/index")
        parser.add_argument("--no-progress", action="store_true", help="no per-model progress lines")
        parser.add_argument("--max-train-images", type=int, help="cap every model's training set (quick demo zoos)")
        from proxylab.retrieval.zoo import GATE_MAX_ROUNDS, GATE_RATIO

        parser.add_argument("--gate-ratio", type=float, default=GATE_RATIO,
                            help="quality gate: a model below this multiple of chance accuracy on its task's calib "
                                 f"split trains another round of its epochs (default {GATE_RATIO}; 0 = no gate)")
        parser.add_argument("--gate-rounds", type=int, default=GATE_MAX_ROUNDS,
                            help=f"most training rounds a model gets from the gate (default {GATE_MAX_ROUNDS})")

    def run(self, args: argparse.Namespace) -> Dict[str, Any]:
        from proxylab.retrieval.zoo import build_zoo, load_zoo

        out = build_zoo(args.out, n_models=args.n_models, seed=args.seed, scheduler=args.scheduler,
                        progress=not args.no_progress, signatures=not args.no_signatures,
                        index=not (args.no_index or args.no_signatures), max_train_images=args.max_train_images,
                        gate_ratio=args.gate_ratio, gate_rounds=args.gate_rounds)
        zoo = load_zoo(out)
        signed = sum(1 for r in zoo.manifest if (out / "signatures" / f"{r['name']}.npz").exists())
        return {"out": str(out), "models": len(zoo), "signatures": signed,
                "gate_failed": sum(1 for r in zoo.manifest if r["gate_passed"] is False),
                "index": str(out / "index") if (out / "index").is_dir() else "(none)",
                "manifest": str(out / "manifest.csv")}


class ZooSignature(Command):
    help = "capture a black-box model's knowledge signature"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--model", help="path/to/file.py:factory (with --weights), a checkpoint folder, or with "
                                            "--zoo a zoo model id or name")
        parser.add_argument("--weights", help="state_dict file for a file.py:factory model")
        parser.add_argument("--zoo", help="zoo folder: --model is then one of its models")
        parser.add_argument("--url", help="a model served over HTTP (`proxylab zoo serve-model`, or your own server)")
        parser.add_argument("--out", required=True, help="signature file to write (.npz)")
        parser.add_argument("--seed", type=int, default=0, help="probe pool seed (default 0)")
        parser.add_argument("--extractor", help="feature extractor file (default: the shipped extractor)")

    def run(self, args: argparse.Namespace) -> Dict[str, Any]:
        from proxylab.retrieval.signature import capture_signature

        extractor = _extractor(args.extractor)
        model = self._model(args)
        sig = capture_signature(model, extractor=extractor, seed=args.seed)
        sig.save(args.out)
        return {"out": str(args.out), "num_classes": sig.num_classes, "anchors": int(sig.anchors.shape[0]),
                "boundary": int(sig.boundary.shape[0]), "calls": int(sig.calls), "extractor": sig.extractor}

    @staticmethod
    def _model(args: argparse.Namespace):
        sources = [s for s in ("url", "zoo") if getattr(args, s)]
        if args.url and (args.model or args.zoo or args.weights):
            raise ProxylabError("--url names the whole model: leave --model, --weights and --zoo out")
        if args.url:
            from proxylab.retrieval.blackbox import HTTPBlackBox

            return HTTPBlackBox(args.url)
        if not args.model:
            raise ProxylabError("say which model: --model file.py:factory [--weights W], --zoo DIR --model ID, or --url URL")
        if "zoo" in sources:
            if args.weights:
                raise ProxylabError("--weights goes with --model file.py:factory, not with --zoo")
            from proxylab.retrieval.zoo import load_zoo

            zoo = load_zoo(args.zoo)
            return zoo.blackbox(zoo.find(args.model)["id"])
        from proxylab.retrieval.blackbox import CheckpointBlackBox

        return CheckpointBlackBox(args.model, weights=args.weights)


class ZooAdd(Command):
    help = "add a model (signature file) to a zoo index"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--index", required=True, help="index folder (created when it holds no index yet)")
        parser.add_argument("--signature", required=True, help="signature file from `proxylab zoo signature`")
        parser.add_argument("--name", required=True, help="unique model name")
        parser.add_argument("--task", default="", help="what the model was trained for (free text)")
        parser.add_argument("--family", default="", help="task family (free text, used by --family filters)")
        parser.add_argument("--arch", default="", help="architecture (used by --arch filters)")
        parser.add_argument("--params", type=int, default=0, help="parameter count (used by --max-params)")
        parser.add_argument("--id", type=int, help="model id (default: the next free one)")
        _add_encoder_args(parser)

    def run(self, args: argparse.Namespace) -> Dict[str, Any]:
        from proxylab.retrieval.index import DB_NAME, ModelIndex
        from proxylab.retrieval.signature import Signature

        if args.params < 0:
            raise ProxylabError(f"--params must be >= 0, got {args.params}")
        sig = Signature.load(args.signature)
        enc = _encoders(args.encoders, args.extractor)
        vector = enc.encode_signature(sig)  # every check happens before the index is touched
        folder = Path(args.index)
        if (folder / "zoo.json").is_file() and not (folder / DB_NAME).is_file():
            raise ProxylabError(f"'{folder}' is a zoo folder, not an index: add to its index with --index "
                                f"{folder / 'index'}")
        encoder_id = enc.id
        from proxylab.retrieval.legacy import open_proven

        # made before encoder ids were recorded: kept only if its vectors are these encoders' (an index inside a
        # zoo folder, ZOO/index, has the models' signatures beside it)
        idx = (open_proven(folder, folder.parent / "signatures", enc) if (folder / DB_NAME).is_file()
               else ModelIndex.create(folder, enc.dim, encoder_id=encoder_id))
        if idx.dim != enc.dim:
            idx.close()
            raise ProxylabError(f"index '{folder}' holds {idx.dim}-d vectors but the encoders make {enc.dim}-d ones: "
                                "use the encoders the index was built with (--encoders)")
        metadata = {"name": args.name, "task": args.task, "family": args.family, "arch": args.arch,
                    "params": int(args.params), "num_classes": int(sig.num_classes)}
        try:
            model_id = idx.add(vector, metadata, model_id=args.id, encoder_id=encoder_id)
            idx.save()
        finally:
            idx.close()
        return {"id": model_id, "name": args.name, "index": str(folder), "models": len(idx)}


class ZooRemove(Command):
    help = "remove a model from a zoo index by id"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--index", required=True, help="index folder")
        parser.add_argument("--id", type=int, required=True, help="model id (see `proxylab zoo list`)")

    def run(self, args: argparse.Namespace) -> Dict[str, Any]:
        idx = _open_index(args.index)
        try:
            name = idx.get(args.id)["name"]
            idx.remove(args.id)
            idx.save()
            return {"removed": args.id, "name": name, "models": len(idx)}
        finally:
            idx.close()


_LIST_COLUMNS = ("id", "name", "task", "family", "arch", "params", "num_classes", "test_acc")


class ZooList(Command):
    help = "list the models of a zoo index"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--index", help="index folder (default: the shipped zoo index)")
        parser.add_argument("--zoo", help="list a zoo folder's manifest instead of an index")
        parser.add_argument("--limit", type=int, help="at most this many rows")
        _add_filter_args(parser)

    def run(self, args: argparse.Namespace) -> List[Dict[str, Any]]:
        if args.limit is not None and args.limit < 1:
            raise ProxylabError(f"--limit must be >= 1, got {args.limit}")
        filters = _filters(args)
        if args.zoo:
            if args.index:
                raise ProxylabError("give --zoo or --index, not both")
            from proxylab.retrieval.index import compile_filters
            from proxylab.retrieval.zoo import load_zoo

            keep = compile_filters(filters)
            rows = [r for r in load_zoo(args.zoo).manifest if keep is None or keep(r)]
            return [{k: r.get(k, "") for k in _LIST_COLUMNS} for r in rows[:args.limit]]
        idx = _open_index(args.index)
        try:
            rows = idx.list(filters=filters, limit=args.limit)
        finally:
            idx.close()
        return [{k: r.get(k, "") for k in _LIST_COLUMNS} for r in rows]


class ZooQuery(Command):
    help = "retrieve the models that suit a few labelled samples"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--samples", required=True,
                            help=".npz with images [N,3,32,32] float32 in [0,1] and labels [N] int (>= 2 classes)")
        parser.add_argument("--index", help="index folder (default: the shipped zoo index)")
        parser.add_argument("--k", type=int, default=10, help="models to return (default 10)")
        parser.add_argument("--rerank", choices=_rerank_methods(),
                            help="re-score the top k by running them on the samples (needs --zoo; k calls per image): "
                                 "leep or nce on their probabilities (black-box), logme on their classifier-input "
                                 "features (gray-box)")
        parser.add_argument("--zoo", help="zoo folder holding the indexed models (for --rerank)")
        parser.add_argument("--server", metavar="URL",
                            help="ask a running `proxylab serve` instead of a local index (re-ranking happens there)")
        parser.add_argument("--token", help="bearer token for --server (default: $PROXYLAB_TOKEN)")
        _add_filter_args(parser)
        _add_encoder_args(parser)

    def run(self, args: argparse.Namespace) -> Dict[str, Any]:
        import time

        if args.k < 1:
            raise ProxylabError(f"--k must be >= 1, got {args.k}")
        if args.server:
            return _query_server(args)
        if args.rerank and not args.zoo:
            raise ProxylabError("--rerank runs the retrieved models: give --zoo DIR, the zoo they come from")
        if args.zoo and not args.rerank:
            raise ProxylabError(f"--zoo is only used with --rerank {'|'.join(_rerank_methods())}")
        images, labels = load_samples(args.samples)
        filters = _filters(args)
        enc = _encoders(args.encoders, args.extractor)
        encoder_id = enc.id
        idx = _open_index(args.index, encoder_id)
        try:
            if idx.dim != enc.dim:
                raise ProxylabError(f"index holds {idx.dim}-d vectors but the encoders make {enc.dim}-d ones: "
                                    "query it with the encoders it was built with (--encoders)")
            t0 = time.perf_counter()
            hits = idx.search(enc.encode_query(images, labels), k=args.k, filters=filters, encoder_id=encoder_id)
            search_ms = (time.perf_counter() - t0) * 1e3
        finally:
            idx.close()
        calls = 0
        if args.rerank and hits:
            from proxylab.retrieval.rerank import rerank
            from proxylab.retrieval.zoo import load_zoo

            zoo = load_zoo(args.zoo)

            def get_model(model_id: int):
                row = zoo.get(model_id)
                if row["name"] != idx_names[model_id]:
                    raise ProxylabError(f"index model {model_id} is '{idx_names[model_id]}' but zoo '{args.zoo}' model "
                                        f"{model_id} is '{row['name']}': give the zoo this index was built from")
                return zoo.blackbox(model_id)

            idx_names = {h.id: h.metadata.get("name") for h in hits}
            hits, calls = rerank(hits, get_model, images, labels, method=args.rerank)
        rows = []
        for rank, h in enumerate(hits, 1):
            m = h.metadata
            row = {"rank": rank, "id": h.id, "name": m.get("name", ""), "task": m.get("task", ""),
                   "arch": m.get("arch", ""), "params": m.get("params", ""), "score": round(float(h.score), 6)}
            if args.rerank:
                row["index_score"] = round(float(m.get("index_score", float("nan"))), 6)
            rows.append(row)
        if not rows:
            raise ProxylabError(_no_match(filters, f"the index at {args.index}" if args.index else "the shipped index"))
        return {"samples": int(len(labels)), "classes": int(len(set(labels.tolist()))),
                "search_ms": round(search_ms, 2), "model_calls": int(calls), "models": rows}


def _no_match(filters, where: str) -> str:
    if filters:
        return f"no model in {where} matches the filters; loosen --task/--family/--arch/--min-params/--max-params"
    return f"{where} holds no models: add some first (`proxylab zoo add`, or register them with the service)"


def _query_server(args: argparse.Namespace) -> Dict[str, Any]:
    """The same answer from a query service: the samples go to the server, which encodes and searches."""
    import os

    from proxylab.service import Client

    clashing = [f for f, v in (("--index", args.index), ("--zoo", args.zoo), ("--encoders", args.encoders),
                               ("--extractor", args.extractor)) if v]
    if clashing:
        raise ProxylabError(f"{', '.join(clashing)}: only for a local index or zoo; with --server the service uses "
                            "its own")
    if args.rerank == "logme":
        raise ProxylabError("--rerank logme needs the models' features, which the service's model servers do not "
                            "give: with --server re-rank with leep or nce (or query a local index with --zoo)")
    images, labels = load_samples(args.samples)
    token = args.token or os.environ.get("PROXYLAB_TOKEN")
    with Client(args.server, token=token) as client:
        answer = client.query(images, labels, k=args.k, filters=_filters(args) or None,
                              rerank=bool(args.rerank), method=args.rerank or "leep")
    timing = answer.get("timing_ms", {})  # encode + search, as the local search_ms (not upload or re-rank time)
    rows = []
    for r in answer["results"]:
        m = r.get("metadata", {})
        row = {"rank": r["rank"], "id": r["id"], "name": m.get("name", ""), "task": m.get("task", ""),
               "arch": m.get("arch", ""), "params": m.get("params", ""), "score": round(float(r["score"]), 6)}
        if args.rerank:  # the columns of a local re-rank: score = the estimator's, index_score beside it
            row["score"] = round(float(r["rerank_score"]), 6) if "rerank_score" in r else None
            row["index_score"] = round(float(r["score"]), 6)
            row["rerank"] = r.get("rerank", "")  # the estimator, or why the server skipped this model
        rows.append(row)
    if not rows:
        raise ProxylabError(_no_match(_filters(args), "the server's index"))
    out = {"samples": int(len(labels)), "classes": int(len(set(labels.tolist()))), "server": args.server,
           "search_ms": round(sum(float(timing.get(k, math.nan)) for k in ("encode", "search")), 2),
           "model_calls": int(answer.get("calls", 0)), "models": rows}
    if args.rerank and all(row["score"] is None for row in rows):
        reasons = sorted({str(row["rerank"]) for row in rows})
        out["note"] = f"no model was re-ranked ({'; '.join(reasons)})"
    return out


class ZooEval(Command):
    help = "evaluate retrieval on held-out query tasks"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--zoo", required=True, help="zoo folder (with signatures; ground truth cached in ZOO/oracle)")
        parser.add_argument("--kind", choices=("all", "same", "new", "subset"), default="all",
                            help="query kind: same-task (task identification), new-task (transfer), subset (a "
                                 "class subset of one source task: identification of that task) or all")
        parser.add_argument("--shots", default="5,10,20", help="labelled images per class per query (5..20)")
        parser.add_argument("--seeds", default="0", help="query sampling seeds, comma separated")
        parser.add_argument("--tasks", help="only these query tasks, comma separated (default: every task of --kind)")
        parser.add_argument("--rerank-k", type=int, default=None, help="models re-ranked by the two-stage methods")
        parser.add_argument("--all-models", action="store_true",
                            help="evaluate on every zoo model (default: only the models the shipped encoders never "
                                 "saw; use this for a zoo the encoders were not trained on)")
        parser.add_argument("--out", help="also write the summary rows to this CSV")
        parser.add_argument("--per-query", help="write every (method, query) row to this CSV")
        parser.add_argument("--plot", metavar="FILE.png", help="also draw the metrics per method and query kind (PNG)")
        _add_encoder_args(parser)

    def run(self, args: argparse.Namespace) -> List[Dict[str, Any]]:
        from proxylab.retrieval.evaluate import evaluate_zoo
        from proxylab.retrieval.tasks import default_queries

        from proxylab.retrieval.tasks import get_task

        if args.plot:
            from proxylab.plots import check_plot_path

            check_plot_path(args.plot)  # fail before minutes of evaluation, not after
        queries = default_queries(args.kind, parse_int_list(args.shots, "--shots"), parse_int_list(args.seeds, "--seeds"))
        if args.tasks:
            wanted = [get_task(t.strip()).name for t in args.tasks.split(",") if t.strip()]
            queries = [q for q in queries if q.task in wanted]
            if not queries:
                raise ProxylabError(f"--tasks {args.tasks} holds no task of --kind {args.kind}")
        kwargs: Dict[str, Any] = {}
        if args.rerank_k is not None:
            kwargs["rerank_k"] = args.rerank_k
        if args.all_models:
            from proxylab.retrieval.zoo import load_zoo

            kwargs["model_ids"] = load_zoo(args.zoo).ids
        enc = _encoders(args.encoders, args.extractor) if (args.encoders or args.extractor) else None
        summary, per_query = evaluate_zoo(args.zoo, encoders=enc, queries=queries, progress=False, **kwargs)
        for path, rows in ((args.out, summary), (args.per_query, per_query)):
            if path:
                _write_csv(path, rows)
        if args.plot:
            from proxylab.plots import metric_bars

            # top1_task is NaN for new-task queries (no source task to identify): it draws as an empty bar
            metric_bars([dict(r, method=f"{r['method']} ({r['query_kind']})") for r in summary], args.plot,
                        metrics=["top1_task", "recall_at_5", "ndcg_at_5", "weighted_tau"])
        return summary


def _write_csv(path: str, rows: List[Dict[str, Any]]) -> None:
    from proxylab.utils import atomic_write_text, rows_to_csv

    atomic_write_text(path, rows_to_csv(rows))


class ZooServeModel(Command):
    help = "serve one model's predictions over HTTP (black box)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--zoo", required=True, help="zoo folder")
        parser.add_argument("--model", required=True, help="model id or name (see manifest.csv)")
        parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
        parser.add_argument("--port", type=int, default=0, help="TCP port (default 0: any free port, printed)")

    def run(self, args: argparse.Namespace) -> Dict[str, Any]:
        import sys

        from proxylab.retrieval.model_server import serve_model
        from proxylab.retrieval.zoo import load_zoo

        if not 0 <= args.port <= 65535:
            raise ProxylabError(f"--port must be in 0..65535, got {args.port}")
        zoo = load_zoo(args.zoo)
        row = zoo.find(args.model)
        try:
            server = serve_model(zoo.blackbox(row["id"]), host=args.host, port=args.port)
        except OSError as e:
            raise ProxylabError(f"cannot serve on {args.host}:{args.port} ({e}); pick another --port") from None
        # The URL goes out before blocking, so a script can read it from the first line.
        print(f"serving {row['name']} at {server.url} (POST /predict, GET /info); Ctrl-C stops", flush=True)
        sys.stdout.flush()
        server.wait()
        return {"served": row["name"], "url": server.url}
