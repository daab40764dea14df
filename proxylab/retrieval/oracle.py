"""White-box ground truth for retrieval: how good is zoo model m for query q?

Per (model, query) pair:
- ``probe_acc``: accuracy of a linear probe (seeded multinomial logistic regression on standardised
  penultimate features of the model) fit on the query's few-shot support images and scored on the query
  task's held-out scoring images (disjoint from every support; ``Task.query``);
- ``same_task``: 1 when the model was trained on the query's task (task identification), else 0.

This reads weights and features, so it is an ORACLE: only encoder training and evaluation may use it; the
retrieval method itself sees models as black boxes. Results are cached per model in
``zoo_dir/oracle/models/<model name>.csv`` (atomic writes; a rerun computes only missing (model, query)
pairs), and gathered into ``zoo_dir/oracle/oracle.csv``. A cached row counts only for the weights it was
computed on (``weights_sha256``): a model retrained under the same name is recomputed, never read stale.
"""
from __future__ import annotations

import csv
import functools
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

import numpy as np

from proxylab.errors import ProxylabError, require
from proxylab.retrieval.blackbox import penultimate_features
from proxylab.retrieval.tasks import QuerySpec, default_queries
from proxylab.utils import PathLike, atomic_write_text, rows_to_csv, torch_threads

ORACLE_FIELDS = ("model_id", "model", "model_task", "query", "query_task", "query_kind", "split", "n_per_class",
                 "seed", "probe_acc", "same_task", "weights_sha256")
PROBE_C = 1.0  # inverse L2 strength: features are standardised, so one value suits every model
PROBE_MAX_ITER = 1000


def probe_accuracy(train_f: np.ndarray, train_y: np.ndarray, test_f: np.ndarray, test_y: np.ndarray,
                   seed: int = 0) -> float:
    """Accuracy on (test_f, test_y) of a logistic-regression probe fit on (train_f, train_y).

    Features are standardised with the support's statistics (constant features get scale 1), so the probe's
    regularisation means the same for every model whatever its feature scale."""
    from sklearn.linear_model import LogisticRegression

    train_y, test_y = np.asarray(train_y), np.asarray(test_y)
    require(len(np.unique(train_y)) >= 2, "a probe needs support images of at least 2 classes")
    mean = train_f.mean(0)
    std = train_f.std(0)
    std[std < 1e-8] = 1.0
    a, b = (train_f - mean) / std, (test_f - mean) / std
    clf = LogisticRegression(C=PROBE_C, max_iter=PROBE_MAX_ITER, random_state=int(seed))
    with warnings.catch_warnings():
        # A few-shot support is often linearly separable: lbfgs stops at max_iter; the probe is still usable.
        warnings.simplefilter("ignore")
        clf.fit(a, train_y)
    return float((clf.predict(b) == test_y).mean())


@functools.lru_cache(maxsize=256)
def _query_data(spec: QuerySpec):
    return spec.load()


def oracle_rows(module, model_row: Dict[str, Any], queries: Sequence[QuerySpec],
                weights_sha256: str = "") -> List[Dict[str, Any]]:
    """Ground-truth rows of one model (given as a white-box module) for each query."""
    rows = []
    eval_cache: Dict[tuple, np.ndarray] = {}  # one query task's scoring set is shared by its shot/seed variants
    for q in queries:
        (sx, sy), (ex, ey) = _query_data(q)
        key = (q.task, q.split, q.n_eval_per_class)
        if key not in eval_cache:
            eval_cache[key] = penultimate_features(module, ex)
        acc = probe_accuracy(penultimate_features(module, sx), sy.numpy(), eval_cache[key], ey.numpy(), seed=q.seed)
        rows.append({"model_id": int(model_row["id"]), "model": model_row["name"], "model_task": model_row["task"],
                     "query": q.key, "query_task": q.task, "query_kind": q.kind, "split": q.split,
                     "n_per_class": q.n_per_class, "seed": q.seed, "probe_acc": round(acc, 6),
                     "same_task": int(model_row["task"] == q.task), "weights_sha256": weights_sha256})
    return rows


def _read_rows(path: Path) -> List[Dict[str, Any]]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k in ("model_id", "n_per_class", "seed", "same_task"):
            r[k] = int(r[k])
        r["probe_acc"] = float(r["probe_acc"])
    return rows


def _write_rows(path: Path, rows: Iterable[Dict[str, Any]]) -> None:
    atomic_write_text(path, rows_to_csv(rows, ORACLE_FIELDS))


def compute_oracle(zoo_dir: PathLike, queries: Optional[Sequence[QuerySpec]] = None,
                   model_ids: Optional[Sequence[int]] = None, progress: bool = True) -> List[Dict[str, Any]]:
    """Ground truth for every (model, query) pair; cached and resumable. Returns the rows of the asked pairs.

    `queries` default: ``default_queries()`` (every same-task and new task, 5/10/20 shots, test split)."""
    from proxylab.retrieval.zoo import load_zoo

    zoo = load_zoo(zoo_dir)
    queries = list(default_queries() if queries is None else queries)
    require(bool(queries), "no queries given")
    wanted_ids = zoo.ids if model_ids is None else [zoo.get(i)["id"] for i in model_ids]
    cache_dir = Path(zoo_dir) / "oracle" / "models"
    cache_dir.mkdir(parents=True, exist_ok=True)
    from threadpoolctl import threadpool_limits

    # One BLAS thread: on a busy machine sklearn's default thread pool made each tiny probe fit ~30x slower
    # (0.14 s vs 3 s for 200 x 24 features, measured at load 12 on 2 cores).
    out: List[Dict[str, Any]] = []
    changed = False
    start = time.perf_counter()
    with torch_threads(1), threadpool_limits(1):
        for n, model_id in enumerate(wanted_ids, 1):
            row = zoo.get(model_id)
            sha = zoo.config(model_id).get("weights_sha256", "")
            path = cache_dir / f"{row['name']}.csv"
            rows = _read_rows(path) if path.exists() else []
            have = {r["query"]: r for r in rows if r.get("weights_sha256") == sha}
            stale = len(have) < len(rows)  # rows of other (or unrecorded) weights: dropped on this rewrite
            missing = [q for q in queries if q.key not in have]
            if missing or stale:
                changed = True
                for r in oracle_rows(zoo.module(model_id), row, missing, sha):
                    have[r["query"]] = r
                _write_rows(path, sorted(have.values(), key=lambda r: r["query"]))
                if progress:
                    print(f"oracle [{n}/{len(wanted_ids)}] {row['name']}: {len(missing)} queries "
                          f"({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
            out.extend(have[q.key] for q in queries)
    if changed or not (Path(zoo_dir) / "oracle" / "oracle.csv").is_file():
        gather_oracle(zoo_dir)  # re-reads every per-model file: skipped when nothing was added
    return out


def gather_oracle(zoo_dir: PathLike) -> Path:
    """zoo_dir/oracle/oracle.csv: every cached row of every zoo model, sorted by (model_id, query), that was
    computed on the model's current weights (a stale file of a retrained model, or of a model no longer in
    the zoo, contributes nothing until compute_oracle refreshes it)."""
    from proxylab.retrieval.zoo import load_zoo

    zoo = load_zoo(zoo_dir)
    current = {r["name"]: zoo.config(r["id"]).get("weights_sha256", "") for r in zoo.manifest}
    folder = Path(zoo_dir) / "oracle"
    rows: List[Dict[str, Any]] = []
    for path in sorted((folder / "models").glob("*.csv")):
        rows.extend(r for r in _read_rows(path) if current.get(r["model"]) == r.get("weights_sha256"))
    rows.sort(key=lambda r: (r["model_id"], r["query"]))
    _write_rows(folder / "oracle.csv", rows)
    return folder / "oracle.csv"


def load_oracle(zoo_dir: PathLike) -> List[Dict[str, Any]]:
    """The gathered ground truth (zoo_dir/oracle/oracle.csv) as a list of rows."""
    path = Path(zoo_dir) / "oracle" / "oracle.csv"
    if not path.is_file():
        raise ProxylabError(f"no oracle at '{path}': compute it with proxylab.retrieval.oracle.compute_oracle"
                            f"('{zoo_dir}') or `python -m proxylab.retrieval.oracle {zoo_dir}`")
    return _read_rows(path)


# ---------------------------------------------------------------------------------------------- calibration
CALIB_FILE = "calib_accuracy.csv"  # in zoo_dir/oracle/
CALIB_FIELDS = ("model_id", "model", "task", "weights_sha256", "split", "max_images", "images", "calib_acc")
CALIB_MAX_IMAGES = 1000  # per task; every source task's calib split has 100-1000 images, so this takes all


def calibration_accuracy(zoo_dir: PathLike, model_ids: Optional[Sequence[int]] = None, progress: bool = True,
                         max_images: int = CALIB_MAX_IMAGES) -> Dict[int, float]:
    """{model id: accuracy on its source task's CALIBRATION split}; cached in zoo_dir/oracle/calib_accuracy.csv.

    No model trains on the calib split (zoo models train on a prefix of the train split) and no benchmark query
    uses it (supports and scoring sets come from the test split), so this accuracy can steer encoder training
    without leaking evaluation images. It is not untouched, though: validation queries are drawn from it (session
    5), and the zoo's quality gate (``zoo.GATE_RATIO``, session 6) trains a model on until its accuracy here
    passes, so for a retrained model this figure is slightly optimistic. Oracle-side: it runs the zoo's
    own models on the task's labelled images. A cached row counts only for the same weights (sha256) and image
    count; stale rows are recomputed.
    """
    from proxylab.retrieval.zoo import calib_data, load_zoo

    require(isinstance(max_images, int) and max_images >= 1, f"max_images must be a positive integer, got {max_images!r}")
    zoo = load_zoo(zoo_dir)
    wanted = zoo.ids if model_ids is None else [zoo.get(i)["id"] for i in model_ids]
    path = Path(zoo_dir) / "oracle" / CALIB_FILE
    cached: Dict[int, Dict[str, Any]] = {}
    if path.is_file():
        with open(path, newline="") as f:
            for r in csv.DictReader(f):
                cached[int(r["model_id"])] = r
    out: Dict[int, float] = {}
    todo: Dict[str, List[int]] = {}
    shas: Dict[int, str] = {}
    for i in wanted:
        row, sha = zoo.get(i), zoo.config(i).get("weights_sha256", "")
        shas[int(i)] = sha  # config.json read once per model
        c = cached.get(int(i))
        if (c is not None and c["weights_sha256"] == sha and c["task"] == row["task"] and c["split"] == "calib"
                and c.get("max_images") == str(max_images)):
            out[int(i)] = float(c["calib_acc"])
        else:
            todo.setdefault(row["task"], []).append(int(i))
    if todo:
        start = time.perf_counter()
        with torch_threads(1):
            for task_name, ids in sorted(todo.items()):
                x, y = calib_data(task_name, max_images)
                for i in ids:
                    row = zoo.get(i)
                    # argmax of the probabilities: exactly what the black box hands out, counted as calls
                    probs = zoo.blackbox(i).predict_proba(x)
                    acc = float((probs.argmax(1) == y.numpy()).mean())
                    out[i] = acc
                    cached[i] = {"model_id": i, "model": row["name"], "task": task_name,
                                 "weights_sha256": shas[i], "split": "calib",
                                 "max_images": str(max_images), "images": int(len(y)), "calib_acc": round(acc, 6)}
                if progress:
                    print(f"calibration accuracy: {task_name} {len(ids)} models, {len(y)} images "
                          f"({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
        atomic_write_text(path, rows_to_csv([cached[i] for i in sorted(cached)], CALIB_FIELDS))
    return {i: out[int(i)] for i in wanted}


def main(argv: Optional[Sequence[str]] = None) -> None:
    """python -m proxylab.retrieval.oracle ZOO_DIR [--shots 5,10,20] [--seeds 0] [--split test]"""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("zoo")
    parser.add_argument("--shots", default="5,10,20")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--split", default="test")
    parser.add_argument("--kind", default="all", help="all | same | new | subset")
    args = parser.parse_args(argv)
    queries = default_queries(args.kind, [int(s) for s in args.shots.split(",")],
                              [int(s) for s in args.seeds.split(",")], args.split)
    rows = compute_oracle(args.zoo, queries)
    print(f"{len(rows)} rows -> {Path(args.zoo) / 'oracle' / 'oracle.csv'}")


if __name__ == "__main__":
    main()
