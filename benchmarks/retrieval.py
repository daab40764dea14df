"""Black-box model retrieval on the zoo's held-out models: proxylab (index, index + re-rank) vs baselines.

    .venv/bin/python benchmarks/retrieval.py [--zoo runs/zoo200] [--shots 5,10,20] [--seeds 0] [--rerank-k 10]
writes benchmarks/results/retrieval.csv (one row per method x query kind), retrieval_queries.csv (one row per
method x query), retrieval_per_task.csv (per method x query kind x task: the mean over its shots and seeds) and
retrieval_targets.csv (the issue's targets, met or not); with several --seeds also
retrieval_truth_stability.csv (evaluate.truth_stability: how well one support draw's oracle ranking finds another
draw's relevant models, per new task).

Encoders: the shipped ones (proxylab.retrieval.encoders): a training-free kernel mean embedding of the class
anchors / query prototypes plus 0.5 x the learned set-encoder vectors of an ensemble of 3 encoders (training seeds
0-2, averaged; each one's ranking loss uses each training model's accuracy on its source task's CALIB split, never the
test images queried here), on the features of the 30-epoch shipped extractor; that variant was chosen on a
validation set of train models and calib-split queries only (`python -m proxylab.retrieval.train_encoders --zoo
runs/zoo200-nogate --validate benchmarks/results/retrieval_validation_calib.csv --validate-seeds 0,1,2
--validate-ensemble --cross-fit --validate-query-seeds 100,101,102,103,104 --validate-weights 0,0.25,0.35,0.5`, and
benchmarks/retrieval_extractor_screen.py for the extractor), and kept by the same validation on the gated zoo
(--zoo runs/zoo200 --validate benchmarks/results/retrieval_validation_gate.csv), never on this benchmark.
runs/zoo200 is built with the zoo's quality gate (proxylab.retrieval.zoo.GATE_RATIO); retrieval_nogate.csv (and
its _queries/_targets) are this script's figures on the pre-gate zoo with the session-5 encoders (commit 6e94629).

Setting (details: proxylab.retrieval.evaluate): the learned part was trained on the zoo's train half
(proxylab.retrieval.train_encoders.split_models: a seeded draw per model id, 95 of the 200 models); this
script indexes ONLY the other 105, which the encoders never saw. Queries are few-shot support sets (5/10/20 labelled images per
class) from TEST splits: same_task queries from the zoo's source tasks, new_task queries from held-out class
subsets and held-out labellings no model, extractor or encoder was trained on, and subset_task queries from a
class subset of ONE source task (shapes-rgb = red/green/blue of shapes-color: not a new task, so it is scored
as identification of its parent task and kept out of the new_task figures and targets).

Definitions
- Ground truth: the oracle (proxylab.retrieval.oracle): accuracy of a linear probe on a model's penultimate
  features, fit on the query's support images, scored on the query task's held-out scoring images.
- Relevant models: same_task = the models trained on the query's source task (subset_task: its parent's);
  new_task = the 5 models with the highest oracle accuracy on that query plus every model tied with the 5th.
- Ties in a method's scores count in expectation (every order of tied models equally likely), never by id.
- Recall@k: the fraction of queries with at least one relevant model in the method's top k (TANS's
  query-level recall; = Hit@k). best_in_top5: the fraction whose oracle-best model is in the top 5.
- top1_task (same_task, subset_task): the fraction of queries whose top-1 model was trained on the query's
  (parent) task.
- Two-stage methods are tie-aware too: LEEP/NCE ties among the re-ranked models and index-score ties in the
  rest count in expectation, and when index scores tie at the 10th place every equally likely choice of the
  tied models to re-rank is scored and averaged (proxylab.retrieval.evaluate.top_k_draws).
- weighted_tau: scipy.stats.weightedtau between the method's scores (for the two-stage methods: the re-ranked
  models' LEEP/NCE ranks above the rest's index-score ranks, ties kept) and the oracle accuracies over all
  indexed models, averaged over queries.
- ndcg_at_5: NDCG@5 with gain = oracle accuracy min-max scaled over the indexed models of the query.
- regret: best oracle accuracy minus the oracle accuracy of the method's top-1 model.
- calls_per_query: images sent to zoo models (a call = one image); latency_ms_median: per query, query
  encoding + search, plus the measured time of the models a method runs (in-process, this CPU, under load).
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from _results import write_csv
from proxylab.retrieval.evaluate import SUMMARY_FIELDS

RESULTS = Path(__file__).resolve().parent / "results"
COLUMNS = list(SUMMARY_FIELDS)
QUERY_COLUMNS = ["method", "query_kind", "query", "task", "shots", "top1_id", "top1_task", "recall_at_1",
                 "recall_at_5", "recall_at_10", "best_in_top5", "weighted_tau", "ndcg_at_5", "regret",
                 "calls_per_query", "latency_ms"]
TAU_MARGIN = 0.1  # "clearly above": the index's weighted tau beats each trivial baseline by at least this


def check_targets(summary, rerank_k: int):
    """The issue's targets as rows (target, query_kind, value, threshold, met)."""
    by = {(r["method"], r["query_kind"]): r for r in summary}
    rows = []
    same = by.get(("proxylab", "same_task"))
    if same:
        rows.append(("top1_task_identification", "same_task", same["top1_task"], ">= 0.90", same["top1_task"] >= 0.90))
    for kind in ("same_task", "new_task"):
        px, rr, brute = (by.get((m, kind)) for m in ("proxylab", f"proxylab+leep@{rerank_k}", "leep-all"))
        if not (px and rr and brute):
            continue
        rows.append(("recall_at_5", kind, px["recall_at_5"], ">= 0.95", px["recall_at_5"] >= 0.95))
        ratio = rr["calls_per_query"] / brute["calls_per_query"]
        rows.append((f"rerank_regret_vs_leep_all (leep-all {brute['regret']:.4f})", kind, rr["regret"],
                     f"<= {brute['regret']:.4f}", rr["regret"] <= brute["regret"] + 1e-12))
        rows.append(("rerank_calls_fraction_of_leep_all", kind, ratio, "<= 0.10", ratio <= 0.10 + 1e-12))
        for base in ("random", "largest"):
            b = by.get((base, kind))
            if b:
                ok = (not math.isnan(px["weighted_tau"])) and px["weighted_tau"] >= b["weighted_tau"] + TAU_MARGIN
                rows.append((f"index_weighted_tau_minus_{base} ({b['weighted_tau']:.4f})", kind,
                             px["weighted_tau"] - b["weighted_tau"], f">= {TAU_MARGIN}", ok))
        rows.append(("index_latency_ms_median", kind, px["latency_ms_median"], "<= 20", px["latency_ms_median"] <= 20))
    return rows


def latency_comparison(zoo_dir, other_file: str, queries, repeats: int = 3):
    """Median query latency (encode + search over the held-out models) of the shipped encoders and of the
    encoders in `other_file` (e.g. a previous release's), timed alternately query by query in ONE process, so
    machine load inflates both alike: their ratio is the comparable figure. Rows: encoders, id, median, ratio."""
    import time

    import numpy as np

    from proxylab.retrieval.encoders import Encoders
    from proxylab.retrieval.index import ModelIndex
    from proxylab.retrieval.train_encoders import split_models
    from proxylab.retrieval.zoo import add_models, load_zoo

    zoo = load_zoo(zoo_dir)
    ids = split_models(zoo.manifest)[1]
    named = {"shipped": Encoders.default(), "other": Encoders.load(other_file)}
    eid = {name: enc.id for name, enc in named.items()}  # a hash of every weight: once, outside the timing
    indexes = {}
    for name, enc in named.items():
        idx = ModelIndex.create(None, enc.dim, encoder_id=eid[name])
        add_models(idx, zoo, enc, ids, eid[name])
        indexes[name] = idx
    supports = [spec.load()[0] for spec in queries]
    times = {name: [] for name in named}
    for _ in range(repeats):
        for sx, sy in supports:
            for name, enc in named.items():  # alternate, so both see the same load
                t0 = time.perf_counter()
                indexes[name].search(enc.encode_query(sx, sy.numpy()), k=len(ids), encoder_id=eid[name])
                times[name].append((time.perf_counter() - t0) * 1e3)
    base = float(np.median(times["other"]))
    return [{"encoders": name if name == "shipped" else f"other ({other_file})", "encoder_id": eid[name],
             "queries_timed": len(times[name]), "latency_ms_median": float(np.median(times[name])),
             "ratio_to_other": float(np.median(times[name])) / base} for name in named]


PER_TASK = ("method", "query_kind", "task")
PER_TASK_COLUMNS = [*PER_TASK, "queries", "top1_task", "recall_at_5", "best_in_top5", "regret"]


def per_task_rows(per_query):
    """Per (method, query kind, task): the mean of each metric over that task's queries (shots x seeds), so a
    kind's figure can be traced to the tasks that make it."""
    from proxylab.retrieval.evaluate import summarize

    return sorted(summarize(per_query, by=PER_TASK), key=lambda r: tuple(r[k] for k in PER_TASK))


def _write(path: Path, columns, rows) -> None:
    write_csv(path, rows, columns, float_format=lambda v: round(v, 6), lineterminator="\n")


def main(argv=None) -> int:
    import torch

    from proxylab.retrieval.evaluate import evaluate_zoo, oracle_ground_truth, truth_stability
    from proxylab.retrieval.tasks import default_queries
    from proxylab.retrieval.train_encoders import split_models
    from proxylab.retrieval.zoo import load_zoo

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zoo", default="runs/zoo200")
    parser.add_argument("--shots", default="5,10,20")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--rerank-k", type=int, default=10)
    parser.add_argument("--out", default=str(RESULTS / "retrieval.csv"))
    parser.add_argument("--latency-vs", metavar="ENCODERS_FILE",
                        help="also time the query path of the shipped encoders against these (alternately, in this "
                             "run) and write retrieval_latency_compare.csv")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the machine is shared; timings are per single thread
    queries = default_queries("all", [int(s) for s in args.shots.split(",")], [int(s) for s in args.seeds.split(",")])
    if args.latency_vs:
        rows = latency_comparison(args.zoo, args.latency_vs, queries)
        path = Path(args.out).with_name(Path(args.out).stem + "_latency_compare.csv")
        _write(path, list(rows[0]), rows)
        for r in rows:
            print(f"latency {r['encoders']}: median {r['latency_ms_median']:.2f} ms, x{r['ratio_to_other']:.3f}",
                  file=sys.stderr)
    # The ground truth, read (or computed and cached) once: evaluate_zoo scores with it, truth_stability reuses it.
    test_ids = split_models(load_zoo(args.zoo).manifest)[1]
    truth = oracle_ground_truth(args.zoo, queries, test_ids)
    summary, per_query = evaluate_zoo(args.zoo, queries=queries, model_ids=test_ids, rerank_k=args.rerank_k,
                                      ground_truth=lambda *_: truth)
    kind_order = {"same_task": 0, "new_task": 1, "subset_task": 2}
    summary.sort(key=lambda r: (kind_order.get(r["query_kind"], 3), r["method"]))
    out = Path(args.out)
    _write(out, COLUMNS, summary)
    _write(out.with_name(out.stem + "_queries.csv"), QUERY_COLUMNS, per_query)
    _write(out.with_name(out.stem + "_per_task.csv"), PER_TASK_COLUMNS, per_task_rows(per_query))
    if len({q.seed for q in queries}) > 1:
        # How stable is the new-task truth across support draws? (evaluate.truth_stability)
        stability = truth_stability([q for q in queries if q.kind == "new"], truth)
        _write(out.with_name(out.stem + "_truth_stability.csv"), ["task", "pairs", "recall_at_5"], stability)
    targets = check_targets(summary, args.rerank_k)
    _write(out.with_name(out.stem + "_targets.csv"), ["target", "query_kind", "value", "threshold", "met"],
           [dict(zip(["target", "query_kind", "value", "threshold", "met"], t)) for t in targets])
    for r in summary:
        print(" ".join(f"{k}={r[k]:.4f}" if isinstance(r[k], float) else f"{k}={r[k]}" for k in COLUMNS), file=sys.stderr)
    for t in targets:
        print(f"target {t[0]} [{t[1]}]: {t[2]:.4f} {t[3]} -> {'MET' if t[4] else 'NOT MET'}", file=sys.stderr)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
