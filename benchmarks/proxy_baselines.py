"""Every known proxy on every shipped MQ-Bench table: rank metrics on the test split, beside the noise ceiling.

For each table: the statistics of the table's reference network (proxylab.stats.stats_for_table, calib split,
batch 64, seed 0, with Hessians; cached), then each proxy in proxylab.proxy.KNOWN_PROXIES scores the test
split's configurations. noise_ceiling is the split-half Spearman of the test split's accuracies: no proxy can
rank these rows better than the table ranks itself. A proxy that yields NaN/inf is reported invalid with the
layer and op where it happened (reason column).

    .venv/bin/python benchmarks/proxy_baselines.py [--tables resnet20-mnist5k,...] [--split test]
writes benchmarks/results/proxy_baselines.csv
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from _results import write_csv

OUT = Path(__file__).resolve().parent / "results" / "proxy_baselines.csv"
COLUMNS = ["table", "proxy", "split", "n", "spearman", "kendall", "pearson", "spearman_top20", "spearman_top50",
           "weighted_tau", "noise_ceiling", "valid", "reason", "formula", "seconds"]


def main(argv=None) -> int:
    from proxylab.bench import list_tables, load_table
    from proxylab.proxy import KNOWN_PROXIES
    from proxylab.proxy.report import evaluate_on_table
    from proxylab.stats import stats_for_table

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tables", default="", help="comma-separated table names (default: every shipped table)")
    parser.add_argument("--split", default="test", choices=("test", "select", "search", "all"))
    parser.add_argument("--no-hessian", action="store_true",
                        help="skip the Hessian statistics (fast; hawq and hawqv2 are then reported as invalid)")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args(argv)

    names = [t for t in args.tables.split(",") if t] or list_tables()
    if not names:
        print("no shipped tables found under proxylab/bench/shipped/: build them first (proxylab bench build)",
              file=sys.stderr)
        return 1
    rows = []
    for name in names:
        table = load_table(name)
        t0 = time.perf_counter()
        stats = stats_for_table(table, hessian=not args.no_hessian)
        print(f"{name}: statistics in {time.perf_counter() - t0:.1f} s ({len(stats.layer_names)} layers)", file=sys.stderr)
        for proxy_name in KNOWN_PROXIES.names():
            proxy = KNOWN_PROXIES.get(proxy_name)
            row = evaluate_on_table(proxy, table, stats, args.split)
            row["formula"] = str(proxy)
            rows.append(row)
            print(f"  {proxy_name:10s} spearman={row['spearman']:+.4f} top20={row['spearman_top20']:+.4f} "
                  f"ceiling={row['noise_ceiling']:.4f} {'' if row['valid'] else 'INVALID ' + row['reason']}",
                  file=sys.stderr)
    out = write_csv(args.out, rows, COLUMNS, float_format=lambda v: f"{v:.6f}")
    print(f"wrote {out} ({len(rows)} rows)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
