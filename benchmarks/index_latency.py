"""Search latency and recall of proxylab's ModelIndex: flat (exact) vs hnsw vs ivf at 10k and 100k vectors.

Data: SYNTHETIC clustered vectors, dim 128 (200 Gaussian clusters, within-cluster noise as large as the centre
spread, L2-normalised), standing in for a zoo far larger than any zoo built here; model vectors cluster by task
and family, and HNSW/IVF recall on unclustered Gaussian data would understate them. Queries: 200 fresh points
from the same distribution (not in the index).

Measured through the public API (ModelIndex in memory: validation, FAISS search and the metadata of each hit):
- build_s: add_many of all vectors (validation + SQLite insert + FAISS build, IVF training / HNSW graph);
- faiss_build_s: idx.rebuild(), the FAISS structure alone from the stored vectors;
- single_*: one idx.search(q, k=10) call per query, median and p99 over the 200 queries;
- batch_*: idx.search(Q, k=10) on 100 queries at once, per-query time, median and p99 over 10 repeats;
- *_cpu_median_ms: the same in CPU time of the calling thread (FAISS runs there on 1 thread), which the
  machine's load (other jobs preempting this one) inflates far less than wall time;
- recall_at_10: |top-10 ∩ exact top-10| / 10 (exact = numpy brute force), mean over the queries;
- rows with filter "family (10%)": a metadata filter admitting 10% of the models, applied inside the search.
FAISS runs on 1 thread (faiss.omp_set_num_threads(1)); the machine is shared, so compare rows with each other
(one run) rather than reading absolute times.

Writes benchmarks/results/index_latency.csv.  Run: nice .venv/bin/python benchmarks/index_latency.py
(about 5 minutes on a loaded 2-core machine; --sizes 10000 for a quick run)
"""
from __future__ import annotations

import argparse
import os
import time

# One thread everywhere, set before numpy/faiss load their BLAS (faiss.omp_set_num_threads does not reach it).
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"
from pathlib import Path
from typing import Dict, List

import numpy as np
from _results import write_csv

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "index_latency.csv"
DIM = 128
CLUSTERS = 200
NOISE = 1.0
K = 10
N_QUERIES = 200
BATCH = 100
BATCH_REPEATS = 10
FAMILIES = 10
KINDS = ("flat", "hnsw", "ivf")


def clustered(n: int, rng: np.random.Generator, centres: np.ndarray) -> np.ndarray:
    x = centres[rng.integers(0, len(centres), n)] + NOISE * rng.normal(size=(n, centres.shape[1]))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def exact_top_k(vectors: np.ndarray, queries: np.ndarray, k: int, allowed: np.ndarray = None) -> List[set]:
    scores = queries.astype(np.float64) @ vectors.astype(np.float64).T
    if allowed is not None:
        scores[:, ~allowed] = -np.inf
    return [set(np.argsort(-row, kind="stable")[:k].tolist()) for row in scores]


def measure(idx, queries: np.ndarray, truth: List[set], filters) -> Dict[str, float]:
    single, single_cpu, found = [], [], []
    for q in queries:
        t0, c0 = time.perf_counter(), time.thread_time()
        hits = idx.search(q, k=K, filters=filters)
        single_cpu.append((time.thread_time() - c0) * 1e3)
        single.append((time.perf_counter() - t0) * 1e3)
        found.append({h.id for h in hits})
    batch, batch_cpu = [], []
    for r in range(BATCH_REPEATS):
        qs = queries[(r * BATCH) % len(queries):][:BATCH]
        t0, c0 = time.perf_counter(), time.thread_time()
        idx.search(qs, k=K, filters=filters)
        batch_cpu.append((time.thread_time() - c0) * 1e3 / len(qs))
        batch.append((time.perf_counter() - t0) * 1e3 / len(qs))
    recall = float(np.mean([len(f & t) / K for f, t in zip(found, truth)]))
    return {"single_median_ms": float(np.median(single)), "single_p99_ms": float(np.percentile(single, 99)),
            "single_cpu_median_ms": float(np.median(single_cpu)),
            "batch_median_ms": float(np.median(batch)), "batch_p99_ms": float(np.percentile(batch, 99)),
            "batch_cpu_median_ms": float(np.median(batch_cpu)), "recall_at_10": recall}


def _set_dim(dim: int) -> None:
    global DIM
    DIM = int(dim)


def main(argv=None) -> None:
    import faiss

    from proxylab.retrieval.index import ModelIndex

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--dim", type=int, default=DIM,
                    help="vector size (the shipped encoders make 4224-d vectors; 128 is the learned part alone)")
    args = ap.parse_args(argv)
    _set_dim(args.dim)
    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(CLUSTERS, DIM))
    queries = clustered(N_QUERIES, rng, centres)
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        vectors = clustered(n, np.random.default_rng(n), centres)
        families = np.arange(n) % FAMILIES
        metas = [{"name": f"v{i}", "family": f"f{families[i]}"} for i in range(n)]
        truth = exact_top_k(vectors, queries, K)
        truth_filtered = exact_top_k(vectors, queries, K, allowed=families == 3)
        for kind in args.kinds.split(","):
            idx = ModelIndex.create(None, DIM, kind=kind)
            t0 = time.perf_counter()
            ids = idx.add_many(vectors, metas)
            build = time.perf_counter() - t0
            t0 = time.perf_counter()
            idx.rebuild()  # the FAISS part alone (what `open` pays when the cache is stale)
            faiss_build = time.perf_counter() - t0
            assert ids == list(range(n))  # ids equal row numbers, so the numpy truth lines up
            for label, filters, tr in (("none", None, truth), ("family (10%)", {"family": "f3"}, truth_filtered)):
                res = measure(idx, queries, tr, filters)
                row = {"kind": kind, "effective_kind": idx.effective_kind, "n_vectors": n, "dim": DIM,
                       "filter": label, "build_s": round(build, 3),
                       "faiss_build_s": round(faiss_build, 3),
                       **{k: round(v, 4) for k, v in res.items()}}
                rows.append(row)
                print(row, flush=True)
            del idx
    print(f"wrote {write_csv(args.out, rows)}")


if __name__ == "__main__":
    main()
