"""Retrieval evaluation: metrics against hand-computed values, the two-stage shortcut against rerank() with real
black boxes, and the whole evaluate_zoo pipeline on a tiny hand-made zoo (real modules, real oracle)."""
import json
import math

import numpy as np
import pytest
import torch

from proxylab.errors import ProxylabError
from proxylab.retrieval import evaluate as E
from proxylab.retrieval import features as F
from proxylab.retrieval.blackbox import TorchBlackBox
from proxylab.retrieval.index import Hit
from proxylab.retrieval.rerank import leep, logme, rerank


def test_relevant_ids_per_kind():
    tasks = {1: "a", 2: "b", 3: "a", 4: "c", 5: "c", 6: "b"}
    acc = {1: 0.5, 2: 0.9, 3: 0.9, 4: 0.1, 5: 0.7, 6: 0.3}
    assert E.relevant_ids("same", "a", tasks, acc) == [1, 3]
    assert E.relevant_ids("new", "x", tasks, acc) == [2, 3, 5, 1, 6]  # top 5 by accuracy, ties by id


def test_query_metrics_by_hand():
    tasks = {1: "a", 2: "b", 3: "a", 4: "b"}
    acc = {1: 0.6, 2: 0.2, 3: 0.9, 4: 0.4}
    r = E.Ranking([2, 1, 4, 3], np.array([4.0, 3.0, 2.0, 1.0]), calls=7, latency_ms=1.5)
    m = E.query_metrics(r, "same", "a", tasks, acc)
    assert m["top1_task"] == 0.0 and m["recall_at_1"] == 0.0 and m["recall_at_5"] == 1.0
    assert m["regret"] == pytest.approx(0.9 - 0.2)
    assert m["best_in_top5"] == 1.0 and m["calls_per_query"] == 7
    # NDCG@5 with min-max gains: 2 -> 0, 1 -> 4/7, 4 -> 2/7, 3 -> 1.
    g = {1: 4 / 7, 2: 0.0, 3: 1.0, 4: 2 / 7}
    dcg = sum(g[i] / math.log2(r_ + 2) for r_, i in enumerate([2, 1, 4, 3]))
    idcg = sum(v / math.log2(r_ + 2) for r_, v in enumerate(sorted(g.values(), reverse=True)))
    assert m["ndcg_at_5"] == pytest.approx(dcg / idcg)
    from scipy.stats import weightedtau

    ids = [1, 2, 3, 4]
    score = {2: 4.0, 1: 3.0, 4: 2.0, 3: 1.0}
    assert m["weighted_tau"] == pytest.approx(weightedtau([score[i] for i in ids], [acc[i] for i in ids]).statistic)
    assert math.isnan(E.query_metrics(r, "new", "z", tasks, acc)["top1_task"])


def test_summarize_means_and_median():
    rows = [{"method": "m", "query_kind": "same_task", "top1_task": v, "recall_at_1": v, "recall_at_5": 1.0,
             "recall_at_10": 1.0, "best_in_top5": 1.0, "weighted_tau": t, "ndcg_at_5": 0.5, "regret": 0.1,
             "calls_per_query": 10.0, "latency_ms": lat} for v, t, lat in ((1.0, 0.2, 3.0), (0.0, math.nan, 5.0),
                                                                         (1.0, 0.4, 100.0))]
    (s,) = E.summarize(rows)
    assert s["queries"] == 3 and s["top1_task"] == pytest.approx(2 / 3)
    assert s["weighted_tau"] == pytest.approx(0.3)  # NaN taus (constant scores) are left out of the mean
    assert s["latency_ms_median"] == 5.0


def _nets(k=3, n=5):
    nets = []
    for s in range(n):
        torch.manual_seed(s)
        nets.append(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, k)))
    return nets


def test_two_stage_matches_rerank_with_real_black_boxes():
    nets = _nets()
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(12, 3, 32, 32)).astype(np.float32)
    y = np.repeat(np.arange(3), 4)
    index_ids = [3, 0, 4, 1, 2]
    probs = {i: TorchBlackBox(nets[i]).predict_proba(x) for i in range(5)}
    for method in ("leep", "nce"):
        variants, calls = E.two_stage(index_ids, probs, y, 3, method)
        assert len(variants) == 1  # no index ties: one ranking
        ranked = variants[0][0]
        hits = [Hit(i, 1.0 - 0.1 * n, {"name": str(i)}) for n, i in enumerate(index_ids[:3])]
        boxes = {i: TorchBlackBox(nets[i]) for i in range(5)}
        reranked, spent = rerank(hits, lambda i: boxes[i], x, y, method=method)
        assert ranked[:3] == [h.id for h in reranked] and ranked[3:] == index_ids[3:]
        assert calls == spent == 3 * 12


def test_two_stage_matches_rerank_for_logme_on_features():
    torch.manual_seed(5)
    nets = [torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 6), torch.nn.ReLU(),
                                torch.nn.Linear(6, 3)) for _ in range(5)]
    rng = np.random.default_rng(1)
    x = rng.uniform(size=(12, 3, 32, 32)).astype(np.float32)
    y = np.repeat(np.arange(3), 4)
    index_ids = [2, 4, 0, 3, 1]
    feats = {i: TorchBlackBox(nets[i]).features(x) for i in range(5)}
    assert len({round(logme(feats[i], y), 9) for i in range(5)}) == 5  # distinct scores: one order to compare
    variants, calls = E.two_stage(index_ids, feats, y, 3, "logme")
    (ranked, _), = variants
    boxes = {i: TorchBlackBox(nets[i]) for i in range(5)}
    hits = [Hit(i, 1.0 - 0.1 * n, {}) for n, i in enumerate(index_ids[:3])]
    reranked, spent = rerank(hits, lambda i: boxes[i], x, y, method="logme")
    assert ranked[:3] == [h.id for h in reranked] and ranked[3:] == index_ids[3:] and spent == calls == 36


# ---------------------------------------------------------------------------------------- the whole pipeline
def _tiny_zoo(tmp_path, n_models=6):
    """`n_models` real (untrained) zoo-format models over two digits tasks (alternating, widths cycling), with
    signatures; returns (dir, encoders)."""
    from proxylab.retrieval.encoders import Encoders
    from proxylab.retrieval.signature import capture_signature
    from proxylab.retrieval.tasks import get_task
    from proxylab.retrieval.zoo import _write_model, build_module, load_zoo, write_manifest
    from proxylab.nets.zoo import count_params

    zoo = tmp_path / "zoo"
    (zoo / "models").mkdir(parents=True)
    plan = [("digits-lo", 0.125), ("digits-hi", 0.125), ("digits-lo", 0.25), ("digits-hi", 0.25),
            ("digits-lo", 0.5), ("digits-hi", 0.5)]
    plan = [plan[i % len(plan)] for i in range(n_models)]
    for i, (task, width) in enumerate(plan):
        t = get_task(task)
        config = {"id": i, "name": f"{i:04d}-{task}-vgg_small", "task": task, "family": t.family, "arch": "vgg_small",
                  "kwargs": {"width": width}, "num_classes": t.num_classes, "mean": [0.5] * 3, "std": [0.25] * 3,
                  "epochs": 0, "train_size": 0, "seed": i, "width": width, "seconds": 0.0, "test_acc": 0.2}
        torch.manual_seed(i)
        module = build_module(config)
        config["params"] = count_params(module.net)
        import io
        buf = io.BytesIO()
        torch.save(module.state_dict(), buf)
        _write_model(zoo / "models", config, buf.getvalue())
    write_manifest(zoo)
    torch.manual_seed(0)
    fx = F.FeatureExtractor(F._build_trunk(), id="fx-tiny")
    pool = torch.from_numpy(np.random.default_rng(0).uniform(size=(24, 3, 32, 32)).astype(np.float32))
    z = load_zoo(zoo)
    (zoo / "signatures").mkdir()
    for row in z.manifest:
        capture_signature(z.blackbox(row["id"]), extractor=fx, pool=pool, steps=2).save(
            zoo / "signatures" / f"{row['name']}.npz")
    torch.manual_seed(0)
    enc = Encoders(feature_dim=F.FEATURE_DIM, width=16, dim=8, extractor_id="fx-tiny", extractor=fx)
    return zoo, enc


@pytest.mark.slow
def test_evaluate_zoo_end_to_end(tmp_path):
    from proxylab.retrieval.tasks import QuerySpec
    from proxylab.retrieval.zoo import load_zoo

    zoo_dir, enc = _tiny_zoo(tmp_path)
    queries = [QuerySpec("digits-lo", 5), QuerySpec("digits-odd", 5)]
    ids = list(range(6))
    summary, rows = E.evaluate_zoo(zoo_dir, encoders=enc, queries=queries, model_ids=ids, rerank_k=6,
                                   progress=False)
    assert len(rows) == 9 * 2 and len(summary) == 9 * 2
    zoo = load_zoo(zoo_dir)
    for q in queries:
        (sx, sy), _ = q.load()
        by = {r["method"]: r for r in rows if r["query"] == q.key}
        n = len(sy)
        assert by["proxylab"]["calls_per_query"] == 0 and by["leep-all"]["calls_per_query"] == 6 * n
        assert by["proxylab+leep@6"]["calls_per_query"] == 6 * n
        # Brute force LEEP, computed here independently: its top model is leep-all's top-1, and re-ranking
        # the whole index (k = every model) by LEEP must give the same top-1.
        scores = {i: leep(zoo.blackbox(i).predict_proba(sx), sy.numpy()) for i in ids}
        best = sorted(scores, key=lambda i: (-scores[i], i))[0]
        assert by["leep-all"]["top1_id"] == best == by["proxylab+leep@6"]["top1_id"]
        # the same for the gray-box LogME rows, from the models' classifier-input features
        feats = {i: zoo.blackbox(i).features(sx) for i in ids}
        scores = {i: logme(feats[i], sy.numpy()) for i in ids}
        best = sorted(scores, key=lambda i: (-scores[i], i))[0]
        assert by["logme-all"]["top1_id"] == best == by["proxylab+logme@6"]["top1_id"]
        assert by["logme-all"]["calls_per_query"] == 6 * n == by["proxylab+logme@6"]["calls_per_query"]
        for r in by.values():
            assert 0 <= r["regret"] <= 1 and 0 <= r["recall_at_5"] <= 1
    again, rows2 = E.evaluate_zoo(zoo_dir, encoders=enc, queries=queries, model_ids=ids, rerank_k=6, progress=False)
    strip = lambda rs: [{k: v for k, v in r.items() if k != "latency_ms"} for r in rs]
    assert json.dumps(strip(rows2), default=str) == json.dumps(strip(rows), default=str)  # deterministic


@pytest.mark.slow
def test_validation_report_cross_fit_and_ensemble_rows(tmp_path):
    """The validation that chose the shipped encoders: both directions, single seeds and their ensemble, and the
    pooled "all" rows are the means of the per-direction rows they pool."""
    from proxylab.retrieval.train_encoders import TrainConfig, split_models, validation_report
    from proxylab.retrieval.zoo import load_zoo

    zoo_dir, enc = _tiny_zoo(tmp_path, n_models=16)  # train part: 6 models, 2 + 4 after the re-split, 2 tasks each
    assert len(split_models(load_zoo(zoo_dir).manifest)[0]) == 6
    cfg = TrainConfig(steps=3, batch=4, images_per_task=60, models_per_step=4, width=16, dim=8)
    rows = validation_report(zoo_dir, weights=(0.0, 0.5), kernel_seeds=(0,), config=cfg, extractor=enc.extractor,
                             progress=False, n_features=(64,), train_seeds=(0, 1), ensemble=True, cross_fit=True,
                             query_seeds=(100,))
    assert {r["direction"] for r in rows} == {"inner>held", "held>inner", "all"}
    for r in rows:
        for key in ("top1_task", "recall_at_2", "recall_at_5", "transfer_recall_at_5"):
            assert 0.0 <= r[key] <= 1.0
        assert r["recall_at_2"] <= r["recall_at_5"]
        assert r["queries"] == 2 * 3  # 2 tasks x 3 shot counts x 1 seed
    per_dir = {(r["direction"], r["variant"], r["learned_weight"], r["members"], r["train_seed"]): r for r in rows}
    # one ensemble of both seeds per direction, scored on the other part's models
    ens = [per_dir[(d, "kernel+learned", 0.5, 2, "ens:0-1")] for d in ("inner>held", "held>inner")]
    assert [r["models"] for r in ens] == [4, 2] and [r["fit_models"] for r in ens] == [2, 4]
    pooled = per_dir[("all", "kernel+learned", 0.5, 2, "mean")]
    assert pooled["top1_task"] == pytest.approx(np.mean([r["top1_task"] for r in ens]))
    singles = [per_dir[(d, "kernel+learned", 0.5, 1, s)] for d in ("inner>held", "held>inner") for s in (0, 1)]
    assert per_dir[("all", "kernel+learned", 0.5, 1, "mean")]["recall_at_5"] == pytest.approx(
        np.mean([r["recall_at_5"] for r in singles]))


def test_evaluate_zoo_refuses_bad_arguments(tmp_path):
    with pytest.raises(ProxylabError, match="not a zoo"):
        E.evaluate_zoo(tmp_path / "nothing", queries=[])


def test_validate_encoders_scores_task_identification():
    from proxylab.retrieval.encoders import Encoders, KernelMap
    from proxylab.retrieval.signature import Signature

    rng = np.random.default_rng(0)
    d = F.FEATURE_DIM
    centres = {t: rng.uniform(size=(3, d)) * (np.arange(d) % 2 == k) + 0.05 for k, t in enumerate(("a", "b"))}
    pairs = np.array([(0, 1), (0, 2), (1, 2)])
    sigs, tasks = {}, {}
    for i in range(6):
        t = "ab"[i % 2]
        anchors = centres[t] + 0.02 * rng.uniform(size=(3, d))
        sigs[i] = Signature(anchors, (anchors[pairs[:, 0]] + anchors[pairs[:, 1]]) / 2, pairs, 3, 0, "fx-v", 0)
        tasks[i] = t
    queries = {}
    for t in "ab":
        y = np.repeat(np.arange(3), 5)
        queries[(t, 5, 0)] = ((centres[t][y] + 0.05 * rng.uniform(size=(15, d))).astype(np.float32), y)
    assert [q[:2] for q in E.validation_queries(["b", "a"], shots=(5,), seeds=(100, 101))] == [("a", 5)] * 2 + [("b", 5)] * 2
    torch.manual_seed(0)
    enc = Encoders(feature_dim=d, width=8, dim=8, extractor_id="fx-v", kernel=KernelMap(d, n_features=256),
                   learned_weight=0.0)
    res = E.validate_encoders(enc, sigs, tasks, queries)
    assert res["top1_task"] == 1.0 and res["recall_at_5"] == 1.0 and res["queries"] == 2 and res["models"] == 6
    assert res["recall_at_2"] == 1.0 and res["per_task_recall_at_5"] == {"a": 1.0, "b": 1.0}
    swapped = {i: "ba"["ab".index(t)] for i, t in tasks.items()}  # the same vectors, wrong task labels
    # transfer: each query ranked against the other task's models; per task as well as pooled
    truth = {"a": {i: 0.1 * i for i in sigs if tasks[i] == "b"}, "b": {i: 0.1 * i for i in sigs if tasks[i] == "a"}}
    tr = E.validate_encoders(enc, sigs, tasks, queries, truth)
    assert set(tr["per_task_transfer_recall_at_5"]) == {"a", "b"}
    assert np.mean(list(tr["per_task_transfer_recall_at_5"].values())) == pytest.approx(tr["transfer_recall_at_5"])
    bad = E.validate_encoders(enc, sigs, swapped, queries)
    assert bad["top1_task"] == 0.0 and bad["per_task_top1"] == {"a": 0.0, "b": 0.0}
    assert bad["recall_at_5"] == 1.0  # 5 of 6 models always include one of the 3 wrongly labelled ones
    # the top 2 are the query's true task's models, both labelled with the other task (pool-matched recall)
    assert bad["recall_at_2"] == 0.0
    # brute-force ranks for query "a": relabel its best 1 (then 2) models so its first own-task model sits at
    # rank 2 (then 3); query "b" keeps its own models on top. Recall@2 must count rank 2 and not rank 3.
    vec = {i: enc.encode_signature(sigs[i]) for i in sigs}
    qa = enc.encode_query_features(*queries[("a", 5, 0)])
    order_a = sorted(sigs, key=lambda i: -float(vec[i] @ qa))
    assert {tasks[i] for i in order_a[:3]} == {"a"}
    at_2 = E.validate_encoders(enc, sigs, {**tasks, order_a[0]: "b"}, queries)
    assert at_2["top1_task"] == 0.5 and at_2["recall_at_2"] == 1.0
    at_3 = E.validate_encoders(enc, sigs, {**tasks, order_a[0]: "b", order_a[1]: "b"}, queries)
    assert at_3["recall_at_2"] == 0.5 and at_3["recall_at_5"] == 1.0


def test_validation_report_refuses_test_split_queries(tmp_path):
    from proxylab.retrieval.train_encoders import validation_report

    with pytest.raises(ProxylabError, match="calib or train split"):
        validation_report(tmp_path / "no-zoo", query_split="test")


def test_validation_queries_come_from_the_calib_split_by_default():
    from proxylab.retrieval.tasks import SOURCE_TASKS

    class Raw:  # an "extractor" that hands the images back, so the draw can be traced to its split
        def embed(self, x):
            return x.flatten(1).numpy()

    def rows(split):
        return {im.tobytes() for im in SOURCE_TASKS["digits-lo"].data(split)[0].flatten(1).numpy()}

    calib, train = rows("calib"), rows("train")
    got = E.validation_query_features(["digits-lo"], Raw(), seeds=(0, 1), shots=(5, 20))
    assert sorted(got) == [("digits-lo", 5, 0), ("digits-lo", 5, 1), ("digits-lo", 20, 0), ("digits-lo", 20, 1)]
    for (_, shots, _), (f, y) in got.items():
        drawn = {row.tobytes() for row in f}
        assert drawn <= calib and not drawn & train
        # digits calib has 19 images in its smallest class: 20 shots are capped there, every class alike
        assert np.bincount(y).tolist() == [min(shots, 19)] * 5
    (f, _), = E.validation_query_features(["digits-lo"], Raw(), split="train", seeds=(0,), shots=(5,)).values()
    assert {row.tobytes() for row in f} <= train


def test_truth_stability_scores_one_draws_oracle_against_anothers_relevant_models():
    from proxylab.retrieval.tasks import QuerySpec

    a0, a1, b0, b1 = (QuerySpec("mnist5k-odd", 5, 0), QuerySpec("mnist5k-odd", 5, 1),
                      QuerySpec("animal-odd", 5, 0), QuerySpec("animal-odd", 5, 1))
    same = QuerySpec("mnist5k-lo", 5, 0)  # same-task queries are left out
    stable = {i: 1.0 - i / 20 for i in range(20)}  # model 0 best, then 1, ...
    flipped = {i: i / 20 for i in range(20)}  # the reverse order: top 5 = 15..19
    a10 = QuerySpec("mnist5k-odd", 10, 2)  # another shot count: never paired with the 5-shot draws
    truth = {a0.key: stable, a1.key: dict(stable), b0.key: stable, b1.key: flipped, same.key: stable,
             a10.key: flipped}
    rows = {r["task"]: r for r in E.truth_stability([a0, a1, b0, b1, same, a10], truth)}
    assert set(rows) == {"mnist5k-odd", "animal-odd", "all"}
    assert rows["mnist5k-odd"]["recall_at_5"] == 1.0 and rows["mnist5k-odd"]["pairs"] == 2
    assert rows["animal-odd"]["recall_at_5"] == 0.0  # the other draw's top 5 holds none of this draw's
    assert rows["all"] == {"task": "all", "pairs": 4, "recall_at_5": 0.5}
    # ties count in expectation: a draw where all 20 models tie ranks one of the other draw's 5 relevant models
    # into its top 5 with probability 1 - C(15,5)/C(20,5); the other way round every model is relevant (all tie
    # with the 5th), so that pair scores 1
    tied = {a0.key: stable, a1.key: {i: 0.5 for i in range(20)}}
    got = {r["task"]: r for r in E.truth_stability([a0, a1], tied)}["mnist5k-odd"]["recall_at_5"]
    assert got == pytest.approx((1 - math.comb(15, 5) / math.comb(20, 5) + 1.0) / 2, abs=1e-12)
