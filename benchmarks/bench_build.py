"""How fast the MQ-Bench builder measures configurations, against plain float forward passes.

For each shipped table: the reference network and the test split it was measured on; k configurations taken
from the table, each measured the builder's way (apply the configuration, classify the whole test split, two
half accuracies) and, interleaved with them, one plain float forward pass of the same network over the same
images. ratio = configs per minute / forward passes per minute (1.0 means quantizing costs nothing extra).
Every re-measured accuracy is compared with the table's value (max_abs_acc_diff must be 0).

    .venv/bin/python benchmarks/bench_build.py [--k 20] [--tables resnet20-mnist5k,...]
writes benchmarks/results/bench_build.csv
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from proxylab.bench import list_tables, load_table
from proxylab.bench.measure import Measurer, spec_from_table
from _results import write_csv

OUT = Path(__file__).resolve().parent / "results" / "bench_build.csv"


def plain_forward(model, x, batch_size):
    with torch.inference_mode():
        return torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def bench_one(name: str, k: int, batch_size: int) -> dict:
    table = load_table(name)
    measurer = Measurer(spec_from_table(table, batch_size=batch_size))
    model, ds, _ = table.load_network()
    x = ds.test.x
    rows = np.random.default_rng(0).choice(len(table), size=min(k, len(table)), replace=False)
    plain_forward(model, x[:batch_size], batch_size)  # warm-up of both paths, not timed
    measurer.measure(table.bits[rows[0]])
    t_cfg, t_fwd, diffs = 0.0, 0.0, []
    for r in rows:  # interleaved, so machine noise hits both sides alike
        t0 = time.perf_counter()
        acc, _, _ = measurer.measure(table.bits[r])
        t_cfg += time.perf_counter() - t0
        diffs.append(abs(acc - table.acc[r]))
        t0 = time.perf_counter()
        plain_forward(model, x, batch_size)
        t_fwd += time.perf_counter() - t0
    s = table.meta["summary"]
    cpm, fpm = len(rows) / t_cfg * 60, len(rows) / t_fwd * 60
    return {"table": name, "rows": len(table), "layers": len(table.layer_names), "test_images": len(x),
            "configs_per_min": round(cpm, 1), "forward_per_min": round(fpm, 1), "ratio": round(cpm / fpm, 3),
            "noise_ceiling": round(s["noise_ceiling"], 4), "acc_min": round(s["acc_min"], 4),
            "acc_max": round(s["acc_max"], 4), "float_acc": round(table.meta["float_acc"], 4),
            "build_configs_per_min": (table.meta.get("build") or {}).get("configs_per_min"),
            "max_abs_acc_diff": float(max(diffs)), "k": len(rows), "torch_threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--k", type=int, default=20, help="configurations (and forward passes) per table")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--tables", default=",".join(list_tables()))
    args = parser.parse_args()
    results = []
    for name in [t for t in args.tables.split(",") if t]:
        res = bench_one(name, args.k, args.batch_size)
        print(res, flush=True)
        results.append(res)
    write_csv(OUT, results)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
