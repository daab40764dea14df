"""Tie handling of the retrieval metrics against brute force: relevance by counting strictly better models, and
every metric averaged over ALL orders of the tied models (itertools permutations of each tie group)."""
import itertools
import math

import numpy as np
import pytest

from proxylab.errors import ProxylabError
from proxylab.metrics import hit_at_k, ndcg_at_k, regret
from proxylab.retrieval import evaluate as E


def _brute_relevant(acc, n=5):
    """A model is among "the n best" when fewer than n models are strictly more accurate."""
    return {i for i in acc if sum(acc[j] > acc[i] for j in acc) < n}


def _all_orders(ids, scores):
    """Every ranking consistent with the scores: the tie groups' members in every order."""
    groups = {}
    for i, s in zip(ids, scores):
        groups.setdefault(s, []).append(i)
    levels = [groups[s] for s in sorted(groups, reverse=True)]
    for perms in itertools.product(*(itertools.permutations(g) for g in levels)):
        yield [i for p in perms for i in p]


def _random_case(rng, n):
    ids = [int(i) for i in rng.permutation(100)[:n]]
    scores = rng.integers(0, 4, size=n).astype(float)  # few score levels: many ties
    order = sorted(range(n), key=lambda k: -scores[k])
    acc = {i: float(rng.integers(0, 5)) / 4 for i in ids}  # accuracies with ties too
    return [ids[k] for k in order], scores[order], acc


def test_relevance_includes_every_model_tied_at_the_cut():
    acc = {1: 0.9, 2: 0.8, 3: 0.8, 4: 0.7, 5: 0.6, 6: 0.6, 7: 0.6, 8: 0.1}
    assert E.relevant_ids("new", "x", {}, acc) == [1, 2, 3, 4, 5, 6, 7]  # 3 models tie for 5th place
    assert E.top_n_with_ties({1: 0.5, 2: 0.5}, 5) == [1, 2]
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 12))
        acc = {int(i): float(rng.integers(0, 4)) for i in rng.permutation(50)[:n]}
        assert set(E.relevant_ids("new", "x", {}, acc)) == _brute_relevant(acc)


def test_tie_aware_metrics_equal_the_mean_over_all_tie_orders():
    rng = np.random.default_rng(1)
    for case in range(150):
        n = int(rng.integers(2, 8))
        ids, scores, acc = _random_case(rng, n)
        tasks = {i: "ab"[int(rng.integers(2))] for i in ids}
        rel = sorted(_brute_relevant(acc))
        best = [i for i in acc if acc[i] == max(acc.values())]
        lo, hi = min(acc.values()), max(acc.values())
        gains = {i: (a - lo) / (hi - lo) if hi > lo else 1.0 for i, a in acc.items()}
        orders = list(_all_orders(ids, list(scores)))
        groups = E.tie_groups(ids, scores)
        for k in (1, 2, 3, 5):
            want = np.mean([hit_at_k(o, rel, k) for o in orders])
            assert E.expected_hit_at_k(groups, rel, k) == pytest.approx(want, abs=1e-12), (case, k)
            want_ndcg = np.mean([ndcg_at_k(o, gains, k) for o in orders])
            assert E.expected_ndcg_at_k(groups, gains, k) == pytest.approx(want_ndcg, abs=1e-12)
        assert E.expected_top1(groups, {i: float(tasks[i] == "a") for i in ids}) == pytest.approx(
            np.mean([tasks[o[0]] == "a" for o in orders]))
        # query_metrics as a whole: every figure is the all-orders mean, whatever order the ids came in
        r = E.Ranking(ids, scores, calls=3, latency_ms=1.0)
        m = E.query_metrics(r, "same", "a", tasks, acc) if "a" in tasks.values() else None
        mn = E.query_metrics(r, "new", "z", tasks, acc)
        assert mn["recall_at_5"] == pytest.approx(np.mean([hit_at_k(o, rel, 5) for o in orders]))
        assert mn["best_in_top5"] == pytest.approx(np.mean([hit_at_k(o, best, 5) for o in orders]))
        assert mn["regret"] == pytest.approx(np.mean([regret(o, acc) for o in orders]))
        if m is not None:
            own = [i for i in ids if tasks[i] == "a"]
            assert m["recall_at_1"] == pytest.approx(np.mean([hit_at_k(o, own, 1) for o in orders]))
            assert m["top1_task"] == pytest.approx(np.mean([tasks[o[0]] == "a" for o in orders]))


def test_metrics_do_not_depend_on_the_order_ids_of_tied_models_come_in():
    acc = {10: 0.9, 11: 0.5, 12: 0.4, 13: 0.3, 14: 0.2, 15: 0.1, 16: 0.0}
    tasks = dict.fromkeys(acc, "t")
    scores = np.array([2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0])
    # the best model (10) ties with four others for places 2..6: by id order it would be 5th (a hit) or 6th
    # (a miss); tie-aware, it is in the top 5 with probability 1 - C(4, 4) / C(5, 4) = 0.8 either way
    got = set()
    for ids in ([16, 10, 11, 12, 13, 14, 15], [16, 11, 12, 13, 14, 10, 15], [16, 14, 13, 10, 12, 11, 15]):
        m = E.query_metrics(E.Ranking(ids, scores, 0, 0.0), "new", "x", tasks, acc)
        got.add((round(m["best_in_top5"], 12), round(m["ndcg_at_5"], 12), round(m["weighted_tau"], 12)))
        assert m["best_in_top5"] == pytest.approx(0.8)
    assert len(got) == 1
    g = E.tie_groups([16, 10, 11, 12, 13, 14, 15], scores)
    assert [len(x) for x in g] == [1, 5, 1]
    assert E.expected_hit_at_k(g, [10], 2) == pytest.approx(1 / 5)
    assert E.expected_hit_at_k(g, [10, 12], 2) == pytest.approx(2 / 5)
    assert E.expected_hit_at_k(g, [10, 12], 3) == pytest.approx(1 - 3 / 10)  # misses both: C(3,2)/C(5,2)
    assert E.expected_hit_at_k(g, [15], 6) == 0.0 and E.expected_hit_at_k(g, [15], 7) == 1.0


def test_tie_groups_refuse_unsorted_or_nan_scores():
    with pytest.raises(ProxylabError, match="sorted best first"):
        E.tie_groups([1, 2], [0.1, 0.5])
    with pytest.raises(ProxylabError, match="NaN"):
        E.tie_groups([1, 2], [0.5, math.nan])
    with pytest.raises(ProxylabError, match="one score per id"):
        E.tie_groups([1, 2, 3], [0.5, 0.4])


def test_subset_queries_are_scored_against_their_parent_task():
    tasks = {1: "shapes-color", 2: "shapes-size", 3: "shapes-color", 4: "shapes-count"}
    acc = {1: 0.5, 2: 0.9, 3: 0.6, 4: 0.8}
    assert E.relevant_ids("subset", "shapes-rgb", tasks, acc) == [1, 3]
    r = E.Ranking([3, 2, 1, 4], np.array([4.0, 3.0, 2.0, 1.0]), 0, 0.0)
    m = E.query_metrics(r, "subset", "shapes-rgb", tasks, acc)
    assert m["top1_task"] == 1.0 and m["recall_at_1"] == 1.0 and m["regret"] == pytest.approx(0.3)
    with pytest.raises(ProxylabError, match="no class subset"):
        E.relevant_ids("subset", "shapes-position", tasks, acc)


# ------------------------------------------------------------------------------------ two-stage (re-rank) ties
def _brute_two_stage(ids, scores, stage2, k, fn):
    """Mean of fn(ranking) over every index order consistent with the index ties, each followed by every
    order of its top k consistent with the stage-2 ties (nested: each index order is equally likely)."""
    outer = []
    for order in _all_orders(ids, list(scores)):
        top, rest = order[:k], order[k:]
        top_sorted = sorted(top, key=lambda i: -stage2[i])
        inner = [fn(list(t) + rest) for t in _all_orders(top_sorted, [stage2[i] for i in top_sorted])]
        outer.append(np.mean(inner))
    return float(np.mean(outer))


def test_two_stage_metrics_equal_the_mean_over_all_tie_orders_of_both_stages():
    from proxylab.retrieval.rerank import leep

    rng = np.random.default_rng(5)
    labels = np.repeat(np.arange(3), 4)
    for case in range(40):
        n, k = int(rng.integers(3, 8)), int(rng.integers(1, 4))
        ids, scores, acc = _random_case(rng, n)
        # probabilities drawn from 2 patterns: models sharing a pattern tie exactly in LEEP
        patterns = [rng.dirichlet(np.ones(3), size=len(labels)).astype(np.float32) for _ in range(2)]
        probs = {i: patterns[int(rng.integers(2))] for i in ids}
        variants, calls = E.two_stage(ids, probs, labels, k, "leep", scores)
        assert calls == len(labels) * min(k, n)
        got = E.mean_metrics([E.query_metrics(E.Ranking(v_ids, v_sc, calls, 0.0), "new", "z", dict.fromkeys(ids, "t"), acc)
                              for v_ids, v_sc in variants])
        stage2 = {i: float(leep(probs[i], labels)) for i in ids}
        rel = sorted(_brute_relevant(acc))
        for key, fn in (("recall_at_1", lambda o: hit_at_k(o, rel, 1)), ("recall_at_5", lambda o: hit_at_k(o, rel, 5)),
                        ("regret", lambda o: regret(o, acc))):
            assert got[key] == pytest.approx(_brute_two_stage(ids, scores, stage2, k, fn), abs=1e-12), (case, key)


def test_two_stage_scores_never_tie_across_stages_and_sampled_cuts_are_bounded():
    ranked, sc = E.two_stage_scores([(1, 0.9), (2, 0.5), (3, 0.5), (4, 0.1)], {2: -1.0, 4: -1.0})
    assert ranked == [2, 4, 1, 3] and sc[0] == sc[1] > sc[2] > sc[3]  # a re-ranked model precedes the rest
    wide = [(i, 1.0) for i in range(30)]  # C(30, 10) choices at the cut: sampled, deterministically
    draws = E.top_k_draws(wide, 10)
    assert len(draws) == E.MAX_CUT_DRAWS and draws == E.top_k_draws(wide, 10)
    assert all(len(set(d)) == 10 for d in draws)
    assert E.top_k_draws([(1, 0.9), (2, 0.5), (3, 0.5)], 2) == [[1, 2], [1, 3]]
