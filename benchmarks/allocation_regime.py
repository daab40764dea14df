"""Do the tables' random configurations tell which proxy allocates best? -> benchmarks/results/allocation_regime.csv

A post-hoc diagnostic, written after allocation.py showed proxylab's allocations losing to HAWQ-V2 on
mobilenetv2-animal: nothing here feeds back into any choice of proxy or allocator.

A bench table's rows are uniformly random bit configurations; an allocator's picks are the proxy's best
configuration at a size budget, mostly 4-bit with a few layers lowered. This script samples configurations of that
*allocation regime* for each table's network (from all layers at the table's highest bit choice, random layers
lowered to a random lower choice in random order until the size fits a budget drawn uniformly between 20% and
80% of the way from the all-lowest to the all-highest size; seeded), measures them exactly like the table's rows (same weights, protocol and test split), and reports for
every known proxy and for the searched proxies of benchmarks/allocation.py's searches: the select-split pick
(`--select-by min`, runs/alloc-NAME/best_proxy.txt, what allocation.py used when these losses were seen) and the
allocation-check pick (runs/alloc-NAME-by-allocation/best_proxy.txt, when it is a searched formula; a known
proxy is in the known rows already):

  spearman_select        Spearman on the table's select split (random configurations: what a search picks on)
  spearman_regime        Spearman on the regime configurations
  partial_regime_size    the same with model size partialled out (rank partial correlation): the ranking quality
                         at a fixed size, which is what an allocator needs
  spearman_regime_top20  Spearman among the regime configurations in the top 20% by accuracy

Put these beside allocation.csv's measured allocation accuracies: on mobilenetv2-animal HAWQ-V2 has among the lowest
figures here and yet allocates best, so no ranking figure over sampled configurations (random or regime) shows
which proxy will allocate best there.

Run: nice .venv/bin/python benchmarks/allocation_regime.py [--n 200]   (~2-5 min per table on 1 thread)
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch

from _results import write_csv
from proxylab.metrics import spearman

RESULTS = Path(__file__).resolve().parent / "results"
TABLES = ("resnet20-mnist5k", "mobilenetv2-animal", "resnet18-shapes")
COLUMNS = ["table", "proxy", "origin", "n_regime", "regime_acc_mean", "regime_acc_max", "spearman_select",
           "spearman_regime", "partial_regime_size", "spearman_regime_top20"]


def regime_configs(params: np.ndarray, bit_choices, n: int, seed: int, low: float = 0.2,
                   high: float = 0.8) -> np.ndarray:
    """[n, L] configurations lowered at random from all-highest bits until under a random budget (module doc)."""
    rng = np.random.default_rng(seed)
    choices = sorted(int(b) for b in bit_choices)
    lo, hi = choices[0] * params.sum(), choices[-1] * params.sum()
    out = []
    while len(out) < n:
        budget = lo + rng.uniform(low, high) * (hi - lo)
        bits = np.full(len(params), choices[-1])
        for layer in rng.permutation(len(params)):
            if bits @ params <= budget:
                break
            bits[layer] = rng.choice(choices[:-1])
        if bits @ params <= budget:
            out.append(bits)
    return np.array(out)


def partial_spearman(x, y, z) -> float:
    """Rank partial correlation of x and y given z; NaN when x or y ranks exactly like z (e.g. bparams vs size)."""
    rxy, rxz, ryz = (spearman(a, b) for a, b in ((x, y), (x, z), (y, z)))
    denom = (1 - rxz ** 2) * (1 - ryz ** 2)
    return float((rxy - rxz * ryz) / math.sqrt(denom)) if denom > 1e-12 else math.nan


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tables", default=",".join(TABLES))
    ap.add_argument("--n", type=int, default=200, help="regime configurations per table")
    ap.add_argument("--seed", type=int, default=123)
    ap.add_argument("--out", default=str(RESULTS / "allocation_regime.csv"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    from proxylab.bench import load_table
    from proxylab.bench.measure import Measurer, spec_from_table
    from proxylab.errors import ProxylabError
    from proxylab.proxy import KNOWN_PROXIES, score_configs
    from proxylab.stats import stats_for_table

    from allocation import run_dir  # the search folders benchmarks/allocation.py writes

    def searched(name):
        """(formula, formula, origin) of each of allocation.py's search folders for this table with an answer."""
        out = []
        for select_by, how in (("min", "select-split pick"), ("allocation", "allocation pick")):
            folder = run_dir(name, select_by)
            best = folder / "best_proxy.txt"
            formula = best.read_text().strip() if best.is_file() else ""
            if "(" in formula:  # a formula; a known proxy's name is already among the known rows
                out.append((formula, formula, f"searched ({how}, runs/{folder.name})"))
        return out

    rows = []
    for name in [t for t in args.tables.split(",") if t]:
        table = load_table(name)
        stats = stats_for_table(table)
        params = np.asarray(stats.params, dtype=np.int64)
        bits = regime_configs(params, table.bit_choices, args.n, args.seed)
        measurer = Measurer(spec_from_table(table))
        acc = np.array([measurer.measure(b)[0] for b in bits])
        size = bits @ params
        top = acc >= np.quantile(acc, 0.8)
        sel = table.split("select")
        candidates = [(n, KNOWN_PROXIES.get(n), "known") for n in KNOWN_PROXIES.names()]
        candidates += searched(name)
        for label, proxy, origin in candidates:
            try:
                s_regime = score_configs(proxy, stats, bits)
                s_select = score_configs(proxy, stats, table.bits[sel])
            except ProxylabError:
                continue
            rows.append({
                "table": name, "proxy": label, "origin": origin, "n_regime": len(bits),
                "regime_acc_mean": round(float(acc.mean()), 5), "regime_acc_max": round(float(acc.max()), 5),
                "spearman_select": round(spearman(s_select, table.acc[sel]), 4),
                "spearman_regime": round(spearman(s_regime, acc), 4),
                "partial_regime_size": round(partial_spearman(s_regime, acc, size), 4),
                "spearman_regime_top20": round(spearman(s_regime[top], acc[top]), 4),
            })
            print(f"{name:20s} {label[:40]:40s} select {rows[-1]['spearman_select']:+.3f} regime "
                  f"{rows[-1]['spearman_regime']:+.3f} partial {rows[-1]['partial_regime_size']:+.3f}", flush=True)
        write_csv(Path(args.out), rows, COLUMNS)  # each table as it finishes
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
