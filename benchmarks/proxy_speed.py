"""How fast a proxy candidate is fully scored: vectorised (layer table + gather) against EMQ's naive loop.

For each shipped table: the reference network's statistics (cached), then the same random candidates drawn
from EMQ's search space (tree / linear / graph structures in turn, seed 0) score every configuration of the
table both ways. "Fully scored" = one score per configuration of the whole table. The naive path recomputes
each configuration from scratch, as EMQ's loop does; it is timed on --naive-configs configurations and
scaled to the table size (its cost is linear in the number of configurations). Invalid candidates (NaN/inf)
count too: rejecting them is part of the search's work. Both paths run with one torch thread (see
proxylab.utils.torch_threads). One run; medians per candidate, wall-clock and CPU time (CPU time
stays meaningful on a shared machine; load_avg records how shared it was).

    .venv/bin/python benchmarks/proxy_speed.py [--candidates 100] [--naive-candidates 10]
writes benchmarks/results/proxy_speed.csv
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from _results import write_csv

OUT = Path(__file__).resolve().parent / "results" / "proxy_speed.csv"
COLUMNS = ["table", "layers", "configs", "method", "candidates", "valid", "median_ms_per_candidate",
           "median_cpu_ms_per_candidate", "candidates_per_s", "speedup_vs_naive", "load_avg", "machine"]
STRUCTURES = ("tree", "linear", "graph")


def _time_vectorised(proxy, stats, bits):
    from proxylab.proxy import InvalidProxy, score_configs

    t0, c0 = time.perf_counter(), time.process_time()
    try:
        score_configs(proxy, stats, bits)
        ok = True
    except InvalidProxy:
        ok = False
    return time.perf_counter() - t0, ok, time.process_time() - c0


def _time_naive(proxy, stats, bits, sample):
    """Seconds to score all len(bits) configs the naive way, from ``sample`` of them (first invalid stops)."""
    from proxylab.proxy import InvalidProxy

    t0, c0 = time.perf_counter(), time.process_time()
    done = 0
    ok = True
    for row in bits[:sample]:
        done += 1
        try:
            proxy.score_naive(stats, row)
        except InvalidProxy:
            ok = False
            break  # EMQ's screening stops at the first invalid score as well
    scale = 1.0 if not ok else len(bits) / done
    return (time.perf_counter() - t0) * scale, ok, (time.process_time() - c0) * scale


def main(argv=None) -> int:
    from proxylab.bench import list_tables, load_table
    from proxylab.proxy import random_emq
    from proxylab.stats import stats_for_table

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tables", default="", help="comma-separated table names (default: every shipped table)")
    parser.add_argument("--candidates", type=int, default=100, help="random candidates timed vectorised")
    parser.add_argument("--naive-candidates", type=int, default=10, help="of those, how many also timed naively")
    parser.add_argument("--naive-configs", type=int, default=20, help="configs per naive candidate, then scaled")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args(argv)

    names = [t for t in args.tables.split(",") if t] or list_tables()
    if not names:
        print("no shipped tables found under proxylab/bench/shipped/: build them first", file=sys.stderr)
        return 1
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus"
    rows = []
    for name in names:
        table = load_table(name)
        stats = stats_for_table(table, hessian=False)
        bits = table.bits
        candidates = [random_emq(i, STRUCTURES[i % 3]) for i in range(args.candidates)]
        _time_vectorised(candidates[0], stats, bits)  # warm-up: inputs prepared once per stats, as in a search
        fast = [_time_vectorised(p, stats, bits) for p in candidates]
        naive_n = min(args.naive_candidates, len(candidates))
        slow = [_time_naive(p, stats, bits, args.naive_configs) for p in candidates[:naive_n]]
        fast_med = float(np.median([t for t, _, _ in fast]))
        slow_med = float(np.median([t for t, _, _ in slow]))
        same = float(np.median([t for t, _, _ in fast[:naive_n]]))
        for method, times, med, speed in (
            ("vectorised", fast, fast_med, slow_med / same if same > 0 else float("nan")),
            ("naive", slow, slow_med, 1.0),
        ):
            rows.append({
                "table": name, "layers": len(stats.layer_names), "configs": len(bits), "method": method,
                "candidates": len(times), "valid": sum(ok for _, ok, _ in times),
                "median_ms_per_candidate": med * 1e3,
                "median_cpu_ms_per_candidate": float(np.median([c for _, _, c in times])) * 1e3,
                "candidates_per_s": 1.0 / med if med > 0 else float("inf"),
                "speedup_vs_naive": speed, "load_avg": os.getloadavg()[0], "machine": machine,
            })
        print(f"{name}: {len(bits)} configs; vectorised {fast_med * 1e3:.1f} ms/candidate, naive "
              f"{slow_med * 1e3:.0f} ms/candidate, speedup {rows[-2]['speedup_vs_naive']:.0f}x", file=sys.stderr)
    out = write_csv(args.out, rows, COLUMNS, float_format=lambda v: f"{v:.4f}")
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
