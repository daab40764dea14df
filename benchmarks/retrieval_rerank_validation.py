"""Validation on TRAIN models only of ranking rules: the re-rank stage's order and a model-quality prior.

    .venv/bin/python benchmarks/retrieval_rerank_validation.py [--zoo runs/zoo200] [--k 5] [--weights 0,0.5,1,2,inf]
        [--priors 0.005,0.01,0.02,0.04] [--seeds 100,101,102]
writes benchmarks/results/retrieval_rerank_validation.csv (one row per direction x method x weight, plus the rows
pooled over both directions, direction "all") and _queries.csv (the index's row per direction x query x scope).

Why:
- Re-rank order (methods leep, nce; column fuse_weight). The re-rank stage orders the index's top k by LEEP (or
  NCE) alone, which throws away what the index knew about those k models. ``fuse_scores`` (below) keeps both:
  z(index score) + W * z(LEEP) over the k candidates (W = inf is LEEP alone, the shipped behaviour). The rule
  written before the run: adopt the W with the lowest mean of same-task and transfer regret only if it beats
  W = inf by >= 0.005 without a higher same-task regret. Result: W = 2 by 0.0008, so LEEP alone stays. (With
  k = 5, re-ordering the top 5 cannot change which models are in it, so every re-rank row's transfer Recall@5 is
  the index's by construction.)
- LEEP and NCE together (method leep+nce): the index's top k ordered by z(LEEP) + z(NCE) over those k, the
  same forward pass (no extra calls). In the benchmark NCE re-ranking does better same-task and LEEP re-ranking
  better new-task (seen before this row was written, so this was a candidate from the test figures); the rule
  written before the run (session 8): adopt it only if on seeds 100-102 it beats LEEP alone's mean regret by
  >= 0.005 with no higher same-task regret, AND on fresh seeds 103-105 its mean regret is again below LEEP
  alone's. Result: 0.0649 vs 0.0740 on seeds 100-102 (same-task 0.0311 vs 0.0412), then 0.0752 vs 0.0689 on
  103-105: rejected, LEEP alone stays.
- Gate-failed models last (method index+gate_last): the index's order with the models whose build-time quality
  gate failed (manifest gate_passed False) moved after all others. Why: bad models may have generic vectors that
  sit near an unfamiliar query's. Rule written before the run (session 8): adopt it only if transfer Recall@5
  gains >= 0.03 on seeds 100-102 and >= 0.02 on fresh seeds 103-105, each with top-1 and recall_at_2 down by at
  most 0.01. Result: +0.025 on both (0.783 -> 0.808, 0.792 -> 0.817) with top-1, recall_at_2 and regret unchanged:
  below the bar, so not used.
- Hedged list (methods index+hedge1 / index+hedge2; column fuse_weight = the window as a share of the pool): the
  index's first 5 places, of which the last 1 or 2 go to the models with the highest gate_prior (below) among the
  index's first window; places 1-3 stay the index's, so top-1 and recall_at_2 cannot change. Exploratory (tried
  after the prior rows below had been seen; no rule written first): the question is whether within-family model
  quality finds transfer models without costing identification.
- Quality prior (methods index+gate_prior, index+arch_prior; column fuse_weight = beta). The index ranks by task
  match; transfer accuracy also depends on the model's quality, so the first stage could add beta * z(prior),
  z over the indexed models: gate_prior = the model's accuracy on its own task's calib split / chance (its
  manifest gate_acc: black-box, measured once at build), arch_prior = the mean standardised calib-query truth of
  the FIT half's models of the same architecture (white-box oracle, training side only). Exploratory (no rule
  was written before the first look): it trades identification for transfer (see the CSV), so it is not used.
W and beta are judged here, never on the benchmark (benchmarks/retrieval.py).

Protocol (that of ``train_encoders.validation_report``, cross-fit):
- models: the zoo's 95 TRAIN models, split into inner / held halves (VALIDATION_SPLIT_SEED); the shipped
  recipe (3 learned members, training seeds 0-2, kernel seed 0, learned weight 0.5) is trained on one half and
  the other half is indexed and scored, then the halves swap;
- queries: few-shot supports from the CALIB split (images no zoo model, extractor or encoder trained on), every
  source task x shots {5, 10} x seeds {100, 101, 102} (digits' calib split is too small for 20 shots);
- truth: the oracle's linear-probe accuracy on the same calib query (support = the query's images, scored on the
  task's fixed calib scoring images, n_eval_per_class = min(25, smallest class - 10)); cached in zoo_dir/oracle;
- k = 5: the benchmark re-ranks 10 of 105 models; 5 of 44-51 is the same share of the pool;
- top_index_score (queries CSV): the highest index score in the pool, i.e. how well the best-matching model
  matches; it is what would have to tell a new task (scope transfer) from a known one (scope same);
- metrics: top-1 task identification, recall_at_2 (one of the top 2 is of the query's task: the benchmark's
  Recall@5 scaled to this pool) and same-task regret (best truth minus the top-1's truth over all scored models);
  with the query's own-task models removed, as if its task were new: transfer_recall_at_5 (one of the 5 most
  accurate, ties at the 5th included, is in the top 5) and transfer regret.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np

from _results import write_csv

RESULTS = Path(__file__).resolve().parent / "results"
SHOTS = (5, 10)
SEEDS = (100, 101, 102)
MEMBER_SEEDS = (0, 1, 2)
COLUMNS = ["direction", "method", "fuse_weight", "k", "queries", "top1_task", "recall_at_2", "recall_at_5", "regret",
           "transfer_recall_at_5", "transfer_regret", "mean_regret", "calls_fraction"]
HEDGES = ((1, 0.2), (1, 0.3), (2, 0.2), (2, 0.3))  # (places of 5, window as a share of the pool)


def calib_queries(tasks, seeds=SEEDS):
    from proxylab.retrieval.tasks import SOURCE_TASKS, QuerySpec

    specs = []
    for t in sorted(tasks):
        smallest = int(np.bincount(SOURCE_TASKS[t].data("calib")[1].numpy()).min())
        n_eval = min(25, smallest - max(SHOTS))
        specs += [QuerySpec(t, n, s, "calib", n_eval) for n in SHOTS for s in seeds]
    return specs


def direction_encoders(zoo_dir, zoo, fit, tasks, fx):
    """The shipped recipe trained on the `fit` models only."""
    from proxylab.retrieval.encoders import Encoders, KernelMap
    from proxylab.retrieval.tasks import SOURCE_TASKS
    from proxylab.retrieval.train_encoders import (SHIPPED_LEARNED_WEIGHT, TrainConfig, own_accuracy_targets,
                                                   task_feature_bank, train_members, with_kernel)

    cfg = TrainConfig()
    bank = task_feature_bank([SOURCE_TASKS[t] for t in sorted(set(tasks.values()))], fx, "train",
                             cfg.images_per_task, cfg.seed)
    members, _ = train_members({i: zoo.signature(i) for i in fit}, {i: tasks[i] for i in fit}, bank, fx, cfg,
                               MEMBER_SEEDS, own_accuracy_targets(zoo_dir, fit, progress=False), progress=False)
    ens = Encoders.ensemble(members, kernel=None, learned_weight=1.0, extractor=fx)
    return with_kernel(ens, KernelMap(ens.feature_dim), learned_weight=SHIPPED_LEARNED_WEIGHT)


def gate_ratio(row) -> float:
    """A model's accuracy on its own task's calib split / chance (its manifest gate_acc: black-box, measured once
    at build)."""
    return float(row["gate_acc"]) * int(row["num_classes"])


def zscore(v) -> np.ndarray:
    """(v - mean) / sd, all zeros when v is constant (a constant score says nothing)."""
    v = np.asarray(v, dtype=np.float64)
    sd = v.std()
    return (v - v.mean()) / sd if sd > 0 else np.zeros_like(v)


def fuse_scores(index_scores, rerank_scores, weight: float) -> np.ndarray:
    """Scores of the re-ranked candidates that keep the first stage's evidence: z(index) + weight * z(re-rank),
    each standardised over the candidates (a score constant over them contributes 0), so neither scale matters.
    `weight` = inf: the re-rank scores alone (ordering the top-k by the estimator only). Validated here and not
    adopted, so it lives in this script, not in proxylab.retrieval.rerank."""
    from proxylab.errors import ProxylabError

    a = np.asarray(index_scores, dtype=np.float64)
    b = np.asarray(rerank_scores, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ProxylabError(f"index and re-rank scores must be 1-D and aligned, got shapes {list(a.shape)} and "
                            f"{list(b.shape)}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ProxylabError("index or re-rank scores hold NaN or inf")
    try:
        w = float(weight)
    except (TypeError, ValueError):
        w = math.nan
    if isinstance(weight, bool) or not w >= 0:
        raise ProxylabError(f"fuse weight must be a number >= 0 (inf: the re-rank score alone), got {weight!r}")
    if np.isinf(w) or a.size == 0:
        return b.copy()
    return zscore(a) + w * zscore(b)


def ranked(ids: List[int], index: Dict[int, float], first: Dict[int, float], second: Dict[int, float], k: int,
           weight: float) -> List[int]:
    """The two-stage order's head: the index's top k (ties by id; validation only needs the top-1) ordered by
    z(first) + weight * z(second) over those k (``fuse_scores``)."""
    top = sorted(ids, key=lambda i: (-index[i], i))[:k]
    fused = fuse_scores([first[i] for i in top], [second[i] for i in top], weight)
    return [top[n] for n in sorted(range(len(top)), key=lambda n: (-fused[n], n))]


def arch_prior(fit, tasks, arch, truth) -> Dict[str, float]:
    """Per architecture: the mean over the FIT models of that architecture of their truth on every calib query of
    another task, standardised per query over the fit models of other tasks."""
    per: Dict[str, List[float]] = {}
    for key, acc in truth.items():
        task = key.split(".")[0]
        others = [i for i in fit if tasks[i] != task]
        vals = np.array([acc[i] for i in others])
        sd = vals.std() or 1.0
        for i in others:
            per.setdefault(arch[i], []).append((acc[i] - vals.mean()) / sd)
    return {a: float(np.mean(v)) for a, v in per.items()}


def hedged(order: List[int], quality: Dict[int, float], places: int, window: int) -> List[int]:
    """The index's order with the last `places` of its first 5 places given to the highest-`quality` models among
    its first `window` (not already placed); the rest follows in index order."""
    head = order[:5 - places]
    # sorted() is stable, so models of equal quality keep the index's order
    hedge = sorted((i for i in order[:window] if i not in head), key=lambda i: -quality[i])[:places]
    return head + hedge + [i for i in order if i not in head and i not in hedge]


def zscored(values: Dict[int, float]) -> Dict[int, float]:
    return dict(zip(values, zscore(list(values.values()))))


def main(argv=None) -> None:
    from proxylab.errors import require
    from proxylab.retrieval.evaluate import top_n_with_ties
    from proxylab.retrieval.features import FeatureExtractor
    from proxylab.retrieval.oracle import compute_oracle
    from proxylab.retrieval.rerank import leep, nce
    from proxylab.retrieval.train_encoders import VALIDATION_SPLIT_SEED, split_models
    from proxylab.retrieval.zoo import load_zoo

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--zoo", default="runs/zoo200")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--weights", default="0,0.5,1,2,inf")
    ap.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="query draws (calib split)")
    ap.add_argument("--priors", default="0.005,0.01,0.02,0.04", help="beta values of the quality-prior variants")
    ap.add_argument("--out", default=str(RESULTS / "retrieval_rerank_validation.csv"))
    args = ap.parse_args(argv)
    weights = [float(w) for w in args.weights.split(",")]
    betas = [float(b) for b in args.priors.split(",") if b]

    zoo = load_zoo(args.zoo)
    train_ids = set(split_models(zoo.manifest)[0])
    inner, held = split_models([r for r in zoo.manifest if int(r["id"]) in train_ids], 0.5, VALIDATION_SPLIT_SEED)
    tasks = {i: zoo.get(i)["task"] for i in inner + held}
    arch = {i: zoo.get(i)["arch"] for i in tasks}
    require(all(zoo.get(i)["gate_acc"] is not None for i in tasks),
            f"zoo {args.zoo} records no gate_acc (built before the quality gate): rebuild it, or drop the gate prior")
    gate = {i: gate_ratio(zoo.get(i)) for i in tasks}
    passed = {i: zoo.get(i)["gate_passed"] is not False for i in tasks}
    specs = calib_queries(set(tasks.values()), [int(x) for x in args.seeds.split(",")])
    print(f"oracle truth: {len(specs)} calib queries x {len(tasks)} models (cached in {args.zoo}/oracle)", flush=True)
    truth: Dict[str, Dict[int, float]] = {}
    for r in compute_oracle(args.zoo, specs, model_ids=sorted(tasks), progress=False):
        truth.setdefault(r["query"], {})[int(r["model_id"])] = float(r["probe_acc"])
    fx = FeatureExtractor.default()
    supports = {s.key: s.load()[0] for s in specs}

    per_query: List[Dict] = []
    for direction, fit, ev in (("inner>held", inner, held), ("held>inner", held, inner)):
        enc = direction_encoders(args.zoo, zoo, fit, tasks, fx)
        vecs = {i: enc.encode_signature(zoo.signature(i)).astype(np.float64) for i in ev}
        models = {i: zoo.blackbox(i) for i in ev}
        fit_arch = arch_prior(fit, tasks, arch, truth)
        priors = {"gate_prior": zscored({i: gate[i] for i in ev}),
                  "arch_prior": zscored({i: fit_arch.get(arch[i], 0.0) for i in ev})}
        for spec in specs:
            x, y = supports[spec.key]
            labels = y.numpy()
            q = enc.encode_query(x, labels).astype(np.float64)
            index = {i: float(vecs[i] @ q) for i in ev}
            probs = {i: models[i].predict_proba(x) for i in ev}
            second = {"leep": {i: leep(probs[i], labels) for i in ev}, "nce": {i: nce(probs[i], labels) for i in ev}}
            acc = truth[spec.key]
            for scope, pool in (("same", list(ev)), ("transfer", [i for i in ev if tasks[i] != spec.task])):
                best = max(acc[i] for i in pool)
                # weight "" = a method without one (the index alone, brute force over the pool)
                rows = {("index", ""): sorted(pool, key=lambda i: (-index[i], i))}
                for method in ("leep", "nce"):
                    rows[(f"{method}-all", "")] = sorted(pool, key=lambda i: (-second[method][i], i))
                    for w in weights:
                        rows[(method, w)] = ranked(pool, index, index, second[method], args.k, w)
                rows[("leep+nce", "")] = ranked(pool, index, second["leep"], second["nce"], args.k, 1.0)
                for places, share in HEDGES:
                    rows[(f"index+hedge{places}", share)] = hedged(rows[("index", "")], gate, places,
                                                                   max(5, round(share * len(pool))))
                rows[("index+gate_last", "")] = ([i for i in rows[("index", "")] if passed[i]]
                                                 + [i for i in rows[("index", "")] if not passed[i]])
                for name, prior in priors.items():
                    for b in betas:
                        rows[(f"index+{name}", b)] = sorted(pool, key=lambda i: (-(index[i] + b * prior[i]), i))
                relevant = set(top_n_with_ties({i: acc[i] for i in pool}))
                for (method, w), order in rows.items():
                    per_query.append({"direction": direction, "query": spec.key, "task": spec.task, "scope": scope,
                                      "method": method, "fuse_weight": w, "top1": order[0],
                                      "top1_task": float(tasks[order[0]] == spec.task),
                                      "own_in_top2": float(any(tasks[i] == spec.task for i in order[:2])),
                                      "own_in_top5": float(any(tasks[i] == spec.task for i in order[:5])),
                                      "relevant_in_top5": float(bool(relevant & set(order[:5]))),
                                      "regret": best - acc[order[0]], "pool": len(pool),
                                      "top_index_score": max(index[i] for i in pool)})
        print(f"{direction}: {len(specs)} queries scored", flush=True)

    summary = []
    for direction in ("inner>held", "held>inner", "all"):
        keys = sorted({(r["method"], r["fuse_weight"]) for r in per_query},
                      key=lambda t: (t[0], -1 if t[1] == "" else t[1]))
        for method, w in keys:
            sel = [r for r in per_query
                   if (r["method"], r["fuse_weight"]) == (method, w) and direction in ("all", r["direction"])]
            same = [r for r in sel if r["scope"] == "same"]
            trans = [r for r in sel if r["scope"] == "transfer"]
            regret, t_regret = float(np.mean([r["regret"] for r in same])), float(np.mean([r["regret"] for r in trans]))
            calls = (1.0 if method.endswith("-all") else 0.0 if method.startswith("index")
                     else float(np.mean([min(args.k, r["pool"]) / r["pool"] for r in same])))
            summary.append({"direction": direction, "method": method, "fuse_weight": w, "k": args.k,
                            "queries": len(same), "top1_task": float(np.mean([r["top1_task"] for r in same])),
                            "recall_at_2": float(np.mean([r["own_in_top2"] for r in same])),
                            "recall_at_5": float(np.mean([r["own_in_top5"] for r in same])), "regret": regret,
                            "transfer_recall_at_5": float(np.mean([r["relevant_in_top5"] for r in trans])),
                            "transfer_regret": t_regret, "mean_regret": (regret + t_regret) / 2,
                            "calls_fraction": calls})
    for row in summary:
        if row["direction"] == "all":
            print(f"{row['method']:18s} W={row['fuse_weight']:<5} top-1 {row['top1_task']:.3f} "
                  f"R@2 {row['recall_at_2']:.3f} regret {row['regret']:.4f} | transfer R@5 "
                  f"{row['transfer_recall_at_5']:.3f} regret {row['transfer_regret']:.4f} | mean regret "
                  f"{row['mean_regret']:.4f}", flush=True)
    out = Path(args.out)
    write_csv(out, summary, COLUMNS, float_format=lambda v: round(v, 6), lineterminator="\n")
    # per query only the index's rows (the variants' are in the summary): enough to trace top_index_score
    write_csv(out.with_name(out.stem + "_queries.csv"), [r for r in per_query if r["method"] == "index"],
              ["direction", "query", "task", "scope", "method", "fuse_weight", "top1", "top1_task", "own_in_top2",
               "relevant_in_top5", "regret", "pool", "top_index_score"], float_format=lambda v: round(v, 6),
              lineterminator="\n")
    print(f"wrote {out}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
