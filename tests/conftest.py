"""Fixtures shared by every test folder."""
import pytest


@pytest.fixture
def one_thread():
    """One torch thread, restored afterwards: on a shared 2-core machine torch's default threads oversubscribe
    the cores and small tensors run several times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
