"""Does the mobilenetv2 ImageNet stem explain the zoo's gate failures? Retrain its shapes models with the small stem.

    .venv/bin/python benchmarks/zoo_mobilenet_stem.py [--zoo runs/zoo200] [--workers 2] [--tasks shapes]
writes benchmarks/results/zoo_mobilenet_stem.csv: one row per mobilenetv2 model of the chosen task family, with the
zoo's own result (the ImageNet stem, stride 2: a 32x32 scene ends as a 1x1 map) beside the same plan retrained with
stem "small" (stride 1 in the stem: a 2x2 final map; same data, width, epochs, seed, quality gate): gate_acc (calib
accuracy), gate rounds, gate passed, test_acc, training seconds; plus an "all" row of means and counts.

Why: 16 of the 19 models that never passed the zoo's quality gate are mobilenetv2 on shapes tasks; the session-6
note guessed the ImageNet stem. This measures it without changing the zoo (nothing under --zoo is written).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from _results import write_csv

RESULTS = Path(__file__).resolve().parent / "results"
COLUMNS = ["id", "name", "task", "width", "train_size", "planned_epochs", "imagenet_gate_acc", "imagenet_rounds",
           "imagenet_passed", "imagenet_test_acc", "imagenet_seconds", "small_gate_acc", "small_rounds",
           "small_passed", "small_test_acc", "small_seconds"]


def small_stem(args):
    """Train model `i`'s plan of `zoo_seed` with the small stem; returns the config (weights dropped)."""
    from proxylab.retrieval.zoo import plan_model, train_model

    i, zoo_seed, ratio, rounds = args
    plan = plan_model(i, zoo_seed, None, ratio, rounds)
    return train_model(dataclasses.replace(plan, kwargs={**plan.kwargs, "stem": "small"}))[0]


def main(argv=None) -> int:
    import json

    from proxylab.retrieval.zoo import load_zoo

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--zoo", default="runs/zoo200")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--tasks", default="shapes", help="task family whose mobilenetv2 models are retrained")
    ap.add_argument("--out", default=str(RESULTS / "zoo_mobilenet_stem.csv"))
    args = ap.parse_args(argv)
    zoo = load_zoo(args.zoo)
    meta = json.loads((Path(args.zoo) / "zoo.json").read_text())
    rows = [r for r in zoo.manifest if r["arch"] == "mobilenetv2" and r["family"] == args.tasks]
    if not rows:
        raise SystemExit(f"no mobilenetv2 model of family {args.tasks!r} in {args.zoo}")
    if any(zoo.config(r["id"])["kwargs"].get("stem") != "imagenet" for r in rows):
        raise SystemExit("these models do not use the ImageNet stem: nothing to compare")
    jobs = [(r["id"], int(meta["seed"]), float(meta["gate_ratio"]), int(meta["gate_max_rounds"])) for r in rows]
    print(f"retraining {len(jobs)} mobilenetv2 models with the small stem on {args.workers} worker(s)", flush=True)
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        small = list(pool.map(small_stem, jobs))
    out = []
    for r, s in zip(rows, small):
        c = zoo.config(r["id"])
        out.append({"id": r["id"], "name": r["name"], "task": r["task"], "width": c["width"],
                    "train_size": c["train_size"], "planned_epochs": c["planned_epochs"],
                    "imagenet_gate_acc": c["gate_acc"], "imagenet_rounds": c["gate_rounds"],
                    "imagenet_passed": c["gate_passed"], "imagenet_test_acc": c["test_acc"],
                    "imagenet_seconds": c["seconds"], "small_gate_acc": s["gate_acc"], "small_rounds": s["gate_rounds"],
                    "small_passed": s["gate_passed"], "small_test_acc": s["test_acc"], "small_seconds": s["seconds"]})
        print(f"{r['name']}: calib acc {c['gate_acc']:.3f} ({c['gate_rounds']} round(s), passed {c['gate_passed']}) "
              f"-> small stem {s['gate_acc']:.3f} ({s['gate_rounds']}, {s['gate_passed']})", flush=True)
    mean = lambda key: float(np.mean([float(o[key]) for o in out]))  # noqa: E731
    total = {"id": "all", "name": f"{len(out)} models", "task": args.tasks, "width": "", "train_size": "",
             "planned_epochs": "", **{k: mean(k) for k in COLUMNS if k.endswith(("_acc", "_rounds", "_seconds"))},
             "imagenet_passed": sum(o["imagenet_passed"] is True for o in out),
             "small_passed": sum(o["small_passed"] is True for o in out)}
    out.append(total)
    write_csv(Path(args.out), out, COLUMNS, float_format=lambda v: round(v, 6), lineterminator="\n")
    print(" ".join(f"{k}={total[k]}" for k in COLUMNS), flush=True)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
