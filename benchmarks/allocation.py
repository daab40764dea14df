"""Bit allocation under a size budget: proxylab's allocation against every baseline allocator, measured.

For each shipped bench table's network, plus one timm network that is in no table (resnet18, width 0.25, trained
here on shapes-texture), at size budgets 25% / 50% / 75% of the way from all-2-bit to all-4-bit, every allocator
in proxylab.allocate.ALLOCATORS picks a configuration and its real PTQ accuracy is measured on the test split
(the table's own protocol and activation bits; the resnet18-shapes table's for the network in no table).

proxylab's allocator uses the proxy a search hands to allocation: for each table, the best_proxy.txt of
    proxylab search --bench TABLE --space extended --pop 50 --iters 1000 --seed 0 --select-by allocation
        --out runs/alloc-TABLE-by-allocation
and for the network in no table (the transfer case: nothing of it is looked at before allocating) the one of
    proxylab search --bench resnet20-mnist5k,mobilenetv2-animal,resnet18-shapes --space extended --pop 50
        --iters 1000 --seed 0 --select-by allocation --out runs/alloc-transfer-by-allocation
The script runs a search whose folder lacks best_proxy.txt. `--select-by allocation`
(proxylab.search.alloc_check) picks, among the hall of fame and the known proxies, the one whose ILP
allocations at 20/35/50/65/80% budgets are the most accurate on the tables' CALIB split; this script measures
on the TEST split at 25/50/75%, so no measurement here feeds back into the choice. `--select-by min` reproduces
the earlier runs (runs/alloc-TABLE: the hall-of-fame member with the best select-split Spearman).
benchmarks/results/allocation_proxies.csv records the formulas, so `--proxies-csv` reproduces the CSV without
searching. `--known` uses instead the known proxy with the best select-split Spearman.

Noise: each accuracy is also measured on the two halves of the test split (a fixed seeded cut). The
split-half estimate of one accuracy's standard error is |acc_a - acc_b| / 2, and proxylab ties a baseline
when the accuracy gap is within the larger of the two allocations' estimates; else it wins or loses.

Writes benchmarks/results/allocation.csv, allocation_proxies.csv and allocation_pareto.png.
Run: nice .venv/bin/python benchmarks/allocation.py   (torch on 1 thread; searches ~3 min each, training
~3 min, allocation + measurement ~10 min on a loaded 2-core machine; statistics and checkpoint cached)
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path
from typing import Dict, List

import torch

from proxylab.allocate import ALLOCATORS, AllocationProblem, budget_between, run_allocator
from proxylab.errors import ProxylabError
from _results import write_csv

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
RUNS = ROOT / "runs"
TABLES = ("resnet20-mnist5k", "mobilenetv2-animal", "resnet18-shapes")
FRACTIONS = (0.25, 0.5, 0.75)
SEARCH = dict(space="extended", pop=50, iters=1000, seed=0)
# The network in no table: a timm ResNet-18 (the resnet18-shapes table's width and stem) on another task,
# texture, which needs fine detail and so separates the allocators at 2-4 bits. 8 epochs: ~3 min on 1 thread.
EXTRA = dict(net="resnet18", data="shapes-texture", kwargs={"width": 0.25, "stem": "small_s2"}, epochs=8,
             measure_like="resnet18-shapes")
EXTRA_NAME = f"{EXTRA['net']}-{EXTRA['data']}"
COLUMNS = ["net", "source", "budget_frac", "budget_mb", "allocator", "proxy", "proxy_origin", "size_mb", "bitops",
           "acc", "acc_half_a", "acc_half_b", "noise", "proxylab_result", "bits", "seconds"]
PROXY_COLUMNS = ["net", "searched_on", "proxy", "origin", "select_fitness", "search_fitness", "alloc_acc_calib",
                 "run_dir", "command"]


def search_command(tables, out: Path, select_by: str) -> List[str]:
    return ["search", "--bench", ",".join(tables), "--space", SEARCH["space"], "--pop", str(SEARCH["pop"]),
            "--iters", str(SEARCH["iters"]), "--seed", str(SEARCH["seed"]), "--select-by", select_by,
            "--out", str(out), "--no-progress", "--format", "json"]


def run_dir(name: str, select_by: str) -> Path:
    # runs/alloc-NAME holds the earlier searches (select_by min); other picks get their own folder
    return RUNS / (f"alloc-{name}" if select_by == "min" else f"alloc-{name}-by-{select_by}")


def searched_proxy(net: str, tables, run_dir: Path, select_by: str) -> dict:
    """The best_proxy.txt of a search over ``tables`` (run now when the folder has none)."""
    argv = search_command(tables, run_dir, select_by)
    rel = run_dir.relative_to(ROOT) if run_dir.is_relative_to(ROOT) else run_dir
    shown = "proxylab " + " ".join(search_command(tables, rel, select_by)[:-3])  # as typed in the repository root
    best = run_dir / "best_proxy.txt"
    if not best.is_file():
        from proxylab.cli import main as cli

        if run_dir.exists():  # an interrupted search: continue it rather than refuse the existing folder
            argv.append("--resume")
        print(f"  searching: {shown}", flush=True)
        if cli(argv) != 0 or not best.is_file():
            raise ProxylabError(f"the search for {net} failed; run `{shown}` by hand to see why")
    formula = best.read_text().strip()
    fit = _row_of(run_dir / "hall_of_fame.csv", formula)
    check = _row_of(run_dir / "allocation_check.csv", formula)
    return {"net": net, "searched_on": ",".join(tables), "proxy": formula,
            "origin": check.get("origin", "searched"),
            "select_fitness": fit.get("select_fitness", check.get("select_fitness", "")),
            "search_fitness": fit.get("search_fitness", ""), "alloc_acc_calib": check.get("alloc_acc", ""),
            "run_dir": str(rel), "command": shown}


def _row_of(path: Path, formula: str) -> dict:
    if path.is_file():
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                if row.get("formula") == formula:
                    return row
    return {}


def best_known_proxy(tables) -> dict:
    """The known proxy with the best MEAN select-split Spearman over ``tables`` (report.best_known with "mean",
    as allocation.csv has always used; the search's own default pick is by the worst table)."""
    from proxylab.bench import load_table
    from proxylab.search.report import best_known
    from proxylab.stats import stats_for_table

    loaded = [load_table(name) for name in tables]
    best, fitness, _ = best_known(loaded, [stats_for_table(t) for t in loaded], "mean")
    if best is None:
        raise ProxylabError(f"no known proxy is valid on every one of {', '.join(tables)}; run the search instead")
    return {"proxy": best, "origin": "known", "select_fitness": fitness, "searched_on": ",".join(tables),
            "search_fitness": "", "run_dir": "", "command": "best known proxy on the select split"}


def choose_proxies(args, tables) -> List[dict]:
    nets = [(t, [t], run_dir(t, args.select_by)) for t in tables]
    if args.extra:
        nets.append((EXTRA_NAME, list(TABLES), run_dir("transfer", args.select_by)))
    if args.proxies_csv:
        with open(args.proxies_csv, newline="") as f:
            given = {r["net"]: r for r in csv.DictReader(f)}
        missing = [n for n, _, _ in nets if n not in given]
        if missing:
            raise ProxylabError(f"{args.proxies_csv} has no proxy for {', '.join(missing)}")
        return [given[n] for n, _, _ in nets]
    if args.known:
        return [dict(best_known_proxy(on), net=n) for n, on, _ in nets]
    return [searched_proxy(n, on, d, args.select_by) for n, on, d in nets]


def measure_all(name, source, problem, proxy, origin, seed, rows, measure):
    """Every allocator at every budget on one AllocationProblem;
    ``measure(bits) -> (acc, acc_half_a, acc_half_b)`` on the test split."""
    seen: Dict[tuple, tuple] = {}  # allocators often agree on a config: measure each config once

    def measure_once(bits):
        key = tuple(int(b) for b in bits)
        if key not in seen:
            seen[key] = measure(key)
        return seen[key]

    for frac in FRACTIONS:
        budget = budget_between(problem, frac)
        group = []
        for alloc in ALLOCATORS.names():
            t0 = time.perf_counter()
            try:
                res = run_allocator(alloc, problem, budget, proxy=proxy, seed=seed)
            except ProxylabError as e:  # e.g. a baseline that cannot score this network: say so, go on
                print(f"  {name} {frac:.0%}: {alloc} failed: {e}", flush=True)
                continue
            seconds = time.perf_counter() - t0
            acc, a, b = measure_once(res.bits)
            group.append({
                "net": name, "source": source, "budget_frac": frac, "budget_mb": round(budget.size_mb, 6),
                "allocator": alloc, "proxy": res.extra.get("proxy", ""),
                "proxy_origin": origin if alloc == "proxylab" else "",
                "size_mb": round(res.size_mb, 6), "bitops": res.bitops, "acc": round(acc, 5),
                "acc_half_a": round(a, 5), "acc_half_b": round(b, 5), "noise": round(abs(a - b) / 2, 5),
                "bits": " ".join(map(str, res.bits)), "seconds": round(seconds, 3),
            })
        ours = next((r for r in group if r["allocator"] == "proxylab"), None)
        for r in group:
            if ours is None or r is ours:
                r["proxylab_result"] = ""
                continue
            gap = ours["acc"] - r["acc"]
            r["proxylab_result"] = "tie" if abs(gap) <= max(ours["noise"], r["noise"]) else ("win" if gap > 0 else "loss")
        rows += group
        print(f"  {name} {frac:.0%} ({budget.size_mb:.4f} MiB): "
              + ", ".join(f"{r['allocator']} {r['acc']:.4f}" for r in group), flush=True)


def extra_measure(model, ds, act_bits: int, protocol: str, seed: int):
    """The bench builder's measurement (calib split, 256 images, seeded test halves) for a network in no table."""
    from proxylab.bench.measure import half_mask
    from proxylab.quant import QuantizedNetwork

    qn = QuantizedNetwork(model, ds.calib.x, bit_choices=(2, 3, 4), act_bits=act_bits, protocol=protocol,
                          calib_size=256)
    mask_a = torch.from_numpy(half_mask(len(ds.test.y), seed))

    def measure(bits):
        qn.apply(list(bits))
        correct = (qn.predict(ds.test.x).argmax(1) == ds.test.y).double()
        return float(correct.mean()), float(correct[mask_a].mean()), float(correct[~mask_a].mean())

    return measure


def extra_checkpoint_dir(seed: int) -> Path:
    return RUNS / "alloc-extra" / f"{EXTRA_NAME}-s{seed}-e{EXTRA['epochs']}"


def train_command(seed: int) -> List[str]:
    argv = ["train", "--net", EXTRA["net"], "--data", EXTRA["data"], "--epochs", str(EXTRA["epochs"]),
            "--seed", str(seed)]
    for k, v in EXTRA["kwargs"].items():
        argv += ["--net-arg", f"{k}={v}"]
    return argv + ["--out", str(extra_checkpoint_dir(seed)), "--no-progress"]


def train_extra_net(seed: int):
    """The network in no table, trained once by `proxylab train` (seeded) into runs/alloc-extra/; delete the
    folder to retrain."""
    from proxylab.cli import main as cli
    from proxylab.data import get_dataset
    from proxylab.nets import load_checkpoint

    folder = extra_checkpoint_dir(seed)
    if not (folder / "config.json").is_file():
        print(f"{EXTRA_NAME}: training: proxylab {' '.join(train_command(seed))}", flush=True)
        if cli(train_command(seed)) != 0:
            raise ProxylabError(f"training {EXTRA_NAME} failed")
    model, config = load_checkpoint(folder)
    print(f"{EXTRA_NAME}: checkpoint {folder}, float test acc {config['test_acc']:.4f}", flush=True)
    return model.eval(), get_dataset(EXTRA["data"], seed=seed)


def plot(rows: List[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nets = list(dict.fromkeys(r["net"] for r in rows))
    allocs = list(dict.fromkeys(r["allocator"] for r in rows))
    markers = dict(zip(allocs, "o^svDP*x"))
    fig, axes = plt.subplots(1, len(nets), figsize=(4.2 * len(nets), 3.8), squeeze=False)
    for ax, net in zip(axes[0], nets):
        for alloc in allocs:
            pts = sorted((r["size_mb"], r["acc"]) for r in rows if r["net"] == net and r["allocator"] == alloc)
            if pts:
                xs, ys = zip(*pts)
                style = dict(lw=2.2, zorder=3) if alloc == "proxylab" else dict(lw=1, alpha=0.8)
                ax.plot(xs, ys, marker=markers[alloc], label=alloc, **style)
        ax.set_title(net, fontsize=10)
        ax.set_xlabel("weight size (MiB)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (PTQ)")
    axes[0][-1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summary(rows: List[dict]) -> None:
    verdicts = [r["proxylab_result"] for r in rows if r["proxylab_result"]]
    print(f"proxylab vs baselines over {len(verdicts)} (net, budget, baseline) pairs: "
          f"{verdicts.count('win')} wins, {verdicts.count('tie')} ties, {verdicts.count('loss')} losses")
    for net in dict.fromkeys(r["net"] for r in rows):
        for frac in FRACTIONS:
            v = [r["proxylab_result"] for r in rows if r["net"] == net and r["budget_frac"] == frac and r["proxylab_result"]]
            print(f"  {net} {frac:.0%}: {v.count('win')}W {v.count('tie')}T {v.count('loss')}L")
    for r in rows:
        if r["proxylab_result"] == "loss":
            print(f"  loss: {r['net']} {r['budget_frac']:.0%} vs {r['allocator']} ({r['acc']:.4f})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tables", default=",".join(TABLES))
    ap.add_argument("--proxies-csv", help="take the proxies from a former run's allocation_proxies.csv (no search)")
    ap.add_argument("--known", action="store_true", help="best known proxy on the select split instead of a search")
    ap.add_argument("--select-by", choices=("allocation", "min", "mean"), default="allocation",
                    help="the searches' pick (default allocation; min: the earlier runs, by select Spearman)")
    ap.add_argument("--no-extra", dest="extra", action="store_false", help="skip the network in no table")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the machine is shared)")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from proxylab.bench import load_table
    from proxylab.bench.measure import Measurer, spec_from_table
    from proxylab.stats import compute_stats, default_cache_dir, stats_for_table

    tables = [t for t in args.tables.split(",") if t]
    proxies = {p["net"]: p for p in choose_proxies(args, tables)}
    for p in proxies.values():
        print(f"{p['net']}: proxy {p['proxy']} (searched on {p['searched_on']}, select fitness "
              f"{p['select_fitness']})", flush=True)

    def origin(net):
        p = proxies[net]
        picked = f"; its allocation check picked the known proxy {p['proxy']}" if p.get("origin") == "known" and p["run_dir"] else ""
        fitness = f"select fitness {float(p['select_fitness']):.3f}" if p["select_fitness"] else ""
        calib = f"calib allocation acc {float(p['alloc_acc_calib']):.4f}" if p.get("alloc_acc_calib") else ""
        said = "; ".join(x for x in (fitness, calib) if x)
        return f"{p['command']}{picked}" + (f" ({said})" if said else "")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "allocation_proxies.csv", list(proxies.values()), PROXY_COLUMNS)
    rows: List[dict] = []
    for name in tables:
        table = load_table(name)
        t0 = time.perf_counter()
        # the statistics the search scored its proxies on; OMPQ reads their full-batch Gram matrices
        stats = stats_for_table(table)
        print(f"{name}: statistics in {time.perf_counter() - t0:.0f} s", flush=True)
        problem = AllocationProblem.from_stats(stats, table.bit_choices, int(table.meta["act_bits"]))
        measurer = Measurer(spec_from_table(table))
        measure_all(name, "table", problem, proxies[name]["proxy"], origin(name), args.seed, rows, measurer.measure)
        write_csv(out / "allocation.csv", rows, COLUMNS)  # each network as it finishes: a long run keeps its part

    if args.extra:
        like = load_table(EXTRA["measure_like"])
        protocol, act_bits = like.meta["protocol"]["name"], int(like.meta["act_bits"])
        model, ds = train_extra_net(args.seed)
        stats = compute_stats(model, ds.calib.x, ds.calib.y, bit_choices=(2, 3, 4), seed=args.seed,
                              cache_dir=default_cache_dir())
        problem = AllocationProblem.from_stats(stats, (2, 3, 4), act_bits)
        measure_all(EXTRA_NAME, "no table", problem, proxies[EXTRA_NAME]["proxy"], origin(EXTRA_NAME), args.seed,
                    rows, extra_measure(model, ds, act_bits, protocol, args.seed))

    write_csv(out / "allocation.csv", rows, COLUMNS)
    plot(rows, out / "allocation_pareto.png")
    summary(rows)
    print(f"wrote {out / 'allocation.csv'}, {out / 'allocation_proxies.csv'} and {out / 'allocation_pareto.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
