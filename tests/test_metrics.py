"""Rank metrics against scipy (the oracle) on random, tied and degenerate data."""
import math
import time

import numpy as np
import pytest
from scipy import stats as sps

from proxylab import metrics as M
from proxylab.errors import ProxylabError


def _data(seed, n=60, ties=False):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=n)
    s = a + rng.normal(scale=1.0, size=n)
    if ties:  # heavy ties in both vectors
        a = np.round(a * 2) / 2
        s = np.round(s)
    return s, a


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("ties", [False, True])
def test_metrics_match_scipy(seed, ties):
    s, a = _data(seed, ties=ties)
    assert M.spearman(s, a) == pytest.approx(sps.spearmanr(s, a).statistic, abs=1e-12)
    assert M.kendall(s, a) == pytest.approx(sps.kendalltau(s, a).statistic, abs=1e-12)
    assert M.pearson(s, a) == pytest.approx(sps.pearsonr(s, a).statistic, abs=1e-12)
    assert M.weighted_tau(s, a) == pytest.approx(sps.weightedtau(s, a).statistic, abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_average_ranks_matches_rankdata(seed):
    x = np.random.default_rng(seed).integers(0, 7, size=50).astype(float)
    np.testing.assert_array_equal(M.average_ranks(x), sps.rankdata(x))


def _top_k_oracle(s, a, r):
    k = math.ceil(len(s) * r)
    order = sorted(range(len(s)), key=lambda i: (-s[i], i))[:k]  # best predicted first, ties by table order
    return sps.spearmanr(s[order], a[order]).statistic


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("ratio", [0.2, 0.5, 1.0])
def test_spearman_top_k_matches_brute_force(seed, ratio):
    s, a = _data(seed, n=37, ties=seed % 2 == 1)
    assert M.spearman_top_k(s, a, ratio) == pytest.approx(_top_k_oracle(s, a, ratio), abs=1e-12)


def test_top_k_keeps_the_predicted_best():
    s = np.array([0.1, 0.9, 0.5, 0.7, 0.3])
    assert sorted(M.top_k_indices(s, 0.4)) == [1, 3]  # ceil(5 * 0.4) = 2
    assert M.spearman_top_k(s, s, 1.0) == pytest.approx(1.0)
    assert M.spearman_top_k(s, -s, 0.6) == pytest.approx(-1.0)


def test_full_ratio_equals_spearman():
    s, a = _data(3)
    assert M.spearman_top_k(s, a, 1.0) == pytest.approx(M.spearman(s, a), abs=1e-12)


@pytest.mark.parametrize("bad", [np.full(10, 3.0), np.r_[np.arange(9.0), np.nan], np.r_[np.arange(9.0), np.inf]])
def test_invalid_scores_are_nan_never_zero(bad):
    a = np.arange(10.0)
    for fn in (M.spearman, M.kendall, M.pearson, M.weighted_tau):
        assert math.isnan(fn(bad, a))
    assert math.isnan(M.spearman_top_k(bad, a, 0.5))
    out = M.rank_metrics(bad, a)
    assert out["valid"] is False and all(math.isnan(v) for k, v in out.items() if k != "valid")
    assert not M.is_valid(M.spearman(bad, a))
    with pytest.raises(M.InvalidScores):
        M.require_valid(M.spearman(bad, a))


@pytest.mark.parametrize("scale", [1e306, 1e-306, 1e150])
def test_pearson_of_huge_or_tiny_scores_matches_scipy_on_rescaled_ones(scale):
    """c @ c of 1e306-sized scores overflows to inf, which once made Pearson exactly 0."""
    s, a = _data(4)
    got = M.pearson(s * scale, a)
    assert got == pytest.approx(sps.pearsonr(s, a)[0], abs=1e-12) and got != 0.0


def test_top_k_subset_with_constant_scores_is_nan():
    s = np.array([5.0, 5.0, 1.0, 2.0, 3.0, 0.0, 0.5, 0.7, 0.2, 0.1])
    assert math.isnan(M.spearman_top_k(s, np.arange(10.0), 0.2))  # the kept two tie


def test_user_errors_are_clear():
    with pytest.raises(ProxylabError, match="3 entries but accuracies have 4"):
        M.spearman([1, 2, 3], [1, 2, 3, 4])
    with pytest.raises(ProxylabError, match="at least 2"):
        M.spearman([1], [1])
    with pytest.raises(ProxylabError, match="NaN"):
        M.kendall([1, 2, 3], [1, np.nan, 3])
    with pytest.raises(ProxylabError, match="ratio"):
        M.spearman_top_k([1, 2, 3], [1, 2, 3], 0.0)
    with pytest.raises(ProxylabError, match="all accuracies are equal"):
        M.RankTarget([1.0, 1.0, 1.0])


def test_rank_metrics_keys_and_values():
    s, a = _data(0)
    out = M.rank_metrics(s, a)
    assert set(out) == {"spearman", "kendall", "pearson", "spearman_top20", "spearman_top50", "weighted_tau", "valid"}
    assert out["valid"] is True
    assert out["spearman_top20"] == pytest.approx(_top_k_oracle(s, a, 0.2), abs=1e-12)


def test_rank_target_matches_and_is_fast():
    rng = np.random.default_rng(0)
    acc = rng.normal(size=1000)
    target = M.RankTarget(acc)
    S = acc[None, :] + rng.normal(size=(50, 1000))
    S[3] = 1.0  # constant candidate
    many = target.spearman_many(S)
    for row, value in zip(S, many):
        expected = M.spearman(row, acc)
        assert (math.isnan(value) and math.isnan(expected)) or value == pytest.approx(expected, abs=1e-12)
    t0 = time.perf_counter()
    for row in S:
        target.spearman(row)
    per_call = (time.perf_counter() - t0) / len(S)
    assert per_call < 2e-3, f"RankTarget.spearman took {per_call * 1e3:.2f} ms for 1000 configs"


# ---------------------------------------------------------------------------------------- retrieval metrics

def _ndcg_loops(ranked, gains, k):
    dcg = 0.0
    for r in range(min(k, len(ranked))):
        dcg += gains.get(ranked[r], 0.0) / math.log2(r + 2)
    ideal = sorted(gains.values(), reverse=True)
    idcg = 0.0
    for r in range(min(k, len(ideal))):
        idcg += ideal[r] / math.log2(r + 2)
    return dcg / idcg


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("k", [1, 3, 5, 50])
def test_retrieval_metrics_match_loops(seed, k):
    rng = np.random.default_rng(seed)
    ids = list(rng.permutation(30) + 100)
    ranked = ids[:20]  # the ranking may cover only part of the zoo
    relevant = set(int(i) for i in rng.choice(ids, size=4, replace=False))
    hits = sum(1 for i in ranked[:k] if i in relevant)
    assert M.recall_at_k(ranked, relevant, k) == pytest.approx(hits / 4)
    assert M.hit_at_k(ranked, relevant, k) == float(hits > 0)
    gains = {i: float(rng.uniform()) for i in ids}
    assert M.ndcg_at_k(ranked, gains, k) == pytest.approx(_ndcg_loops(ranked, gains, k), abs=1e-12)
    assert M.regret(ranked, gains) == pytest.approx(max(gains.values()) - gains[ranked[0]])


def test_retrieval_metrics_edge_cases():
    gains = {1: 0.9, 2: 0.5, 3: 0.1}
    assert M.ndcg_at_k([1, 2, 3], gains, 3) == pytest.approx(1.0)
    assert M.ndcg_at_k([3, 2, 1], gains, 1) == pytest.approx(0.1 / 0.9)
    assert M.ndcg_at_k([7, 8], gains, 2) == 0.0  # ids without gains count 0
    assert math.isnan(M.ndcg_at_k([1], {1: 0.0, 2: 0.0}, 1))
    assert M.regret([1, 3], gains) == 0.0 and M.regret([3], gains) == pytest.approx(0.8)
    assert M.recall_at_k([5], {5}, 1) == 1.0 and M.recall_at_k([4, 5], {5}, 1) == 0.0
    for call, match in [
        (lambda: M.recall_at_k([1, 2], set(), 1), "relevant"),
        (lambda: M.recall_at_k([1, 1], {1}, 1), "repeats"),
        (lambda: M.recall_at_k([1], {1}, 0), "k must"),
        (lambda: M.ndcg_at_k([1], {1: -1.0}, 1), "non-negative"),
        (lambda: M.ndcg_at_k([1], {}, 1), "at least one"),
        (lambda: M.regret([], gains), "non-empty"),
        (lambda: M.regret([9], gains), "no accuracy"),
    ]:
        with pytest.raises(ProxylabError, match=match):
            call()
