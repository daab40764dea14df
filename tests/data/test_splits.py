"""Stratified, seeded, duplicate-aware splitting (oracle: brute-force counting)."""
import numpy as np
import pytest

from proxylab.data.splitting import duplicate_groups, stratified_split


def test_sizes_exact_disjoint_and_covering():
    y = np.random.default_rng(0).integers(0, 7, 500)
    parts = stratified_split(y, (300, 50, 150), seed=3)
    assert [len(p) for p in parts] == [300, 50, 150]
    allidx = np.concatenate(parts)
    assert sorted(allidx.tolist()) == list(range(500))


def test_balanced_classes_differ_by_at_most_one_in_every_split():
    y = np.repeat(np.arange(6), 2000)
    for part in stratified_split(y, (8000, 1000, 3000), seed=0):
        counts = np.bincount(y[part], minlength=6)
        assert counts.max() - counts.min() <= 1


def test_unbalanced_classes_keep_their_proportions():
    y = np.repeat(np.arange(3), [100, 300, 600])
    for part, size in zip(stratified_split(y, (500, 100, 400), seed=1), (500, 100, 400)):
        expected = size * np.array([0.1, 0.3, 0.6])
        assert np.abs(np.bincount(y[part], minlength=3) - expected).max() <= 1.0 + 1e-9


def test_prefix_of_a_split_is_nearly_balanced():
    y = np.repeat(np.arange(10), 100)
    train = stratified_split(y, (600, 100, 300), seed=2)[0]
    counts = np.bincount(y[train[:50]], minlength=10)
    assert counts.max() - counts.min() <= 1


def test_seed_fixes_the_split():
    y = np.repeat(np.arange(4), 50)
    a = stratified_split(y, (120, 30, 50), seed=7)
    b = stratified_split(y, (120, 30, 50), seed=7)
    c = stratified_split(y, (120, 30, 50), seed=8)
    assert all((p == q).all() for p, q in zip(a, b))
    assert set(a[0].tolist()) != set(c[0].tolist())


def test_duplicates_stay_in_one_split_and_counts_stay_exact():
    rng = np.random.default_rng(4)
    x = rng.integers(0, 255, (400, 1, 4, 4)).astype(np.uint8)
    y = np.repeat(np.arange(4), 100)
    # 30 duplicate pairs and one triple, each within a class (as in animal-mnist)
    for i in range(30):
        x[i * 3 + 1] = x[i * 3]
    x[201] = x[200]
    x[202] = x[200]
    groups = duplicate_groups(x)
    assert len(np.unique(groups)) == 400 - 30 - 2
    for seed in range(5):
        parts = stratified_split(y, (240, 40, 120), seed=seed, x=x)
        assert [len(p) for p in parts] == [240, 40, 120]
        where = np.empty(400, int)
        for k, p in enumerate(parts):
            where[p] = k
            assert np.bincount(y[p], minlength=4).tolist() == [len(p) // 4] * 4
        for g in np.unique(groups):
            assert len(set(where[groups == g].tolist())) == 1


def test_bad_sizes_are_rejected():
    with pytest.raises(ValueError, match="sum to"):
        stratified_split(np.zeros(10, int), (5, 2, 2), seed=0)
