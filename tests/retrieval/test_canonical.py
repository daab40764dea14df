"""Canonical images: conversion from real data sets and validation of every bad input."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from proxylab.errors import ProxylabError
from proxylab.retrieval.canonical import IMAGE_SHAPE, check_images, to_canonical


class _FakeDataset:
    """The two things to_canonical reads from a proxylab Dataset: its name, mean/std and denormalize."""

    def __init__(self, mean, std):
        self.name = "fake"
        self.mean, self.std = tuple(mean), tuple(std)

    def denormalize(self, x):
        m = torch.tensor(self.mean).view(1, -1, 1, 1)
        s = torch.tensor(self.std).view(1, -1, 1, 1)
        return x * s + m


def test_grey_images_denormalise_resize_and_repeat():
    rng = np.random.default_rng(0)
    raw = torch.from_numpy(rng.uniform(size=(5, 1, 28, 28)).astype(np.float32))
    ds = _FakeDataset([0.3], [0.2])
    out = to_canonical((raw - 0.3) / 0.2, ds)
    assert tuple(out.shape) == (5, *IMAGE_SHAPE) and out.dtype == torch.float32
    expected = F.interpolate(raw, size=(32, 32), mode="bilinear", align_corners=False)
    for c in range(3):  # each RGB channel is the same grey image
        torch.testing.assert_close(out[:, c:c + 1], expected.clamp(0, 1), atol=1e-5, rtol=0)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    check_images(out)


def test_rgb_32_is_just_denormalised():
    raw = torch.rand(3, 3, 32, 32)
    ds = _FakeDataset([0.5, 0.4, 0.3], [0.25, 0.2, 0.1])
    norm = (raw - torch.tensor(ds.mean).view(1, 3, 1, 1)) / torch.tensor(ds.std).view(1, 3, 1, 1)
    torch.testing.assert_close(to_canonical(norm, ds), raw, atol=1e-5, rtol=0)


def test_real_digits_dataset_round_trip():
    from proxylab.data import get_dataset

    ds = get_dataset("digits")
    out = to_canonical(ds.test.x[:10], ds)
    assert tuple(out.shape) == (10, *IMAGE_SHAPE)
    check_images(out)
    # digits pixels span the full [0, 1] range: the denormalised images must reach both ends
    assert float(out.min()) < 0.05 and float(out.max()) > 0.9


def test_to_canonical_rejects_channel_mismatch():
    with pytest.raises(ProxylabError, match="channels"):
        to_canonical(torch.zeros(2, 3, 8, 8), _FakeDataset([0.5], [0.2]))


@pytest.mark.parametrize("bad,match", [
    (np.zeros((2, 3, 32, 32), dtype=np.uint8), "float"),
    (torch.zeros(2, 3, 32, 32, dtype=torch.int64), "float"),
    (np.zeros((3, 32, 32), dtype=np.float32), "shape"),
    (np.zeros((2, 1, 32, 32), dtype=np.float32), "shape"),
    (np.zeros((2, 3, 28, 28), dtype=np.float32), "shape"),
    (np.zeros((0, 3, 32, 32), dtype=np.float32), "empty"),
    (np.full((1, 3, 32, 32), np.nan, dtype=np.float32), "NaN"),
    (np.full((1, 3, 32, 32), np.inf, dtype=np.float32), "NaN"),
    (np.full((1, 3, 32, 32), 1.01, dtype=np.float32), r"\[0, 1\]"),
    (np.full((1, 3, 32, 32), -0.5, dtype=np.float32), r"\[0, 1\]"),
    ([[1.0]], "numpy array"),
])
def test_check_images_rejects(bad, match):
    with pytest.raises(ProxylabError, match=match):
        check_images(bad)


def test_check_images_accepts_and_clamps_tiny_overshoot():
    x = np.full((2, 3, 32, 32), 0.5, dtype=np.float64)
    x[0, 0, 0, 0] = 1.0005
    x[1, 0, 0, 0] = -0.0005
    t = check_images(x)
    assert t.dtype == torch.float32 and t.is_contiguous()
    assert float(t.max()) == 1.0 and float(t.min()) == 0.0
    assert float(t[0, 1, 1, 1]) == 0.5


def test_check_images_names_what():
    with pytest.raises(ProxylabError, match="query images"):
        check_images(np.zeros((1, 3, 4, 4), np.float32), what="query images")
