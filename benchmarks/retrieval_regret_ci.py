"""How sure is a regret comparison of benchmarks/retrieval.py? Paired differences per query with bootstrap CIs.

    .venv/bin/python benchmarks/retrieval_regret_ci.py [--queries benchmarks/results/retrieval_3seeds_queries.csv]
        [--baseline leep-all] [--resamples 10000] [--seed 0] [--out benchmarks/results/retrieval_regret_ci.csv]

Issue 7 asks that the re-ranked regret be no worse than LEEP over the whole zoo. Each query gives a paired
difference d = regret(method) - regret(baseline) (negative: the method picked a better model). Per (query kind,
method) the CSV holds:
- queries, mean_diff, and how many queries the method did better / worse / the same (better, worse, equal);
- ci_low / ci_high: 95% percentile bootstrap CI of mean_diff over queries (scipy.stats.bootstrap, paired);
- ci_low_task / ci_high_task: the same with whole TASKS resampled (a cluster bootstrap): queries of one task share
  its models and images, so they are not independent, and this interval counts that. With few tasks (7 new, 10
  same-task) percentile cluster intervals still run somewhat narrow; with one task there is nothing to resample,
  so they are left empty (NaN).
A target "no worse than the baseline" is decided by noise when its interval holds 0 with room on both sides.
Reads only a per-query CSV that benchmarks/retrieval.py wrote; no model is run.
"""
from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

from _results import write_csv

RESULTS = Path(__file__).resolve().parent / "results"
COLUMNS = ["query_kind", "method", "baseline", "queries", "tasks", "mean_diff", "ci_low", "ci_high", "ci_low_task",
           "ci_high_task", "better", "worse", "equal"]


def paired_differences(rows: Sequence[Dict[str, str]], method: str, baseline: str, kind: str
                       ) -> Tuple[np.ndarray, List[str]]:
    """(regret of `method` - regret of `baseline` per query of `kind`, each query's task), in query order."""
    regret: Dict[Tuple[str, str], float] = {}
    for r in rows:
        if r["query_kind"] == kind and r["method"] in (method, baseline):
            if (r["method"], r["query"]) in regret:
                raise SystemExit(f"{r['method']} has two rows for query {r['query']}: the CSV is not one run of "
                                 "benchmarks/retrieval.py")
            regret[(r["method"], r["query"])] = float(r["regret"])
    queries = sorted({q for _, q in regret})
    task = {r["query"]: r["task"] for r in rows}
    missing = [(m, q) for q in queries for m in (method, baseline) if (m, q) not in regret]
    if missing:
        raise SystemExit(f"{missing[0][0]} has no row for {kind} query {missing[0][1]} ({len(missing)} missing): the "
                         "CSV is not one run of benchmarks/retrieval.py")
    return np.array([regret[(method, q)] - regret[(baseline, q)] for q in queries]), [task[q] for q in queries]


def cluster_bootstrap_ci(diff: np.ndarray, clusters: Sequence[str], resamples: int, seed: int,
                         level: float = 0.95) -> Tuple[float, float]:
    """Percentile CI of the mean of `diff` when whole clusters are drawn with replacement (each resample: as many
    clusters as there are, the mean over all their queries); (nan, nan) for fewer than 2 clusters."""
    names = sorted(set(clusters))
    if len(names) < 2:
        return math.nan, math.nan
    sums = np.array([diff[[c == n for c in clusters]].sum() for n in names])
    counts = np.array([sum(c == n for c in clusters) for n in names], dtype=np.float64)
    pick = np.random.default_rng(seed).integers(0, len(names), size=(resamples, len(names)))
    means = sums[pick].sum(axis=1) / counts[pick].sum(axis=1)
    tail = (1 - level) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def query_bootstrap_ci(diff: np.ndarray, resamples: int, seed: int, level: float = 0.95) -> Tuple[float, float]:
    from scipy.stats import bootstrap

    if np.ptp(diff) == 0:  # scipy refuses a degenerate sample; every resample's mean is that value
        return float(diff[0]), float(diff[0])
    ci = bootstrap((diff,), np.mean, n_resamples=resamples, confidence_level=level, method="percentile",
                   random_state=np.random.default_rng(seed)).confidence_interval
    return float(ci.low), float(ci.high)


def regret_cis(rows: Sequence[Dict[str, str]], baseline: str, resamples: int, seed: int) -> List[Dict]:
    out = []
    for kind in sorted({r["query_kind"] for r in rows}):
        methods = sorted({r["method"] for r in rows if r["query_kind"] == kind} - {baseline})
        for method in methods:
            diff, tasks = paired_differences(rows, method, baseline, kind)
            if diff.size == 0:
                continue
            lo, hi = query_bootstrap_ci(diff, resamples, seed)
            lo_t, hi_t = cluster_bootstrap_ci(diff, tasks, resamples, seed)
            out.append({"query_kind": kind, "method": method, "baseline": baseline, "queries": int(diff.size),
                        "tasks": len(set(tasks)), "mean_diff": float(diff.mean()), "ci_low": lo, "ci_high": hi,
                        "ci_low_task": lo_t, "ci_high_task": hi_t, "better": int((diff < 0).sum()),
                        "worse": int((diff > 0).sum()), "equal": int((diff == 0).sum())})
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--queries", default=str(RESULTS / "retrieval_3seeds_queries.csv"))
    ap.add_argument("--baseline", default="leep-all")
    ap.add_argument("--resamples", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS / "retrieval_regret_ci.csv"))
    args = ap.parse_args(argv)
    path = Path(args.queries)
    if not path.is_file():
        raise SystemExit(f"{path} does not exist: run benchmarks/retrieval.py first (it writes *_queries.csv)")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"method", "query_kind", "query", "task", "regret"} <= set(rows[0]):
        raise SystemExit(f"{path} is not a per-query CSV of benchmarks/retrieval.py (needs method, query_kind, "
                         "query, task, regret)")
    if args.baseline not in {r["method"] for r in rows}:
        raise SystemExit(f"baseline {args.baseline!r} is not a method in {path}")
    out = regret_cis(rows, args.baseline, args.resamples, args.seed)
    for r in out:
        print(f"{r['query_kind']:12s} {r['method']:18s} - {r['baseline']}: {r['mean_diff']:+.4f} over {r['queries']} "
              f"queries, 95% CI [{r['ci_low']:+.4f}, {r['ci_high']:+.4f}] by query, [{r['ci_low_task']:+.4f}, "
              f"{r['ci_high_task']:+.4f}] by task; better {r['better']}, worse {r['worse']}, same {r['equal']}")
    write_csv(args.out, out, COLUMNS, float_format=lambda v: round(v, 6), lineterminator="\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
