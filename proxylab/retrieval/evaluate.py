"""Honest evaluation of black-box model retrieval on a zoo: held-out models, unseen query images.

Setting
- Models: the zoo's TEST part (``train_encoders.split_models``): models the encoders never saw. They are
  encoded from their signatures into a fresh in-memory ModelIndex; that index is what every method ranks.
- Queries (``tasks.default_queries``): few-shot support sets (5/10/20 labelled images per class) from TEST
  splits. ``same_task`` queries come from a zoo source task; ``new_task`` queries from held-out class
  subsets and a held-out labelling that no zoo model (nor the extractor, nor the encoders) was trained on;
  ``subset_task`` queries from a class subset of ONE source task (``tasks.SUBSET_TASKS``: shapes-rgb), which
  is not a new task: scored as identification of its parent task (relevant = the parent's models).
- Ground truth per (model, query): the white-box oracle's accuracy (``oracle.py``: a linear probe on the
  model's penultimate features fit on the query's support images, scored on the query task's scoring images,
  which no support contains); used for nothing but scoring.

Methods (every one returns a full ranking of the evaluated models)
- ``proxylab``: encode the query, cosine search of the index. No model is called (calls = 0). The encoders'
  variant (kernel + learned, its weight) was chosen with ``validate_encoders`` (end of this file) on train
  models and calib-split queries only (train-split before session 5), never with this evaluation.
- ``proxylab+leep@K`` / ``proxylab+nce@K``: the index's top K re-scored by LEEP / NCE on the support set
  (K black-box passes over the support images), the rest in index order.
- ``random`` (seeded per query), ``largest`` (parameter count, ties by id): trivial baselines.
- ``leep-all`` / ``nce-all``: LEEP / NCE of every model on the support set (brute force).
- Gray-box rows, for a user whose models expose features (not the black-box method): ``proxylab+logme@K`` (the
  index's top K re-scored by LogME of each model's classifier-input features on the support set) and
  ``logme-all`` (LogME of every model). The ground truth is a linear probe on those same features, so these rows
  show what feature access buys, not a like-for-like competitor of the black-box methods.

Metrics per query, averaged per (method, query kind)
- relevant models: same_task = the models trained on the query's source task; new_task = the 5 models with
  the highest oracle accuracy on the query task AND every model tied with the 5th (a model is relevant when
  fewer than 5 models are strictly more accurate), so no model id decides relevance.
- Ties in a method's scores: every metric below is its EXPECTED value when tied models are put in a uniformly
  random order (tie-aware evaluation, McSherry & Najork, ECIR 2008), so the id order FAISS or a sort happens
  to give tied models never changes a figure (``tie_groups``, ``expected_hit_at_k`` and friends).
- ``top1_task`` (same_task, subset_task): 1 when the top-ranked model was trained on the query's (parent) task.
- ``recall_at_k`` (TANS's query-level recall, = Hit@k): 1 when at least one relevant model is in the top k.
- ``best_in_top5``: 1 when an oracle-best model (highest accuracy on the query task) is in the top 5.
- Two-stage methods are tie-aware in both stages: the re-ranked top K are ordered by LEEP/NCE with equal
  scores tied, the rest by index score with equal scores tied (``two_stage_scores``); when index scores tie
  at the K-th place, which models get re-ranked depends on that order, so every metric is averaged over all
  equally likely choices of the tied models (``top_k_draws``; above MAX_CUT_DRAWS choices, that many seeded
  uniform draws: the only case where a figure is a sampled rather than an exact expectation).
- ``weighted_tau``: scipy's weighted Kendall tau between the method's scores (for two-stage methods the
  tie-preserving stage ranks above) and the oracle accuracies over all evaluated models.
- ``ndcg_at_5``: NDCG@5 with gain = the oracle accuracy min-max scaled over the evaluated models per query.
- ``regret``: best oracle accuracy minus the oracle accuracy of the top-ranked model.
- ``calls_per_query``: images sent to zoo models (support images x models run).
- ``latency_ms_median``: wall time per query: query encoding + search (+ the measured time of running the
  re-ranked models, for two-stage and brute-force methods). In-process black boxes on this machine's CPU.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from proxylab.errors import require

RERANK_K = 10
N_RELEVANT_NEW = 5
KINDS = {"same": "same_task", "new": "new_task", "subset": "subset_task"}
SUMMARY_FIELDS = ("method", "query_kind", "queries", "top1_task", "recall_at_1", "recall_at_5", "recall_at_10",
                  "best_in_top5", "weighted_tau", "ndcg_at_5", "regret", "calls_per_query", "latency_ms_median")


@dataclass
class Ranking:
    """One method's answer to one query."""

    ids: List[int]  # every evaluated model, best first
    scores: np.ndarray  # aligned with `ids`; higher = better (for weighted tau)
    calls: int
    latency_ms: float


def top_n_with_ties(acc: Dict[int, float], n: int = N_RELEVANT_NEW) -> List[int]:
    """The models with fewer than `n` models strictly more accurate: the n best plus every model tied with the
    n-th (so the set never depends on model ids), best first (ties listed by id)."""
    require(n >= 1, f"n must be >= 1, got {n}")
    order = sorted(acc, key=lambda i: (-acc[i], i))
    if len(order) <= n:
        return order
    cut = acc[order[n - 1]]
    return [i for i in order if acc[i] >= cut]


def identity_task(kind: str, task: str) -> str:
    """The source task a query should be identified with: itself (same), its parent (subset)."""
    if kind == "subset":
        from proxylab.retrieval.tasks import get_task

        parent = get_task(task).parent
        require(parent is not None, f"task '{task}' is no class subset of a source task")
        return parent
    return task


def relevant_ids(kind: str, task: str, model_task: Dict[int, str], acc: Dict[int, float]) -> List[int]:
    """same: the models of `task`; subset: the models of its parent task; new: the N_RELEVANT_NEW most accurate
    models, ties at the cut included."""
    if kind in ("same", "subset"):
        own = identity_task(kind, task)
        return sorted(i for i, t in model_task.items() if t == own)
    return top_n_with_ties(acc, N_RELEVANT_NEW)


# ---------------------------------------------------------------------------------------------- tie-aware metrics
def tie_groups(ids: Sequence[int], scores: Sequence[float]) -> List[List[int]]:
    """`ids` (best first) cut into runs of equal score; scores must not increase along the ranking."""
    s = np.asarray(scores, dtype=np.float64)
    require(len(ids) == len(s) and len(s) > 0, f"a ranking needs one score per id, got {len(ids)} ids, {len(s)} scores")
    require(not np.isnan(s).any(), "ranking scores hold NaN: the order of those models is undefined")
    require(bool(np.all(s[1:] <= s[:-1])), "ranking scores must be sorted best first (non-increasing)")
    groups: List[List[int]] = [[ids[0]]]
    for n in range(1, len(s)):
        if s[n] == s[n - 1]:
            groups[-1].append(ids[n])
        else:
            groups.append([ids[n]])
    return groups


def expected_hit_at_k(groups: List[List[int]], relevant, k: int) -> float:
    """P(a relevant model is in the top k) when each tie group is in uniformly random order.

    Groups entirely inside the top k count fully; the group straddling the cut fills its m free places with a
    uniform m-subset of its g members, which misses all r relevant ones with probability C(g-r, m) / C(g, m)."""
    rel = set(relevant)
    require(len(rel) > 0, "Hit@k needs at least one relevant model")
    placed = 0
    for g in groups:
        if placed >= k:
            break
        r = sum(1 for i in g if i in rel)
        free = k - placed
        if r and len(g) <= free:
            return 1.0
        if r:
            return 1.0 - math.comb(len(g) - r, free) / math.comb(len(g), free)
        placed += len(g)
    return 0.0


def expected_top1(groups: List[List[int]], value: Dict[int, float]) -> float:
    """Expected value of the top-ranked model's `value`: the mean over the tied top group."""
    return float(np.mean([value[i] for i in groups[0]]))


def expected_ndcg_at_k(groups: List[List[int]], gains: Dict[int, float], k: int) -> float:
    """NDCG@k (linear gains, as proxylab.metrics.ndcg_at_k) in expectation over random orders of tied models:
    each place a tie group spans holds the group's mean gain on average (linearity of expectation)."""
    g = np.array(list(gains.values()), dtype=np.float64)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = np.sort(g)[::-1][:k]
    idcg = float(ideal @ discounts[:ideal.size])
    if idcg == 0.0:
        return math.nan
    dcg, placed = 0.0, 0
    for grp in groups:
        if placed >= k:
            break
        span = discounts[placed:min(k, placed + len(grp))]
        dcg += float(np.mean([gains.get(i, 0.0) for i in grp])) * float(span.sum())
        placed += len(grp)
    return dcg / idcg


def query_metrics(r: Ranking, kind: str, task: str, model_task: Dict[int, str], acc: Dict[int, float]) -> Dict[str, float]:
    """The metrics of one ranking (see the module doc); tie-aware in the ranking's scores."""
    from proxylab.metrics import weighted_tau

    rel = relevant_ids(kind, task, model_task, acc)
    require(len(rel) > 0, f"query task '{task}' has no relevant model among the evaluated ones: evaluate more models "
                          "(`zoo eval --all-models`; by default only the zoo's held-out half is evaluated) or pick "
                          "query tasks the evaluated models were trained on (--tasks)")
    top = max(acc.values())
    best = [i for i, a in acc.items() if a == top]
    lo, hi = min(acc.values()), max(acc.values())
    gains = {i: (a - lo) / (hi - lo) if hi > lo else 1.0 for i, a in acc.items()}
    by_id = dict(zip(r.ids, r.scores))
    ids = sorted(acc)
    tau = weighted_tau(np.array([by_id[i] for i in ids]), np.array([acc[i] for i in ids]))
    groups = tie_groups(r.ids, r.scores)
    own = identity_task(kind, task) if kind != "new" else None
    same_task = {i: float(model_task[i] == own) for i in r.ids}
    return {
        "top1_task": expected_top1(groups, same_task) if own is not None else math.nan,
        "recall_at_1": expected_hit_at_k(groups, rel, 1), "recall_at_5": expected_hit_at_k(groups, rel, 5),
        "recall_at_10": expected_hit_at_k(groups, rel, 10), "best_in_top5": expected_hit_at_k(groups, best, 5),
        "weighted_tau": tau, "ndcg_at_5": expected_ndcg_at_k(groups, gains, 5),
        "regret": top - expected_top1(groups, acc),
        "calls_per_query": float(r.calls), "latency_ms": r.latency_ms,
    }


def rank_by(scores: Dict[int, float]) -> List[int]:
    """Ids by descending score, ties by ascending id (deterministic)."""
    return sorted(scores, key=lambda i: (-scores[i], i))


MAX_CUT_DRAWS = 256  # two-stage: tie patterns at the top-K cut up to this many are enumerated, beyond sampled


def two_stage_scores(stage1: Sequence[Tuple[int, float]], stage2: Dict[int, float]) -> Tuple[List[int], np.ndarray]:
    """One two-stage ranking as ids + scores whose ties are exactly the ranking's ties: the re-ranked models
    (`stage2`: id -> LEEP/NCE score) first, ordered by that score, then the rest of `stage1` ((id, index score),
    best first) by index score. Scores are dense ranks of (stage, score), so equal scores within a stage tie,
    and nothing ties across stages (a re-ranked model always precedes the rest)."""
    keys = [(1, float(stage2[i])) for i in stage2] + [(0, float(sc)) for i, sc in stage1 if i not in stage2]
    ids = list(stage2) + [i for i, _ in stage1 if i not in stage2]
    order = sorted(range(len(ids)), key=lambda n: (-keys[n][0], -keys[n][1], ids[n]))
    dense = {key: float(r) for r, key in enumerate(sorted(set(keys)), start=1)}
    return [ids[n] for n in order], np.array([dense[keys[n]] for n in order])


def top_k_draws(stage1: Sequence[Tuple[int, float]], k: int, seed: int = 0) -> List[List[int]]:
    """The equally likely sets of models that enter a top k cut by `stage1` ((id, score), best first) when
    tied models are in random order: one set, unless a tie group straddles the cut, then every choice of its
    members for the free places (at most MAX_CUT_DRAWS; beyond that, that many seeded uniform draws)."""
    import itertools

    ids = [i for i, _ in stage1]
    groups = tie_groups(ids, [sc for _, sc in stage1])
    head: List[int] = []
    for g in groups:
        free = k - len(head)
        if free <= 0:
            break
        if len(g) <= free:
            head.extend(g)
            continue
        if math.comb(len(g), free) <= MAX_CUT_DRAWS:
            return [head + list(c) for c in itertools.combinations(sorted(g), free)]
        rng = np.random.default_rng(seed)
        return [head + [int(x) for x in rng.choice(sorted(g), size=free, replace=False)] for _ in range(MAX_CUT_DRAWS)]
    return [head]


def two_stage(index_ids: Sequence[int], probs: Dict[int, np.ndarray], labels: np.ndarray, k: int,
              method: str, index_scores: Optional[Sequence[float]] = None) -> Tuple[List[Tuple[List[int], np.ndarray]], int]:
    """The index's top k re-scored by LEEP/NCE (or LogME) on cached probabilities (features for LogME: `probs`
    holds what the method's estimator takes), then the rest in index order, as the equally likely (ids,
    tie-preserving scores) rankings of ``two_stage_scores`` (one per choice of the models that enter the top k
    when index scores tie at the cut: ``top_k_draws``), and the calls spent.

    Equivalent to ``rerank.rerank`` on the same models and images (tested), minus re-running the models.
    `index_scores` default: strictly decreasing (no ties)."""
    from proxylab.retrieval.rerank import scorer

    fn = scorer(method)[0]
    scores = (np.arange(len(index_ids), 0, -1, dtype=np.float64) if index_scores is None
              else np.asarray(index_scores, dtype=np.float64))
    stage1 = list(zip(index_ids, scores.tolist()))
    cache: Dict[int, float] = {}
    out = []
    for top in top_k_draws(stage1, k):
        for i in top:
            if i not in cache:
                cache[i] = float(fn(probs[i], labels))
        out.append(two_stage_scores(stage1, {i: cache[i] for i in top}))
    # calls: each draw runs k models on the support set (the models a real query would call)
    return out, int(len(labels)) * min(k, len(stage1))


def mean_metrics(rows: List[Dict[str, float]]) -> Dict[str, float]:
    """Metric-wise mean over equally likely rankings (the expectation over tie orders at a two-stage cut)."""
    return {key: float(np.mean([r[key] for r in rows])) for key in rows[0]}


def summarize(per_query: List[Dict], by: Sequence[str] = ("method", "query_kind")) -> List[Dict]:
    """Mean of each metric per group of the `by` columns (default: method, query kind; add "task" for a per-task
    view); latency as the median; NaN-aware (tau may be NaN)."""
    groups: Dict[tuple, List[Dict]] = {}
    for row in per_query:
        groups.setdefault(tuple(row[k] for k in by), []).append(row)
    out = []
    for key, rows in groups.items():
        summary = {**dict(zip(by, key)), "queries": len(rows)}
        for key in SUMMARY_FIELDS[3:-1]:
            vals = np.array([r[key] for r in rows], dtype=np.float64)
            summary[key] = float(np.nanmean(vals)) if np.isfinite(vals).any() else math.nan
        summary["latency_ms_median"] = float(np.median([r["latency_ms"] for r in rows]))
        out.append(summary)
    return out


def evaluate_zoo(zoo_dir, encoders=None, queries=None, model_ids: Optional[Sequence[int]] = None,
                 rerank_k: int = RERANK_K, seed: int = 0, ground_truth: Optional[Callable] = None,
                 progress: bool = True) -> Tuple[List[Dict], List[Dict]]:
    """Run every method on every query against the zoo's held-out models; returns (summary rows, per-query rows).

    `model_ids`: the models to evaluate (default: the test part of ``split_models``); `queries`: QuerySpecs
    (default ``tasks.default_queries()``); `ground_truth(zoo_dir, queries, model_ids) -> {query key: {id:
    accuracy}}` (default: the zoo's oracle, computed for missing pairs and cached in zoo_dir/oracle).
    """
    from proxylab.retrieval.encoders import Encoders
    from proxylab.retrieval.index import ModelIndex
    from proxylab.retrieval.tasks import default_queries
    from proxylab.retrieval.train_encoders import split_models
    from proxylab.retrieval.zoo import add_models, load_zoo
    from proxylab.retrieval.rerank import scorer

    zoo = load_zoo(zoo_dir)
    enc = encoders or Encoders.default()
    ids = sorted(int(i) for i in (model_ids if model_ids is not None else split_models(zoo.manifest)[1]))
    require(len(ids) >= 2, f"evaluation needs at least 2 models, got {len(ids)}")
    require(isinstance(rerank_k, int) and rerank_k >= 1, f"rerank_k must be a positive integer, got {rerank_k!r}")
    queries = list(queries if queries is not None else default_queries())
    require(len(queries) > 0, "no queries to evaluate")
    truth = (ground_truth or oracle_ground_truth)(zoo_dir, queries, ids)
    model_task = {i: zoo.get(i)["task"] for i in ids}
    params = {i: int(zoo.get(i)["params"]) for i in ids}

    encoder_id = enc.id
    index = ModelIndex.create(None, enc.dim, encoder_id=encoder_id)
    add_models(index, zoo, enc, ids, encoder_id)
    models = {i: zoo.blackbox(i) for i in ids}
    gray_box = all(m.supports_features for m in models.values())  # a zoo network without nn.Linear: no LogME rows
    per_query: List[Dict] = []
    t_start = time.perf_counter()
    for qn, spec in enumerate(queries):
        (sx, sy), _ = spec.load()
        labels = sy.numpy()
        acc = {int(k): float(v) for k, v in truth[spec.key].items() if int(k) in model_task}
        require(set(acc) == set(ids), f"the ground truth of query {spec.key} misses models "
                                      f"{sorted(set(ids) - set(acc))[:5]}")
        # Stage 1: encode + search; latency measured on the real path (extractor + encoder + FAISS).
        t0 = time.perf_counter()
        q = enc.encode_query(sx, labels)
        hits = index.search(q, k=len(ids), encoder_id=encoder_id)
        index_ms = (time.perf_counter() - t0) * 1e3
        index_ids = [h.id for h in hits]
        # Every model's probabilities on the support set, timed per model (the brute-force baselines' cost), and
        # (gray-box rows, when every model gives them) its classifier-input features from the same pass: the
        # feature hook's cost is in every row's model time, a small overstatement for the black-box rows.
        probs, model_ms, feats = {}, {}, {}
        for i in ids:
            t1 = time.perf_counter()
            if gray_box:
                probs[i], feats[i] = models[i].predict_with_features(sx)
            else:
                probs[i] = models[i].predict_proba(sx)
            model_ms[i] = (time.perf_counter() - t1) * 1e3
        n_img = int(len(labels))
        rng = np.random.default_rng([int(seed), qn])
        answers: Dict[str, Ranking] = {
            "proxylab": Ranking(index_ids, np.array([h.score for h in hits]), 0, index_ms)}
        draws: Dict[str, List[Ranking]] = {}
        # each method reads the probabilities or (LogME) the features of the same pass, so one model time each
        outputs = {"leep": probs, "nce": probs, **({"logme": feats} if gray_box else {})}
        for method in outputs:
            variants, calls = two_stage(index_ids, outputs[method], labels, rerank_k, method,
                                        [h.score for h in hits])
            spent = index_ms + sum(model_ms[i] for i in index_ids[:rerank_k])
            draws[f"proxylab+{method}@{rerank_k}"] = [Ranking(ids_, sc, calls, spent) for ids_, sc in variants]
            answers[f"proxylab+{method}@{rerank_k}"] = draws[f"proxylab+{method}@{rerank_k}"][0]
        rand = {i: float(s) for i, s in zip(ids, rng.random(len(ids)))}
        answers["random"] = Ranking(rank_by(rand), np.array(sorted(rand.values(), reverse=True)), 0, 0.0)
        largest = rank_by({i: float(params[i]) for i in ids})
        answers["largest"] = Ranking(largest, np.array([float(params[i]) for i in largest]), 0, 0.0)
        brute_ms = sum(model_ms.values())
        for method in outputs:  # the brute-force baselines: every model scored
            fn = scorer(method)[0]
            s = {i: fn(outputs[method][i], labels) for i in ids}
            ranked = rank_by(s)
            answers[f"{method}-all"] = Ranking(ranked, np.array([s[i] for i in ranked]), n_img * len(ids), brute_ms)
        for method, r in answers.items():
            m = mean_metrics([query_metrics(v, spec.kind, spec.task, model_task, acc)
                              for v in draws.get(method, [r])])
            per_query.append({"method": method, "query_kind": KINDS[spec.kind], "query": spec.key, "task": spec.task,
                              "shots": spec.n_per_class, "top1_id": r.ids[0], **m})
        if progress:
            print(f"[{qn + 1}/{len(queries)}] {spec.key}: proxylab top-1 {zoo.get(index_ids[0])['name']} "
                  f"({time.perf_counter() - t_start:.0f} s)", flush=True)
    return summarize(per_query), per_query


def oracle_ground_truth(zoo_dir, queries, model_ids: Sequence[int], progress: bool = True) -> Dict[str, Dict[int, float]]:
    """{query key: {model id: probe accuracy}} from the zoo's oracle (computes and caches missing pairs)."""
    from proxylab.retrieval.oracle import compute_oracle

    out: Dict[str, Dict[int, float]] = {}
    for row in compute_oracle(zoo_dir, queries, model_ids=model_ids, progress=progress):
        out.setdefault(row["query"], {})[int(row["model_id"])] = float(row["probe_acc"])
    return out


def truth_stability(queries, truth: Dict[str, Dict[int, float]], k: int = 5) -> List[Dict[str, object]]:
    """How far the new-task ground truth itself moves with the support draw: for every new-task query and every
    OTHER seed of the same (task, shots), rank the models by that draw's oracle accuracies and score Recall@k
    against this draw's relevant models (tie-aware, as every method). Rows per task (plus "all"): task, pairs,
    recall_at_k. Near 1: the truth is stable and a miss is the method's; far below: the truth itself moves with the
    draw, so even the oracle's ranking from another draw misses there."""
    by_task: Dict[str, List[float]] = {}
    draws: Dict[Tuple[str, int], Dict[int, str]] = {}
    for q in queries:
        if q.kind == "new" and q.key in truth:
            draws.setdefault((q.task, q.n_per_class), {})[q.seed] = q.key
    for (task, _), seeds in sorted(draws.items()):
        for seed, key in seeds.items():
            relevant = top_n_with_ties(truth[key], N_RELEVANT_NEW)
            for other, other_key in seeds.items():
                if other == seed:
                    continue
                acc = truth[other_key]
                ids = rank_by(acc)
                hit = expected_hit_at_k(tie_groups(ids, [acc[i] for i in ids]), relevant, k)
                by_task.setdefault(task, []).append(hit)
    rows = [{"task": t, "pairs": len(v), f"recall_at_{k}": float(np.mean(v))} for t, v in sorted(by_task.items())]
    every = [h for v in by_task.values() for h in v]
    if every:
        rows.append({"task": "all", "pairs": len(every), f"recall_at_{k}": float(np.mean(every))})
    return rows


# ---------------------------------------------------------------------------------------------- validation
VALIDATION_SHOTS = (5, 10, 20)
VALIDATION_SEEDS = (100, 101)  # query draws of their own: not the benchmark's seed 0 nor its TEST split


def validation_queries(tasks: Sequence[str], shots: Sequence[int] = VALIDATION_SHOTS,
                       seeds: Sequence[int] = VALIDATION_SEEDS) -> List[Tuple[str, int, int]]:
    """(task, shots per class, seed) of every validation query: few-shot draws of source tasks (the split is the
    caller's: ``train_encoders.validation_report``'s query_split, calib by default)."""
    return [(t, int(n), int(s)) for t in sorted(tasks) for n in shots for s in seeds]


def validation_query_features(tasks: Sequence[str], extractor, split: str = "calib",
                              seeds: Sequence[int] = VALIDATION_SEEDS, shots: Sequence[int] = VALIDATION_SHOTS
                              ) -> Dict[Tuple[str, int, int], Tuple[np.ndarray, np.ndarray]]:
    """{(task, shots, seed): (extractor features, labels)} of every ``validation_queries`` draw from `split` of
    the source tasks. A split with fewer images per class than a query's shots gives that query all of its
    smallest class (digits calib: 19 for 20 shots)."""
    from proxylab.retrieval.tasks import SOURCE_TASKS

    out, smallest = {}, {}
    for task, n, seed in validation_queries(tasks, shots, seeds):
        source = SOURCE_TASKS[task]
        if task not in smallest:  # one look at the split per task
            counts = np.bincount(source.data(split)[1].numpy(), minlength=source.num_classes)
            require(counts.min() >= 1, f"task {task} has a class with no {split} images: no query can be drawn")
            smallest[task] = int(counts.min())
        x, y = source.sample(split, min(n, smallest[task]), seed)
        out[(task, n, seed)] = (extractor.embed(x), y.numpy())
    return out


def validate_encoders(encoders, signatures: Dict[int, "object"], model_tasks: Dict[int, str],
                      query_features: Dict[Tuple[str, int, int], Tuple[np.ndarray, np.ndarray]],
                      transfer_truth: Optional[Dict[str, Dict[int, float]]] = None) -> Dict[str, object]:
    """Index-only task identification of `encoders` on a VALIDATION set; the benchmark's data is never touched.

    Validation protocol (what chose the shipped encoder variant; ``train_encoders.validation_report``):
    - models: the zoo's TRAIN models only (``split_models``), re-split by ``split_models(train rows, 0.5,
      seed=1)`` into an inner-train part (the learned encoders of a validation run are fit on it) and a
      held-out part (51 / 44 of the 95 for zoo200); the held-out part is what ``signatures`` holds here (with
      ``cross_fit`` the report also fits on the held-out part and scores the inner-train part);
    - queries: ``validation_queries``: 5/10/20-shot draws (default seeds 100, 101; the current shipped choice
      used 100-104) from the CALIB split (before session 5: the TRAIN split) of each
      source task (`query_features`: {(task, shots, seed): (extractor features, labels)});
    - metrics: top1_task (the top model was trained on the query's task) and recall_at_5 (one of the top 5
      was), over the held-out validation models, averaged over queries; per task top-1 and R@5 as well; recall_at_2
      (one of the top 2 was) is the benchmark's Recall@5 scaled to this pool: the top 5 of the benchmark's 105
      models are 4.8% of them, the top 2 of 44-51 validation models 3.9-4.5%, while their top 5 are 10-11%
      (so validation R@5 is near 1 where the benchmark's is not);
    - transfer (with `transfer_truth`: {task: {model id: oracle probe accuracy}}, white-box, fit on a 10-shot
      TRAIN-split support, seed 100, scored on the task's TRAIN-split scoring images): each query is also
      ranked against the models NOT trained on its task, as if its task were new; transfer_recall_at_5 = one
      of the 5 best of those (by the oracle) is in the top 5, transfer_regret = best minus top-1 accuracy.
    The benchmark's test models and TEST-split queries play no part in any choice made with this.
    """
    ids = sorted(int(i) for i in signatures)
    require(len(ids) >= 2 and len(query_features) > 0, "validation needs >= 2 models and >= 1 query")
    m = np.stack([encoders.encode_signature(signatures[i]) for i in ids]).astype(np.float64)
    tasks = np.array([model_tasks[i] for i in ids])
    top1, r2, r5, per_task, per_task_r5, t_r5, t_regret, per_task_t_r5 = [], [], [], {}, {}, [], [], {}
    for (task, _, _), (f, y) in sorted(query_features.items()):
        q = encoders.encode_query_features(f, y).astype(np.float64)
        score = m @ q
        order = sorted(range(len(ids)), key=lambda n: (-float(score[n]), ids[n]))
        # tie-aware like the benchmark (query_metrics): tied models count in expectation, never by id
        groups = tie_groups([ids[n] for n in order], score[order])
        own = {ids[n]: float(tasks[n] == task) for n in range(len(ids))}
        own_ids = [i for i, v in own.items() if v]
        top1.append(expected_top1(groups, own))
        r2.append(expected_hit_at_k(groups, own_ids, 2))
        r5.append(expected_hit_at_k(groups, own_ids, 5))
        per_task.setdefault(task, []).append(top1[-1])
        per_task_r5.setdefault(task, []).append(r5[-1])
        if transfer_truth is not None and task in transfer_truth:
            keep = [n for n in order if tasks[n] != task]  # the ranking with the task's own models removed
            others = [ids[n] for n in keep]
            acc = {i: float(transfer_truth[task][i]) for i in others}
            t_groups = tie_groups(others, score[keep])
            t_r5.append(expected_hit_at_k(t_groups, relevant_ids("new", task, {}, acc), 5))
            per_task_t_r5.setdefault(task, []).append(t_r5[-1])
            t_regret.append(max(acc.values()) - expected_top1(t_groups, acc))
    out = {"queries": len(top1), "models": len(ids), "top1_task": float(np.mean(top1)),
           "recall_at_2": float(np.mean(r2)), "recall_at_5": float(np.mean(r5)),
           "per_task_top1": {t: float(np.mean(v)) for t, v in per_task.items()},
           "per_task_recall_at_5": {t: float(np.mean(v)) for t, v in per_task_r5.items()}}
    if t_r5:
        out.update(transfer_recall_at_5=float(np.mean(t_r5)), transfer_regret=float(np.mean(t_regret)),
                   per_task_transfer_recall_at_5={t: float(np.mean(v)) for t, v in per_task_t_r5.items()})
    return out
