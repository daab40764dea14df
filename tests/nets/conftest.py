"""Tiny real data for the nets tests: scikit-learn's 8x8 digits in the shape of a proxylab data set, so these
tests never wait for (or depend on) proxylab.data."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch


def make_split(x: torch.Tensor, y: torch.Tensor) -> SimpleNamespace:
    return SimpleNamespace(x=x, y=y)


def digits_dataset(n_train: int = 300, n_test: int = 200, seed: int = 0) -> SimpleNamespace:
    from sklearn.datasets import load_digits

    d = load_digits()
    order = np.random.default_rng(seed).permutation(len(d.target))
    x = torch.tensor(d.images[order], dtype=torch.float32)[:, None]
    y = torch.tensor(d.target[order], dtype=torch.long)
    mean, std = x[:n_train].mean(), x[:n_train].std()
    x = (x - mean) / std
    train = make_split(x[:n_train], y[:n_train])
    test = make_split(x[n_train:n_train + n_test], y[n_train:n_train + n_test])
    return SimpleNamespace(name="digits-tiny", num_classes=10, in_channels=1, image_size=8, train=train, calib=test, test=test)


@pytest.fixture(scope="session")
def tiny_digits() -> SimpleNamespace:
    return digits_dataset()
