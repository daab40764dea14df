import pickle

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_pair():
    """Two real tiny tables (different seeds: different weights and accuracies) with their statistics."""
    from .tiny import build_tiny

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors; one thread keeps every float reduction in the same order
    try:
        a = build_tiny(seed=0, name="tiny-a")
        b = build_tiny(seed=1, name="tiny-b")
    finally:
        torch.set_num_threads(threads)
    return a, b


@pytest.fixture(scope="session")
def tiny(tiny_pair):
    return tiny_pair[0]


@pytest.fixture(scope="session")
def tiny_pickle(tiny, tmp_path_factory):
    """The tiny table + stats on disk, for subprocesses (a test file of our own, so pickle is fine)."""
    path = tmp_path_factory.mktemp("tiny") / "tiny.pkl"
    path.write_bytes(pickle.dumps(tiny))
    return path
