"""Bit allocation under a size budget: proxylab's allocation against every baseline allocator, measured.

For each shipped bench table's network, plus one network that is in no table (vgg_small trained here on
shapes-color), at size budgets 25% / 50% / 75% of the way from all-2-bit to all-4-bit, every allocator in
proxylab.allocate.ALLOCATORS picks a configuration and its real PTQ accuracy is measured on the test split
(the table's own protocol and activation bits).

proxylab's allocator uses, per table, the proxy named in --proxy-file (a search's best_proxy.txt) or else the
known proxy with the best Spearman on the table's *select* split (never the test split). The network in no
table gets the proxy with the best mean select-split Spearman over the tables: nothing of that network is
looked at before allocating.

Noise: each accuracy is also measured on the two halves of the test split (a fixed seeded cut). The
split-half estimate of one accuracy's standard error is |acc_a - acc_b| / 2, and proxylab ties a baseline
when the accuracy gap is within the larger of the two allocations' estimates; else it wins or loses.

Writes benchmarks/results/allocation.csv and benchmarks/results/allocation_pareto.png.
Run: .venv/bin/python benchmarks/allocation.py   (about 10-20 minutes on 2 CPU cores; statistics cached)
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch

from proxylab.allocate import ALLOCATORS, AllocationProblem, budget_between, run_allocator
from proxylab.errors import ProxylabError

RESULTS = Path(__file__).resolve().parent / "results"
TABLES = ("resnet20-mnist5k", "mobilenetv2-animal", "resnet18-shapes")
FRACTIONS = (0.25, 0.5, 0.75)
# OMPQ's orthogonality needs several images' activations; the stats default keeps 64k values per layer,
# which on a 32x32 feature map with many channels is a single image.
STATS_KW = dict(hessian=True, act_images=8, act_max_elements=1 << 20)
COLUMNS = ["net", "source", "budget_frac", "budget_mb", "allocator", "proxy", "size_mb", "bitops", "acc",
           "acc_half_a", "acc_half_b", "noise", "proxylab_result", "bits", "seconds"]


def select_proxy(table, stats) -> Dict[str, float]:
    """Select-split Spearman of every known proxy that can score this network (invalid ones skipped)."""
    from proxylab.bench import spearman
    from proxylab.proxy import KNOWN_PROXIES, score_configs
    from proxylab.allocate import resolve_proxy

    sel = table.split("select")
    out = {}
    for name in sorted(KNOWN_PROXIES):
        try:
            scores = score_configs(resolve_proxy(name), stats, table.bits[sel])
        except ProxylabError:
            continue
        rho = spearman(scores, table.acc[sel])
        if np.isfinite(rho):
            out[name] = rho
    return out


def measure_all(name, source, stats, proxy, act_bits, bit_choices, seed, rows, measure):
    """Every allocator at every budget; ``measure(bits) -> (acc, acc_half_a, acc_half_b)`` on the test split."""
    problem = AllocationProblem.from_stats(stats, bit_choices, act_bits)
    for frac in FRACTIONS:
        budget = budget_between(problem, frac)
        group = []
        for alloc in ALLOCATORS.names():
            t0 = time.perf_counter()
            try:
                res = run_allocator(alloc, problem, budget, proxy=proxy, seed=seed)
            except ProxylabError as e:  # e.g. a baseline proxy that cannot score this network: say so, go on
                print(f"  {name} {frac:.0%}: {alloc} failed: {e}", flush=True)
                continue
            seconds = time.perf_counter() - t0
            acc, a, b = measure(res.bits)
            group.append({
                "net": name, "source": source, "budget_frac": frac, "budget_mb": round(budget.size_mb, 6),
                "allocator": alloc, "proxy": res.extra.get("proxy", ""),
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


def train_extra_net(seed: int, epochs: int):
    """vgg_small on shapes-color: a network and a task in no shipped table. The trained checkpoint is kept
    under the proxylab cache, so a rerun with the same seed and epochs skips training."""
    from proxylab.data import get_dataset
    from proxylab.nets import create_net, load_checkpoint, save_checkpoint, train_net
    from proxylab.stats import default_cache_dir

    ds = get_dataset("shapes-color", seed=seed)
    folder = default_cache_dir().parent / "allocation-bench" / f"vgg_small-shapes-color-s{seed}-e{epochs}"
    if (folder / "config.json").is_file():
        model, config = load_checkpoint(folder)
        print(f"  vgg_small on shapes-color: cached checkpoint, float test acc {config['test_acc']:.4f}", flush=True)
        return model.eval(), ds
    torch.manual_seed(seed)
    model = create_net("vgg_small", num_classes=ds.num_classes, in_channels=ds.in_channels, image_size=ds.image_size)
    info = train_net(model, ds, epochs=epochs, seed=seed, progress=False)
    print(f"  vgg_small on shapes-color: float test acc {info['test_acc']:.4f} after {epochs} epochs "
          f"({info['seconds']:.0f} s)", flush=True)
    save_checkpoint(folder, model, {"net": "vgg_small", "data": "shapes-color", "num_classes": ds.num_classes,
                                    "in_channels": ds.in_channels, "image_size": ds.image_size, "kwargs": {},
                                    "seed": seed, "epochs": epochs, "test_acc": info["test_acc"]})
    return model.eval(), ds


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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tables", default=",".join(TABLES))
    ap.add_argument("--proxy-file", help="a search's best_proxy.txt: use this proxy for every network")
    ap.add_argument("--proxy", help="a known proxy's name or a formula: use it for every network")
    ap.add_argument("--extra-epochs", type=int, default=1, help="training epochs of the network in no table (0: skip it)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)

    from proxylab.bench import load_table
    from proxylab.bench.measure import Measurer, spec_from_table
    from proxylab.stats import compute_stats, default_cache_dir, stats_for_table

    fixed_proxy = Path(args.proxy_file).read_text().strip() if args.proxy_file else args.proxy
    rows: List[dict] = []
    select_rho: Dict[str, List[float]] = {}
    last_protocol, last_act_bits = "rtn", 8
    for name in [t for t in args.tables.split(",") if t]:
        table = load_table(name)
        t0 = time.perf_counter()
        stats = stats_for_table(table, **STATS_KW)
        print(f"{name}: statistics in {time.perf_counter() - t0:.0f} s", flush=True)
        rhos = select_proxy(table, stats)
        for k, v in rhos.items():
            select_rho.setdefault(k, []).append(v)
        proxy = fixed_proxy or max(rhos, key=rhos.get)
        print(f"  proxy: {proxy} (select-split Spearman {rhos.get(proxy, float('nan')):.3f})", flush=True)
        protocol, act_bits = table.meta["protocol"]["name"], int(table.meta["act_bits"])
        last_protocol, last_act_bits = protocol, act_bits
        measurer = Measurer(spec_from_table(table))
        measure_all(name, "table", stats, proxy, act_bits, table.bit_choices, args.seed, rows, measurer.measure)

    if args.extra_epochs > 0:
        model, ds = train_extra_net(args.seed, args.extra_epochs)
        stats = compute_stats(model, ds.calib.x, ds.calib.y, bit_choices=(2, 3, 4), seed=args.seed,
                              cache_dir=default_cache_dir(), **STATS_KW)
        if fixed_proxy:
            proxy = fixed_proxy
        elif not select_rho:
            raise ProxylabError("the network in no table needs --proxy / --proxy-file when no table is benchmarked")
        else:
            complete = {k: np.mean(v) for k, v in select_rho.items() if len(v) == max(map(len, select_rho.values()))}
            proxy = max(complete, key=complete.get)
        print(f"vgg_small-shapes-color: proxy {proxy}", flush=True)
        measure_all("vgg_small-shapes-color", "no table", stats, proxy, last_act_bits, (2, 3, 4), args.seed, rows,
                    extra_measure(model, ds, last_act_bits, last_protocol, args.seed))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "allocation.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    plot(rows, out / "allocation_pareto.png")
    verdicts = [r["proxylab_result"] for r in rows if r["proxylab_result"]]
    print(f"proxylab vs baselines over {len(verdicts)} (net, budget, baseline) pairs: "
          f"{verdicts.count('win')} wins, {verdicts.count('tie')} ties, {verdicts.count('loss')} losses")
    for r in rows:
        if r["proxylab_result"] == "loss":
            print(f"  loss: {r['net']} {r['budget_frac']:.0%} vs {r['allocator']} ({r['acc']:.4f})")
    print(f"wrote {out / 'allocation.csv'} and {out / 'allocation_pareto.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
