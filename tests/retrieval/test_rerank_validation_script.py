"""benchmarks/retrieval_rerank_validation.py's score fusion (validated there, not adopted by the library)."""
import math

import numpy as np
import pytest

from proxylab.errors import ProxylabError
from tests.retrieval.bench_scripts import load_bench_script


@pytest.fixture(scope="module")
def script():
    return load_bench_script("retrieval_rerank_validation.py", "rerank_validation_script")


def test_fuse_scores_against_scipy_zscores(script):
    from scipy.stats import zscore

    rng = np.random.default_rng(3)
    a, b = rng.normal(size=7), rng.normal(size=7) * 40 - 3
    for w in (0.0, 0.5, 2.0):
        np.testing.assert_allclose(script.fuse_scores(a, b, w), zscore(a) + w * zscore(b), atol=1e-12)
    np.testing.assert_array_equal(script.fuse_scores(a, b, math.inf), b)
    # scale and shift of either stage never change the fused order
    np.testing.assert_allclose(script.fuse_scores(3 * a + 1, b / 7 - 2, 1.0), script.fuse_scores(a, b, 1.0), atol=1e-12)
    # a constant stage contributes nothing (no division by a zero spread)
    np.testing.assert_allclose(script.fuse_scores(np.full(4, 0.3), [1.0, 2.0, 3.0, 4.0], 1.0), zscore([1.0, 2.0, 3.0, 4.0]))


@pytest.mark.parametrize("args,match", [
    (([1.0, 2.0], [1.0], 1.0), "aligned"),
    (([1.0, np.nan], [1.0, 2.0], 1.0), "NaN"),
    (([1.0, 2.0], [1.0, 2.0], -1.0), "fuse weight"),
    (([1.0, 2.0], [1.0, 2.0], math.nan), "fuse weight"),
    (([1.0, 2.0], [1.0, 2.0], True), "fuse weight"),
    (([1.0, 2.0], [1.0, 2.0], "x"), "fuse weight"),
])
def test_fuse_scores_bad_input(script, args, match):
    with pytest.raises(ProxylabError, match=match):
        script.fuse_scores(*args)


def test_zscored_keeps_the_keys_and_zeroes_a_constant(script):
    assert script.zscored({3: 1.0, 1: 2.0, 2: 3.0}) == pytest.approx({3: -1.224744871, 1: 0.0, 2: 1.224744871})
    assert script.zscored({1: 0.5, 2: 0.5}) == {1: 0.0, 2: 0.0}
