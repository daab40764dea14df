"""A real but tiny MQ-Bench table for the search tests: a 5-layer CNN trained on scikit-learn's 8x8 digits,
quantized with proxylab.quant at every one of the 3^5 configurations of {2, 3, 4} bits."""
from __future__ import annotations

import itertools

import numpy as np
import torch
from torch import nn


def _net(width: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1), nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU(), nn.Flatten(),
        nn.Linear(2 * width * 16, 32), nn.ReLU(), nn.Linear(32, 10),
    )


def _digits(seed: int):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    x = (x - x.mean()) / x.std()
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    x, y = x[perm], y[perm]
    return (x[:1000], y[:1000]), (x[1000:1200], y[1000:1200]), (x[1200:1500], y[1200:1500])


def build_tiny(seed: int = 0, width: int = 4, epochs: int = 4, name: str = "tiny-digits"):
    """(BenchTable, NetworkStats) of a freshly trained tiny network; deterministic for a seed."""
    from proxylab.bench import BenchTable
    from proxylab.quant import QuantizedNetwork
    from proxylab.stats import compute_stats

    torch.manual_seed(seed)
    (xtr, ytr), (xcal, ycal), (xte, yte) = _digits(seed)
    model = _net(width)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(ytr), generator=g).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xtr[idx]), ytr[idx]).backward()
            opt.step()
    model.eval()
    qn = QuantizedNetwork(model, xcal, bit_choices=(2, 3, 4))
    configs = np.array(list(itertools.product((2, 3, 4), repeat=len(qn.layer_names))), dtype=np.int64)
    half = len(yte) // 2
    acc, acc_a, acc_b = [], [], []
    with torch.no_grad():
        for bits in configs:
            qn.apply([int(b) for b in bits])
            pred = qn.predict(xte).argmax(1)
            right = (pred == yte).float()
            acc.append(float(right.mean()))
            acc_a.append(float(right[:half].mean()))
            acc_b.append(float(right[half:].mean()))
    columns = {
        "cfg_id": np.arange(len(configs)), "bits": configs,
        "size_mb": np.array([qn.size_mb(b) for b in configs], dtype=float),
        "bitops": np.array([qn.bitops(b) for b in configs], dtype=float),
        "acc": np.array(acc), "acc_half_a": np.array(acc_a), "acc_half_b": np.array(acc_b),
    }
    meta = {"name": name, "layer_names": list(qn.layer_names), "bit_choices": [2, 3, 4],
            "params": [int(p) for p in qn.params], "macs": [int(m) for m in qn.macs],
            "splits": {"seed": seed, "fractions": {"search": 0.4, "select": 0.2, "test": 0.4}}}
    table = BenchTable(columns, meta)
    stats = compute_stats(model, xcal, ycal, bit_choices=(2, 3, 4), batch_size=64, seed=seed, hessian=True,
                          cache_dir=None, hessian_probes=4, hessian_iters=5)
    return table, stats
