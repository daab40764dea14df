"""Rank correlations between a proxy's scores and true accuracies, one implementation each.

Invalid scores: a score vector that is constant, or holds NaN/inf, has no ranking, so every metric returns
``nan`` for it (never 0, which would read as "uncorrelated" and let a broken proxy look average). Test with
``is_valid(value)`` / ``valid_scores(score)``; ``rank_metrics`` returns the same NaNs plus ``valid: False``.
NaN was chosen over an exception because the proxy search calls these thousands of times and a NaN
comparison is cheaper and composes with numpy; ``require_valid`` turns it into ``InvalidScores`` where an
exception reads better (the CLI). The accuracy vector is the user's data: a NaN, a length mismatch or fewer
than two entries there raise ``ProxylabError`` instead.

For the search's inner loop, ``RankTarget(acc)`` precomputes the centred, normalised ranks of the
accuracies once; ``target.spearman(score)`` is then one argsort plus one dot product.
"""
from __future__ import annotations

import math
from typing import Dict

import numpy as np
from scipy import stats as _sps

from proxylab.errors import ProxylabError

TOP_K_RATIOS = {"spearman_top20": 0.2, "spearman_top50": 0.5}


class InvalidScores(ProxylabError):
    """The proxy's scores cannot be ranked (constant, NaN or inf)."""


def is_valid(value: float) -> bool:
    """True when a metric value is a real number (not the NaN marker of invalid scores)."""
    return value is not None and math.isfinite(value)


def valid_scores(score) -> bool:
    """A score vector can be ranked: all finite and not all equal."""
    s = np.asarray(score, dtype=np.float64)
    return s.size >= 2 and bool(np.isfinite(s).all()) and bool(s.max() > s.min())


def require_valid(value: float, what: str = "proxy scores") -> float:
    if not is_valid(value):
        raise InvalidScores(f"{what} are constant or contain NaN/inf: no ranking to correlate")
    return value


def _check_pair(score, acc):
    s = np.asarray(score, dtype=np.float64).ravel()
    a = np.asarray(acc, dtype=np.float64).ravel()
    if s.shape != a.shape:
        raise ProxylabError(f"scores have {s.size} entries but accuracies have {a.size}: give one score per config")
    if a.size < 2:
        raise ProxylabError(f"need at least 2 configurations to correlate, got {a.size}")
    if not np.isfinite(a).all():
        raise ProxylabError("the accuracy vector holds NaN or inf: check the benchmark table")
    return s, a


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties sharing their average rank (scipy.stats.rankdata 'average'), vectorised."""
    x = np.asarray(x)
    n = x.size
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    new_group = np.empty(n, dtype=bool)
    new_group[0] = True
    np.not_equal(xs[1:], xs[:-1], out=new_group[1:])
    group = np.cumsum(new_group) - 1  # group id of each sorted position
    starts = np.flatnonzero(np.r_[new_group, True])  # first sorted position of each group, plus n
    avg = 0.5 * (starts[group] + starts[group + 1] - 1) + 1.0
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = avg
    return ranks


def _unit(v: np.ndarray):
    peak = float(np.max(np.abs(v))) if v.size else 0.0
    if peak > 1e100 or 0.0 < peak < 1e-100:  # c @ c would overflow / underflow: rescale (ranks never need it,
        v = v / peak                           # so their float results stay bit-identical)
    c = v - v.mean()
    norm = math.sqrt(float(c @ c))
    return None if norm == 0.0 else c / norm


def pearson(score, acc) -> float:
    s, a = _check_pair(score, acc)
    if not valid_scores(s):
        return math.nan
    us, ua = _unit(s), _unit(a)
    if ua is None:
        return math.nan
    return float(np.clip(us @ ua, -1.0, 1.0))


def spearman(score, acc) -> float:
    s, a = _check_pair(score, acc)
    if not valid_scores(s):
        return math.nan
    us, ua = _unit(average_ranks(s)), _unit(average_ranks(a))
    if ua is None:
        return math.nan
    return float(np.clip(us @ ua, -1.0, 1.0))


def kendall(score, acc) -> float:
    """Kendall tau-b (ties in either vector handled), via scipy's O(n log n) implementation."""
    s, a = _check_pair(score, acc)
    if not valid_scores(s) or a.max() == a.min():
        return math.nan
    return float(_sps.kendalltau(s, a).statistic)


def weighted_tau(score, acc) -> float:
    """scipy.stats.weightedtau(score, acc): hyperbolic weights, rank by the lexicographic (score, acc) order,
    so agreement among the configs the proxy puts on top counts most."""
    s, a = _check_pair(score, acc)
    if not valid_scores(s) or a.max() == a.min():
        return math.nan
    return float(_sps.weightedtau(s, a).statistic)


def top_k_indices(score, ratio: float) -> np.ndarray:
    """The configs the proxy ranks highest: k = ceil(N * ratio); ties at the cut go by table order."""
    s = np.asarray(score, dtype=np.float64).ravel()
    if not 0.0 < ratio <= 1.0:
        raise ProxylabError(f"top-k ratio must be in (0, 1], got {ratio}")
    k = int(math.ceil(s.size * ratio - 1e-12))
    return np.argsort(-s, kind="stable")[:k]


def spearman_top_k(score, acc, ratio: float) -> float:
    """EMQ's Spearman@top-k: keep the proxy's predicted top ceil(N*ratio) configs, Spearman inside them.

    NaN when the kept subset has fewer than 2 configs or its scores or accuracies are constant."""
    s, a = _check_pair(score, acc)
    if not valid_scores(s):
        return math.nan
    keep = top_k_indices(s, ratio)
    if keep.size < 2:
        return math.nan
    ss, aa = s[keep], a[keep]
    if aa.max() == aa.min():
        return math.nan
    return spearman(ss, aa)


def rank_metrics(score, acc) -> Dict[str, float]:
    """All metrics at once. Keys: spearman, kendall, pearson, spearman_top20, spearman_top50, weighted_tau,
    valid (False when the scores are constant or non-finite; the metric values are then NaN)."""
    s, a = _check_pair(score, acc)
    out: Dict[str, float] = {
        "spearman": spearman(s, a),
        "kendall": kendall(s, a),
        "pearson": pearson(s, a),
    }
    for key, ratio in TOP_K_RATIOS.items():
        out[key] = spearman_top_k(s, a, ratio)
    out["weighted_tau"] = weighted_tau(s, a)
    out["valid"] = valid_scores(s)
    return out


class RankTarget:
    """Precomputed accuracy ranks for fast repeated Spearman against the same accuracies (the search loop).

    ``spearman(score)`` equals ``spearman(score, acc)``; ``spearman_many(S)`` scores a [K, N] batch.
    """

    def __init__(self, acc):
        a = np.asarray(acc, dtype=np.float64).ravel()
        _check_pair(a, a)
        unit = _unit(average_ranks(a))
        if unit is None:
            raise ProxylabError("all accuracies are equal: a constant target cannot be ranked against")
        self.acc = a
        self._unit_ranks = unit

    def __len__(self) -> int:
        return self.acc.size

    def spearman(self, score) -> float:
        s = np.asarray(score, dtype=np.float64).ravel()
        if s.size != self.acc.size:
            raise ProxylabError(f"scores have {s.size} entries but the target has {self.acc.size}")
        if not valid_scores(s):
            return math.nan
        us = _unit(average_ranks(s))
        return float(np.clip(us @ self._unit_ranks, -1.0, 1.0))

    def spearman_many(self, scores) -> np.ndarray:
        S = np.asarray(scores, dtype=np.float64)
        if S.ndim != 2 or S.shape[1] != self.acc.size:
            raise ProxylabError(f"expected scores of shape [K, {self.acc.size}], got {list(S.shape)}")
        return np.array([self.spearman(row) for row in S], dtype=np.float64)


# ------------------------------------------------------------------------------------------------------------
# Retrieval metrics (model retrieval, issue 7): one ranked list of model ids per query.

def _ranked_list(ranked_ids, k) -> list:
    ranked = list(ranked_ids)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ProxylabError(f"k must be a positive integer, got {k!r}")
    if len(set(ranked)) != len(ranked):
        raise ProxylabError("the ranked list repeats an id: a retrieval ranking lists each model once")
    return ranked


def recall_at_k(ranked_ids, relevant_ids, k: int) -> float:
    """|top-k ∩ relevant| / |relevant| (standard IR recall). With ONE relevant id (e.g. the best model for
    the query, TANS's setting) this is the hit rate: 1.0 when it is in the top k. Empty relevant -> ProxylabError."""
    ranked = _ranked_list(ranked_ids, k)
    relevant = set(relevant_ids)
    if not relevant:
        raise ProxylabError("recall needs at least one relevant id for the query")
    return len(set(ranked[:k]) & relevant) / len(relevant)


def hit_at_k(ranked_ids, relevant_ids, k: int) -> float:
    """1.0 when any relevant id is in the top k, else 0.0 (Hit@k, ModelLens)."""
    ranked = _ranked_list(ranked_ids, k)
    relevant = set(relevant_ids)
    if not relevant:
        raise ProxylabError("Hit@k needs at least one relevant id for the query")
    return float(bool(set(ranked[:k]) & relevant))


def ndcg_at_k(ranked_ids, gains, k: int) -> float:
    """NDCG@k with linear gains: sum_{r<=k} gain(id_r) / log2(r + 1), divided by the same sum over the ideal
    order of all gains. Ids missing from `gains` count 0. NaN when every gain is 0 (no ideal ranking)."""
    ranked = _ranked_list(ranked_ids, k)
    g = {key: float(v) for key, v in dict(gains).items()}
    values = np.array(list(g.values()), dtype=np.float64)
    if values.size == 0:
        raise ProxylabError("NDCG needs the gains of at least one model")
    if not np.isfinite(values).all() or (values < 0).any():
        raise ProxylabError("NDCG gains must be finite and non-negative (e.g. accuracies)")
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = sum(g.get(i, 0.0) * discounts[r] for r, i in enumerate(ranked[:k]))
    ideal = np.sort(values)[::-1][:k]
    idcg = float(ideal @ discounts[:ideal.size])
    return math.nan if idcg == 0.0 else float(dcg / idcg)


def regret(ranked_ids, acc) -> float:
    """Best achievable accuracy minus the accuracy of the top-ranked model: max(acc) - acc[ranked_ids[0]]."""
    ranked = list(ranked_ids)
    a = {key: float(v) for key, v in dict(acc).items()}
    if not a:
        raise ProxylabError("regret needs the accuracy of at least one model")
    if not ranked:
        raise ProxylabError("regret needs a non-empty ranking (the retrieved model first)")
    if ranked[0] not in a:
        raise ProxylabError(f"the top-ranked model {ranked[0]!r} has no accuracy in the ground truth")
    if not all(math.isfinite(v) for v in a.values()):
        raise ProxylabError("the accuracies hold NaN or inf")
    return max(a.values()) - a[ranked[0]]
