"""How fast a bench build can score configurations: configs per minute against plain forwards per minute.

ResNet-20 on 1000 mnist5k test images. One "config" = apply a random per-layer weight configuration over
{2,3,4} (8-bit activations, rtn protocol) + evaluate top-1 accuracy on the images. One "forward" = the plain
float network (no quantization, no BN folding) run over the same images with the same batch size, in
whichever memory format is faster for it (both are timed), so the ratio is not flattered by a slow baseline.
The two are timed in interleaved rounds and the medians reported, because the machine is shared and noisy.
Both run in this one process with the same torch thread count (--threads, default 1: on a shared machine
extra threads oversubscribe the cores and make timings erratic; the ratio is the figure, not the rates).
The configs side includes everything a bench build pays per configuration: check and copy of the precomputed
weights, and the quantized forward pass (activation quantizer writing into pooled buffers, which the warm-up
call fills exactly as a bench build's first configuration does).

    nice python benchmarks/quant_speed.py [--rounds 7] [--per-round 3] [--threads 1] [--checkpoint DIR]

Writes benchmarks/results/quant_speed.csv: net, images, configs_per_min, forward_per_min, ratio (wall clock),
the same by this process's CPU time (cpu_*: what a loaded machine's waiting does not inflate), threads, load_avg.
Each side's baseline is the faster plain memory format by that clock.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _results import write_csv

RESULTS = Path(__file__).resolve().parent / "results" / "quant_speed.csv"
TABLE = "resnet20-mnist5k"


def reference_network(epochs: int, seed: int, checkpoint=None):
    """A given checkpoint, else the shipped table's trained ResNet-20, else one trained here for a few epochs."""
    import proxylab.bench
    from proxylab.data import get_dataset
    from proxylab.nets import create_net, load_checkpoint, train_net

    if checkpoint:
        model, config = load_checkpoint(checkpoint)
        return model.eval(), get_dataset(config["data"], seed=seed), f"checkpoint {checkpoint}"
    shipped = Path(proxylab.bench.__file__).parent / "shipped" / TABLE
    if (shipped / "table.csv").exists():
        from proxylab.bench import load_table

        model, ds, _ = load_table(TABLE).load_network()
        return model.eval(), ds, f"shipped {TABLE}"
    ds = get_dataset("mnist5k", seed=seed)
    model = create_net("resnet20", num_classes=ds.num_classes, in_channels=ds.in_channels, image_size=ds.image_size)
    print(f"no shipped {TABLE} table: training resnet20 for {epochs} epochs...", file=sys.stderr)
    result = train_net(model, ds, epochs=epochs, seed=seed, progress=False)
    return model.eval(), ds, f"trained here ({epochs} epochs, test acc {result['test_acc']:.3f})"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--per-round", type=int, default=3, help="configs (and forwards) timed per round")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=4, help="training epochs when no shipped network exists")
    parser.add_argument("--checkpoint", help="a resnet20 mnist5k checkpoint folder to use instead")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both sides")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)

    from proxylab.quant import QuantizedNetwork

    torch.set_num_threads(args.threads)
    model, ds, source = reference_network(args.epochs, args.seed, args.checkpoint)
    x, y = ds.test.x[: args.images], ds.test.y[: args.images]
    qn = QuantizedNetwork(model, ds.train.x, bit_choices=(2, 3, 4), act_bits=8, protocol="rtn")
    plain = {"contiguous": copy.deepcopy(model).eval(),
             "channels_last": copy.deepcopy(model).eval().to(memory_format=torch.channels_last)}
    rng = np.random.default_rng(args.seed)

    def forward(variant: str) -> None:
        net = plain[variant]
        with torch.inference_mode():
            for start in range(0, len(x), args.batch_size):
                xb = x[start : start + args.batch_size]
                if variant == "channels_last":
                    xb = xb.contiguous(memory_format=torch.channels_last)
                net(xb)

    accs = []

    def config() -> None:
        qn.apply(rng.choice(qn.bit_choices, size=len(qn)))
        accs.append(qn.evaluate(x, y, batch_size=args.batch_size))

    def per_minute(fn):
        """(wall, CPU) rate per minute over per_round calls. This process runs torch on --threads threads,
        so its CPU time is the work done; on a loaded machine the wall clock also counts waiting for a core."""
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(args.per_round):
            fn()
        return (60.0 * args.per_round / (time.perf_counter() - wall),
                60.0 * args.per_round / (time.process_time() - cpu))

    config(), forward("contiguous"), forward("channels_last")  # warm-up: allocator, oneDNN primitives, buffers
    jobs = {"configs": config, "contiguous": lambda: forward("contiguous"),
            "channels_last": lambda: forward("channels_last")}
    rates = {k: [] for k in jobs}
    cpu_rates = {k: [] for k in jobs}
    for r in range(args.rounds):
        order = list(jobs) if r % 2 == 0 else list(jobs)[::-1]  # alternate, so a drift in load hits both sides
        for k in order:
            w, c = per_minute(jobs[k])
            rates[k].append(w)
            cpu_rates[k].append(c)
    med = {k: float(np.median(v)) for k, v in rates.items()}
    cpu_med = {k: float(np.median(v)) for k, v in cpu_rates.items()}
    baseline = max(("contiguous", "channels_last"), key=lambda k: med[k])
    cpu_baseline = max(("contiguous", "channels_last"), key=lambda k: cpu_med[k])
    ratio = med["configs"] / med[baseline]
    cpu_ratio = cpu_med["configs"] / cpu_med[cpu_baseline]

    row = {"net": "resnet20", "images": len(x), "configs_per_min": round(med["configs"], 1),
           "forward_per_min": round(med[baseline], 1), "ratio": round(ratio, 3),
           "cpu_configs_per_min": round(cpu_med["configs"], 1), "cpu_forward_per_min": round(cpu_med[cpu_baseline], 1),
           "cpu_ratio": round(cpu_ratio, 3), "threads": torch.get_num_threads(),
           "load_avg": round(os.getloadavg()[0], 1)}
    out = write_csv(args.out, [row])

    print(f"network: {source}; {len(qn)} quantized layers, BN folded: {len(qn.folded_bn)}")
    print(f"threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}, "
          f"{args.rounds} rounds x {args.per_round}")
    for k, v in rates.items():
        print(f"  {k:>14}/min: wall median {med[k]:7.1f}  (rounds: {', '.join(f'{r:.1f}' for r in v)})")
        print(f"  {'':>14}      CPU  median {cpu_med[k]:7.1f}  (rounds: {', '.join(f'{r:.1f}' for r in cpu_rates[k])})")
    paired = np.median(np.array(rates["configs"]) / np.array(rates[baseline]))
    print(f"configs/min {med['configs']:.1f} vs plain forwards/min {med[baseline]:.1f} ({baseline}): "
          f"ratio {ratio:.3f} (median of per-round ratios {paired:.3f}); by CPU time {cpu_ratio:.3f} ({cpu_baseline})")
    print(f"accuracy of the {len(accs)} random configs: min {min(accs):.3f} median {np.median(accs):.3f} "
          f"max {max(accs):.3f}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
