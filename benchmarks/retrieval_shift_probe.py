"""Planning check for new-task retrieval: does a black-box "spatial sensitivity" of a model predict its transfer?

    .venv/bin/python benchmarks/retrieval_shift_probe.py [--zoo runs/zoo200] [--shift 8]
writes benchmarks/results/retrieval_shift_probe.csv: per source task T (as a query task), the Spearman correlation
over the TRAIN models of other tasks between their probe accuracy on T's calib queries (the oracle rows that
benchmarks/retrieval_rerank_validation.py caches for its default queries, averaged over the 6 per task) and each
of three per-model quantities:
- shift_sensitivity: mean total-variation distance between the model's probabilities for a shapes scene of the
  shared probe pool and for the same scene rolled by --shift pixels (right, down, left, up; averaged). Black-box:
  5 x 96 = 480 calls per model, measurable at signature time;
- gate_ratio: the model's own calib accuracy / chance (manifest gate_acc);
- log_params: log parameter count.
Rows "all" average the per-task correlations; "shapes models" repeats the correlations over the shapes-family
models only (where the index's scores are flat for a shapes-position query). Training models and calib queries only:
the benchmark's test models and test queries are not read.

Why: the new-task misses are shapes-position queries, whose best models (shapes-size / shapes-count vgg_small) keep
where things are in their features; the index ranks shapes models by class content, nearly flat. If a model's
outputs moving with a shift tracked transfer, it would be a signature feature worth adding.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from _results import write_csv
from retrieval_rerank_validation import calib_queries, gate_ratio

RESULTS = Path(__file__).resolve().parent / "results"
COLUMNS = ["query_task", "models", "rho_shift_sensitivity", "rho_gate_ratio", "rho_log_params"]
SHIFTS = ((0, 1), (1, 0), (0, -1), (-1, 0))  # (dy, dx) directions, scaled by --shift


def main(argv=None) -> int:
    import torch
    from scipy.stats import spearmanr

    from proxylab.retrieval.oracle import load_oracle
    from proxylab.retrieval.signature import POOL_PER_SOURCE, probe_pool
    from proxylab.retrieval.train_encoders import split_models
    from proxylab.retrieval.zoo import load_zoo

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--zoo", default="runs/zoo200")
    ap.add_argument("--shift", type=int, default=8)
    ap.add_argument("--out", default=str(RESULTS / "retrieval_shift_probe.csv"))
    args = ap.parse_args(argv)
    zoo = load_zoo(args.zoo)
    train = sorted(split_models(zoo.manifest)[0])
    rows = {i: zoo.get(i) for i in train}
    scenes = probe_pool()[:POOL_PER_SOURCE]  # the pool's shapes scenes come first
    shifted = [torch.roll(scenes, shifts=(dy * args.shift, dx * args.shift), dims=(2, 3)) for dy, dx in SHIFTS]
    quantity = {"shift_sensitivity": {}, "gate_ratio": {}, "log_params": {}}
    for i in train:
        box = zoo.blackbox(i)
        p0 = box.predict_proba(scenes)
        quantity["shift_sensitivity"][i] = float(np.mean([0.5 * np.abs(box.predict_proba(x) - p0).sum(1).mean()
                                                          for x in shifted]))
        quantity["gate_ratio"][i] = gate_ratio(rows[i])
        quantity["log_params"][i] = float(np.log(int(rows[i]["params"])))
    # exactly the validation script's default calib queries (the oracle cache may hold other draws too)
    keys = {q.key for q in calib_queries({r["task"] for r in rows.values()})}
    truth = {}
    for r in load_oracle(args.zoo):  # the gathered rows (current weights only)
        if r["query"] in keys and r["model_id"] in rows:
            truth.setdefault(r["query_task"], {}).setdefault(r["model_id"], []).append(r["probe_acc"])
    if not truth:
        raise SystemExit(f"no calib-query oracle rows in {args.zoo}: run "
                         "benchmarks/retrieval_rerank_validation.py first")
    out = []
    for scope in ("all models", "shapes models"):
        per_task = []
        for task in sorted(truth):
            ids = [i for i in truth[task] if rows[i]["task"] != task
                   and (scope == "all models" or rows[i]["family"] == "shapes")]
            acc = [np.mean(truth[task][i]) for i in ids]
            row = {"query_task": f"{task} ({scope})", "models": len(ids)}
            for name, values in quantity.items():
                row[f"rho_{name}"] = float(spearmanr(acc, [values[i] for i in ids])[0])
            per_task.append(row)
        out += per_task + [{"query_task": f"all ({scope})", "models": "",
                            **{k: float(np.nanmean([r[k] for r in per_task])) for k in COLUMNS[2:]}}]
    write_csv(Path(args.out), out, COLUMNS, float_format=lambda v: round(v, 4), lineterminator="\n")
    for r in out:
        print(" ".join(f"{k}={r[k]}" for k in COLUMNS), flush=True)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
