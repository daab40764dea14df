"""Quantized accuracy on a really trained network: 8-bit keeps float accuracy, 4-bit is clearly above 2-bit."""
import numpy as np
import pytest
import torch
from torch import nn

from proxylab.quant import QuantizedNetwork


def _digits():
    datasets = pytest.importorskip("sklearn.datasets")
    d = datasets.load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    x = (x - x[:1200].mean()) / x[:1200].std()
    return (x[:1200], y[:1200]), (x[1200:], y[1200:])


def _small_cnn():
    def block(i, o, s):
        return [nn.Conv2d(i, o, 3, s, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU()]

    return nn.Sequential(*block(1, 8, 1), *block(8, 16, 2), *block(16, 16, 1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    (xtr, ytr), test = _digits()
    model = _small_cnn()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()
    # Ops this small only pay synchronisation for a second thread: on a busy 2-core machine one epoch took
    # 12 s with 2 threads and 0.1 s with 1. Restored right after, so no other test sees the change.
    torch.set_num_threads(1)
    try:
        for _ in range(6):  # ~94% test accuracy
            model.train()
            for idx in torch.randperm(len(xtr), generator=gen).split(64):
                loss = nn.functional.cross_entropy(model(xtr[idx]), ytr[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval(), xtr, test


def test_8bit_keeps_float_accuracy_and_4bit_beats_2bit(trained):
    model, xtr, (x, y) = trained
    qn = QuantizedNetwork(model, xtr, bit_choices=(2, 4, 8))
    n = len(qn)
    float_acc = qn.evaluate(x, y)
    assert float_acc > 0.9  # the reference network is really trained
    qn.apply([8] * n)
    acc8 = qn.evaluate(x, y)
    qn.apply([4] * n)
    acc4 = qn.evaluate(x, y)
    qn.apply([2] * n)
    acc2 = qn.evaluate(x, y)
    assert abs(acc8 - float_acc) <= 0.005
    assert acc4 > acc2 + 0.1
    assert acc4 > float_acc - 0.1


def test_calibrated_protocol_rescues_low_bits(trained):
    model, xtr, (x, y) = trained
    rng = np.random.default_rng(0)
    configs = rng.choice([2, 3, 4], size=(12, 4))
    accs = {}
    for protocol in ("rtn", "bias_correction"):
        qn = QuantizedNetwork(model, xtr, protocol=protocol)
        accs[protocol] = []
        for cfg in configs:
            qn.apply(cfg)
            accs[protocol].append(qn.evaluate(x, y))
    assert np.mean(accs["bias_correction"]) > np.mean(accs["rtn"])
    assert np.mean(np.array(accs["bias_correction"]) > 0.3) >= 0.75  # most random configs stay far above chance
