"""Session fixtures: real (seeded, untrained) extractor and encoder files, tokens, tiny black-box models.

The encoders and extractor are the real proxylab classes with seeded random weights, saved to files and
served with `proxylab serve --encoders/--extractor`: the service's plumbing is what these tests check, and
it must not depend on the shipped weights being present.
"""
from pathlib import Path

import numpy as np
import pytest

from tests.service.server import write_tokens

ENC_DIM = 32


@pytest.fixture(scope="session")
def encoder_files(tmp_path_factory):
    import torch

    from proxylab.retrieval.encoders import Encoders
    from proxylab.retrieval.features import FeatureExtractor, _build_trunk

    folder = tmp_path_factory.mktemp("encoders")
    torch.manual_seed(0)
    FeatureExtractor(_build_trunk(), id="unsaved").save(folder / "extractor.pt")
    fx = FeatureExtractor.load(folder / "extractor.pt")  # its id is the file's hash, as for the shipped one
    torch.manual_seed(1)
    enc = Encoders(feature_dim=fx.dim, width=32, dim=ENC_DIM, extractor_id=fx.id, extractor=fx)
    enc.save(folder / "encoders.pt")
    return {"extractor": folder / "extractor.pt", "encoders": folder / "encoders.pt"}


@pytest.fixture(scope="session")
def encoders(encoder_files):
    """The same encoders the served process loads, for computing expected answers in the test process."""
    from proxylab.retrieval.encoders import Encoders
    from proxylab.retrieval.features import FeatureExtractor

    return Encoders.load(encoder_files["encoders"], extractor=FeatureExtractor.load(encoder_files["extractor"]))


@pytest.fixture(scope="session")
def tokens_file(tmp_path_factory) -> Path:
    return write_tokens(tmp_path_factory.mktemp("tokens") / "tokens.txt")


def linear_model(num_classes: int, seed: int):
    """A tiny real torch classifier of canonical images (flatten + linear), as a black box."""
    import torch
    import torch.nn as nn

    from proxylab.retrieval.blackbox import TorchBlackBox

    torch.manual_seed(seed)
    net = nn.Sequential(nn.AvgPool2d(4), nn.Flatten(), nn.Linear(3 * 8 * 8, num_classes))
    with torch.no_grad():
        net[2].weight.mul_(20.0)  # confident, so anchors and boundaries differ between classes
    return TorchBlackBox(net, num_classes=num_classes, name=f"linear{num_classes}-{seed}")


def small_pool(n: int = 48, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 32, 32, generator=g)


def make_signature(encoders, num_classes: int, seed: int):
    from proxylab.retrieval.signature import capture_signature

    return capture_signature(linear_model(num_classes, seed), extractor=encoders.extractor, pool=small_pool(),
                             steps=2)


def samples(n_per_class: int = 4, classes: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.random((n_per_class * classes, 3, 32, 32), dtype=np.float32)
    labels = np.repeat(np.arange(classes), n_per_class).astype(np.int64)
    return images, labels
