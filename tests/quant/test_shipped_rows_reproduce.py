"""Re-measuring rows of the shipped tables with today's quantizer gives the recorded accuracies exactly.

The shipped tables were measured once; every proxy result is judged against them. A change to the quantized
forward pass (activation quantizer kernel, buffer reuse, BN folding) that moved even one test image's
prediction would silently make the tables stale, so a sample of rows (the uniform configurations plus seeded
random rows) is rebuilt through the same ``Measurer`` path the table builder uses and compared for equality.
"""
import numpy as np
import pytest

from proxylab.bench import load_table
from proxylab.bench.measure import Measurer, spec_from_table


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def remeasure(name: str, n_random: int):
    t = load_table(name)
    rows = [t.index_of(tuple([b] * len(t.layer_names))) for b in t.bit_choices]
    rng = np.random.default_rng(0)
    rows += sorted(rng.choice(np.setdiff1d(np.arange(len(t)), rows), size=n_random, replace=False).tolist())
    m = Measurer(spec_from_table(t))
    for i in rows:
        got = m.measure(t.bits[i].tolist())
        want = (t.acc[i], t.acc_half_a[i], t.acc_half_b[i])
        assert got == want, f"{name} row {i} ({t.bits[i].tolist()}): re-measured {got}, table says {want}"


def test_resnet20_rows_reproduce_exactly():
    remeasure("resnet20-mnist5k", n_random=3)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mobilenetv2-animal", "resnet18-shapes"])
def test_other_shipped_rows_reproduce_exactly(name):
    remeasure(name, n_random=3)
