"""Tiny real networks and data for the stats tests (a few hundred weights, 6x6 inputs), so that exact
Hessians and per-sample loops stay cheap enough to serve as oracles."""
from __future__ import annotations

import pytest
import torch
from torch import nn


class TinyNet(nn.Module):
    """conv -> BN -> ReLU -> conv (stride 2) -> ReLU -> pool -> linear.

    The head is declared before the stem on purpose: forward order must come from running the network,
    not from registration order.
    """

    def __init__(self, classes: int = 3):
        super().__init__()
        self.head = nn.Linear(4, classes)
        self.stem = nn.Conv2d(1, 3, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(3)
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        x = torch.relu(self.conv(x))
        return self.head(x.mean((2, 3)))


def make_tiny(seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)
    net = TinyNet()
    with torch.no_grad():  # non-trivial BN statistics, so eval mode differs from identity
        net.bn.running_mean.uniform_(-0.5, 0.5)
        net.bn.running_var.uniform_(0.5, 2.0)
        net.bn.weight.uniform_(-1.5, 1.5)
        net.bn.bias.uniform_(-0.5, 0.5)
    return net


@pytest.fixture
def tiny():
    return make_tiny(0)


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(24, 1, 6, 6, generator=g)
    y = torch.randint(0, 3, (24,), generator=g)
    return x, y


@pytest.fixture
def tiny_factory():
    return make_tiny


@pytest.fixture
def batch_order():
    """The documented draw of compute_stats: randperm(n) from a generator seeded with ``seed``."""

    def order(n: int, seed: int) -> torch.Tensor:
        return torch.randperm(n, generator=torch.Generator().manual_seed(seed))

    return order


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every stats test runs on one torch thread (tests/conftest.py)."""
