"""The zoo's quality gate, counted from a built zoo (and, with --baseline, checked against a pre-gate build).

    .venv/bin/python benchmarks/zoo_gate.py [--zoo runs/zoo200] [--baseline runs/zoo200-nogate]
writes benchmarks/results/zoo_gate.csv: one row per (source task, zoo half) plus per architecture and "all":
models, retrained (failed round 1: gate_rounds > 1 or gate_passed False), passed_after_retraining, failed, and with
--baseline identical_to_baseline (same weights sha256 as the pre-gate zoo's model of that name) and
signatures_identical (byte-identical signature files). Halves are train_encoders.split_models' train / test parts.
"""
from __future__ import annotations

import argparse
import filecmp
import sys
from pathlib import Path

from _results import write_csv

RESULTS = Path(__file__).resolve().parent / "results"
COLUMNS = ["group", "half", "models", "retrained", "passed_after_retraining", "failed", "identical_to_baseline",
           "signatures_identical"]


def gate_rows(zoo_dir, baseline=None):
    from proxylab.retrieval.train_encoders import split_models
    from proxylab.retrieval.zoo import load_zoo

    zoo = load_zoo(zoo_dir)
    base = load_zoo(baseline) if baseline else None
    test = set(split_models(zoo.manifest)[1])
    groups = {}
    for r in zoo.manifest:
        half = "test" if r["id"] in test else "train"
        retrained = (r["gate_rounds"] or 1) > 1 or r["gate_passed"] is False
        same = same_sig = ""
        if base is not None:
            same = zoo.config(r["id"])["weights_sha256"] == base.config(r["id"])["weights_sha256"]
            sig = f"signatures/{r['name']}.npz"
            same_sig = filecmp.cmp(Path(zoo_dir) / sig, Path(baseline) / sig, shallow=False)
        for key in ((r["task"], half), (r["arch"], "all"), ("all", "all")):
            g = groups.setdefault(key, {"group": key[0], "half": key[1], **{c: 0 for c in COLUMNS[2:]}})
            g["models"] += 1
            g["retrained"] += retrained
            g["passed_after_retraining"] += retrained and r["gate_passed"] is True
            g["failed"] += r["gate_passed"] is False
            g["identical_to_baseline"] += bool(same)
            g["signatures_identical"] += bool(same_sig)
    return [groups[k] for k in sorted(groups, key=lambda k: (k[0] == "all", k[1] == "all", k))]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zoo", default="runs/zoo200")
    parser.add_argument("--baseline", default=None, help="a pre-gate build of the same zoo (runs/zoo200-nogate)")
    parser.add_argument("--out", default=str(RESULTS / "zoo_gate.csv"))
    args = parser.parse_args(argv)
    rows = gate_rows(args.zoo, args.baseline)
    write_csv(Path(args.out), rows, COLUMNS, lineterminator="\n")
    for r in rows:
        print(" ".join(f"{k}={r[k]}" for k in COLUMNS), file=sys.stderr)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
