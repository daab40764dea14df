"""Encoders: unit vectors, byte-for-byte determinism, invariance to class order, validated queries, file round trip."""
import json

import numpy as np
import pytest
import torch

from proxylab.errors import ProxylabError
from proxylab.retrieval import features as F
from proxylab.retrieval.encoders import (Encoders, KernelMap, check_query_labels, class_prototypes, model_tokens,
                                         query_tokens)
from proxylab.retrieval.signature import Signature


def _enc(seed=0, **kw):
    torch.manual_seed(seed)
    fx = F.FeatureExtractor(F._build_trunk(), id="fx-test")
    return Encoders(feature_dim=F.FEATURE_DIM, width=32, dim=16, extractor_id="fx-test", extractor=fx, **kw)


def _sig(k=4, seed=0):
    rng = np.random.default_rng(seed)
    pairs = np.array([(i, j) for i in range(k) for j in range(i + 1, k)])
    return Signature(rng.uniform(size=(k, F.FEATURE_DIM)), rng.uniform(size=(len(pairs), F.FEATURE_DIM)), pairs,
                     k, 100, "fx-test", 0)


def _permuted(sig, perm):
    """The signature of the same model with class c relabelled perm[c] (rows and pairs follow)."""
    inv = np.argsort(perm)  # new label of old class c is inv[c]
    anchors = sig.anchors[perm]
    rows = {tuple(p): r for r, p in enumerate(sig.pairs.tolist())}
    pairs, boundary = [], []
    for i in range(sig.num_classes):
        for j in range(i + 1, sig.num_classes):
            pairs.append((i, j))
            boundary.append(sig.boundary[rows[tuple(sorted((perm[i], perm[j])))]])
    assert sorted(inv.tolist()) == list(range(sig.num_classes))
    return Signature(anchors, np.array(boundary), np.array(pairs), sig.num_classes, sig.calls, sig.extractor, sig.seed)


def _query(n_per_class=5, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(n_per_class * classes, 3, 32, 32)).astype(np.float32)
    y = np.repeat(np.arange(classes), n_per_class)
    return x, y


def test_signature_vector_is_unit_and_byte_deterministic():
    enc, sig = _enc(), _sig()
    v = enc.encode_signature(sig)
    assert v.shape == (16,) and v.dtype == np.float32
    assert abs(float(np.linalg.norm(v)) - 1) < 1e-5
    assert v.tobytes() == enc.encode_signature(Signature.from_bytes(sig.to_bytes())).tobytes()


def test_signature_vector_ignores_class_order():
    enc, sig = _enc(), _sig(5)
    v = enc.encode_signature(sig)
    for perm in ([4, 3, 2, 1, 0], [1, 3, 0, 4, 2]):
        np.testing.assert_allclose(enc.encode_signature(_permuted(sig, np.array(perm))), v, atol=1e-6)
    assert not np.allclose(enc.encode_signature(_sig(5, seed=1)), v, atol=1e-3)  # but it does see the content


def test_query_vector_ignores_label_order_and_values():
    enc = _enc()
    x, y = _query()
    v = enc.encode_query(x, y)
    assert abs(float(np.linalg.norm(v)) - 1) < 1e-5 and v.tobytes() == enc.encode_query(x, y).tobytes()
    relabelled = np.array([7, 2, 5])[y]  # other label values and class order
    np.testing.assert_allclose(enc.encode_query(x, relabelled), v, atol=1e-6)
    np.testing.assert_allclose(enc.encode_query(x, np.array(["c", "a", "b"])[y]), v, atol=1e-6)
    shuffle = np.random.default_rng(1).permutation(len(y))  # image order does not matter either
    np.testing.assert_allclose(enc.encode_query(x[shuffle], y[shuffle]), v, atol=1e-6)


def test_query_tokens_match_numpy_prototypes():
    rng = np.random.default_rng(0)
    f = rng.uniform(size=(9, 6)).astype(np.float32)
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2])
    cls_tok, pair_tok = query_tokens(f, y)
    u = f / np.linalg.norm(f, axis=1, keepdims=True)
    protos = np.stack([u[y == c].mean(0) for c in range(3)])
    np.testing.assert_allclose(cls_tok.numpy(), protos, rtol=1e-5)
    spread = np.array([np.linalg.norm(u[y == c] - protos[c], axis=1).mean() for c in range(3)])
    expected = [np.concatenate([protos[i] + protos[j], np.abs(protos[i] - protos[j]), np.full(6, spread[i] + spread[j])])
                for i, j in [(0, 1), (0, 2), (1, 2)]]
    np.testing.assert_allclose(pair_tok.numpy(), np.array(expected), rtol=1e-5, atol=1e-6)


def test_model_tokens_are_symmetric_in_each_pair():
    sig = _sig(3)
    _, tok = model_tokens(sig.anchors, sig.boundary, sig.pairs)
    _, tok_swapped = model_tokens(sig.anchors, sig.boundary, sig.pairs[:, ::-1].copy())
    np.testing.assert_array_equal(tok.numpy(), tok_swapped.numpy())


@pytest.mark.parametrize("labels, match", [
    (None, "needs labels"), (np.zeros(6, int), "at least 2 classes"), (np.arange(5), "one label per image"),
    (np.full(6, 0.5), "integers or strings"),
])
def test_bad_query_labels_are_refused(labels, match):
    x, _ = _query(2, 3)
    with pytest.raises(ProxylabError, match=match):
        _enc().encode_query(x, labels)


def test_bad_query_images_are_refused():
    x, y = _query(2, 3)
    with pytest.raises(ProxylabError):
        _enc().encode_query(x[:, :1], y)
    with pytest.raises(ProxylabError):
        _enc().encode_query(x * 255, y)


def test_float_integer_labels_are_accepted():
    assert check_query_labels(np.array([1.0, 0.0, 1.0]), 3).tolist() == [1, 0, 1]


def test_extractor_mismatch_is_refused():
    sig = _sig()
    sig.extractor = "fx-other"
    with pytest.raises(ProxylabError, match="recapture"):
        _enc().encode_signature(sig)


def test_save_load_round_trip(tmp_path):
    enc = _enc(3)
    path = tmp_path / "enc.pt"
    enc.save(path)
    back = Encoders.load(path, extractor=enc.extractor)
    sig = _sig()
    assert back.encode_signature(sig).tobytes() == enc.encode_signature(sig).tobytes()
    x, y = _query()
    assert back.encode_query(x, y).tobytes() == enc.encode_query(x, y).tobytes()
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ProxylabError, match="not a proxylab encoder"):
        Encoders.load(tmp_path / "junk.pt")
    with pytest.raises(ProxylabError, match="does not exist"):
        Encoders.load(tmp_path / "none.pt")


# ------------------------------------------------------------------------------------------- training
def test_split_models_is_stable_when_the_zoo_grows():
    from proxylab.retrieval.train_encoders import split_models

    small = [{"id": i, "task": "t"} for i in range(40)]
    big = [{"id": i, "task": "t"} for i in range(200)]
    tr_s, te_s = split_models(small)
    tr_b, te_b = split_models(big)
    assert set(tr_s) <= set(tr_b) and set(te_s) <= set(te_b) and not set(tr_b) & set(te_b)
    assert 70 <= len(tr_b) <= 130  # about half
    with pytest.raises(ProxylabError):
        split_models(big, train_fraction=1.0)


def _synthetic(tasks=3, models_per_task=6, seed=0):
    """Signatures and query banks whose features carry their task: task t's images live around centre t."""
    rng = np.random.default_rng(seed)
    # Per task, 5 class centres living in the task's own block of feature dimensions (plus a common floor).
    block = F.FEATURE_DIM // tasks
    centres = 0.1 + np.zeros((tasks, 5, F.FEATURE_DIM))
    for t in range(tasks):
        centres[t, :, t * block:(t + 1) * block] += rng.uniform(size=(5, block)) * 2
    sigs, model_task, bank = {}, {}, {}
    for t in range(tasks):
        for m in range(models_per_task):
            i = t * models_per_task + m
            anchors = centres[t] + 0.2 * rng.normal(size=centres[t].shape)
            pairs = np.array([(a, b) for a in range(5) for b in range(a + 1, 5)])
            boundary = (anchors[pairs[:, 0]] + anchors[pairs[:, 1]]) / 2 + 0.1 * rng.normal(size=(10, F.FEATURE_DIM))
            sigs[i] = Signature(np.abs(anchors), np.abs(boundary), pairs, 5, 0, "fx-test", 0)
            model_task[i] = f"task{t}"
        labels = np.repeat(np.arange(5), 40)
        bank[f"task{t}"] = (np.abs(centres[t][labels] + 0.3 * rng.normal(size=(200, F.FEATURE_DIM))).astype(np.float32),
                            labels)
    return sigs, model_task, bank


@pytest.mark.slow
def test_training_separates_tasks_on_held_out_models():
    from proxylab.retrieval.train_encoders import TrainConfig, train_encoders

    torch.set_num_threads(1)
    sigs, model_task, bank = _synthetic()
    train = {i: s for i, s in sigs.items() if i % 2 == 0}
    cfg = TrainConfig(steps=60, batch=16, width=32, dim=16, lr=3e-3)
    enc, hist = train_encoders(train, model_task, bank, "fx-test", cfg, progress=False)
    assert np.mean(hist["loss"][-10:]) < np.mean(hist["loss"][:10])
    held_out = [i for i in sigs if i % 2 == 1]  # never seen in training
    vecs = np.stack([enc.encode_signature(sigs[i]) for i in held_out])
    hits = 0
    for t in range(3):
        feats, labels = bank[f"task{t}"]
        q = enc.encode_query_features(feats[::7], labels[::7])
        hits += model_task[held_out[int(np.argmax(vecs @ q))]] == f"task{t}"
    assert hits == 3
    # Same seed, same weights: training is deterministic.
    enc2, _ = train_encoders(train, model_task, bank, "fx-test", cfg, progress=False)
    assert enc2.encode_signature(sigs[1]).tobytes() == enc.encode_signature(sigs[1]).tobytes()


# ------------------------------------------------------------------------------------------- shipped files
def test_shipped_encoders_and_zoo_index_work_together():
    from proxylab.retrieval.encoders import SHIPPED_ENCODERS
    from proxylab.retrieval.features import FeatureExtractor
    from proxylab.retrieval.index import ModelIndex
    from proxylab.retrieval.tasks import get_task

    from proxylab.retrieval.train_encoders import SHIPPED_ENSEMBLE, SHIPPED_LEARNED_WEIGHT

    # ~3.4 MB of fp32 weights per learned member (3 members): the cap catches an accidental larger ensemble
    assert SHIPPED_ENCODERS.is_file() and SHIPPED_ENCODERS.stat().st_size < 4_000_000 * SHIPPED_ENSEMBLE
    enc = Encoders.default()
    # Shipped: the kernel map plus the learned part (the chosen hybrid, an ensemble of SHIPPED_ENSEMBLE learned
    # members at SHIPPED_LEARNED_WEIGHT); the index was built by these encoders.
    assert enc.kernel is not None and enc.learned_weight == SHIPPED_LEARNED_WEIGHT and 0 < enc.learned_weight < 1
    assert len(enc.members) == SHIPPED_ENSEMBLE
    assert enc.dim == enc.kernel.dim + SHIPPED_ENSEMBLE * enc.learned_dim
    assert enc.extractor_id == FeatureExtractor.default().id
    # the shipped index records the shipped encoders' id (opening it with them neither warns nor fails)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        idx = ModelIndex.open(SHIPPED_ENCODERS.parent / "zoo_index", read_only=True, encoder_id=enc.id)
    assert len(idx) >= 100 and idx.dim == enc.dim and idx.encoder_id == enc.id
    report = json.loads(SHIPPED_ENCODERS.with_suffix(".json").read_text())
    assert report["encoder_id"] == enc.id and report.get("ranking_targets") == "calib"
    (x, y), _ = get_task("mnist5k-lo").query(5, seed=3)
    q = enc.encode_query(x, y.numpy())
    hits = idx.search(q, k=5, encoder_id=enc.id)
    assert len(hits) == 5 and hits[0].score >= hits[-1].score
    # The query vector is what the shipped index is searched with: unit length, deterministic.
    assert abs(float(np.linalg.norm(q)) - 1) < 1e-5 and q.tobytes() == enc.encode_query(x, y.numpy()).tobytes()


# ------------------------------------------------------------------------------------------- kernel map
def _kenc(learned_weight=0.0, n_features=512, seed=0):
    torch.manual_seed(seed)
    fx = F.FeatureExtractor(F._build_trunk(), id="fx-test")
    return Encoders(feature_dim=F.FEATURE_DIM, width=32, dim=16, extractor_id="fx-test", extractor=fx,
                    kernel=KernelMap(F.FEATURE_DIM, n_features=n_features), learned_weight=learned_weight)


def test_kernel_map_matches_the_exact_set_kernel():
    """phi(x).phi(y) ~ exp(-|x-y|^2 / 2 sigma^2) on unit rows: the class term's inner product is the normalised
    mean kernel between the two sets (checked against the brute-force kernel with many features)."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4, 8)), rng.normal(size=(3, 8))
    km = KernelMap(8, n_features=20000, sigma_class=0.8, pair_weight=0.0)
    ua, ub = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (a, b))
    k = lambda x, y: np.exp(-((x[:, None] - y[None]) ** 2).sum(-1) / (2 * 0.8 ** 2)).mean()
    exact = k(ua, ub) / np.sqrt(k(ua, ua) * k(ub, ub))
    approx = float(km.embed(a) @ km.embed(b))
    assert abs(approx - exact) < 0.03, (approx, exact)


def test_kernel_map_is_deterministic_and_order_invariant():
    rng = np.random.default_rng(1)
    protos = rng.normal(size=(5, F.FEATURE_DIM))
    v = KernelMap(F.FEATURE_DIM, n_features=256).embed(protos)
    assert v.tobytes() == KernelMap(F.FEATURE_DIM, n_features=256).embed(protos).tobytes()  # a fresh map, same bytes
    assert KernelMap(F.FEATURE_DIM, n_features=256).digest == KernelMap(F.FEATURE_DIM, n_features=256).digest
    assert KernelMap(F.FEATURE_DIM, n_features=256, seed=1).digest != KernelMap(F.FEATURE_DIM, n_features=256).digest
    np.testing.assert_allclose(KernelMap(F.FEATURE_DIM, n_features=256).embed(protos[[3, 0, 4, 2, 1]]), v, atol=1e-12)
    assert abs(np.linalg.norm(v) - 1) < 1e-12 and v.shape == (512,)
    with pytest.raises(ProxylabError):
        KernelMap(F.FEATURE_DIM, sigma_class=0.0)


def test_kernel_encoders_are_deterministic_and_ignore_class_order():
    for w in (0.0, 0.25):
        enc, sig = _kenc(w), _sig(5)
        v = enc.encode_signature(sig)
        assert v.shape == (enc.dim,) == (1024 + (16 if w else 0),) and v.dtype == np.float32
        assert v.tobytes() == _kenc(w).encode_signature(Signature.from_bytes(sig.to_bytes())).tobytes()
        np.testing.assert_allclose(enc.encode_signature(_permuted(sig, np.array([1, 3, 0, 4, 2]))), v, atol=1e-6)
        x, y = _query()
        q = enc.encode_query(x, y)
        assert q.tobytes() == enc.encode_query(x, y).tobytes() and abs(float(np.linalg.norm(q)) - 1) < 1e-5
        np.testing.assert_allclose(enc.encode_query(x, np.array([7, 2, 5])[y]), q, atol=1e-6)
        shuffle = np.random.default_rng(1).permutation(len(y))
        np.testing.assert_allclose(enc.encode_query(x[shuffle], y[shuffle]), q, atol=1e-6)


def test_class_prototypes_are_raw_means():
    f = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.testing.assert_allclose(class_prototypes(f, np.array([1, 0, 1, 0])), [[6, 7, 8], [3, 4, 5]])


def test_kernel_encoders_rank_the_query_task_first_without_training():
    sigs, model_task, bank = _synthetic()
    enc = _kenc(0.0, n_features=1024)
    ids = sorted(sigs)
    vecs = np.stack([enc.encode_signature(sigs[i]) for i in ids])
    for t in range(3):
        feats, labels = bank[f"task{t}"]
        for keep in (np.arange(5), np.array([1, 3])):  # the whole task, and a 2-class part of it
            rows = np.flatnonzero(np.isin(labels, keep))[::4]
            q = enc.encode_query_features(feats[rows], labels[rows])
            order = np.argsort(-(vecs @ q), kind="stable")
            assert model_task[ids[order[0]]] == f"task{t}"
            assert all(model_task[ids[n]] == f"task{t}" for n in order[:6])  # all 6 models of the task lead


def test_kernel_encoders_round_trip_and_detect_other_random_features(tmp_path):
    enc = _kenc(0.25, n_features=128)
    path = tmp_path / "enc.pt"
    enc.save(path)
    back = Encoders.load(path, extractor=enc.extractor)
    sig = _sig()
    assert back.id == enc.id and back.encode_signature(sig).tobytes() == enc.encode_signature(sig).tobytes()
    assert _kenc(0.5, n_features=128).id != enc.id and _enc().id != enc.id  # the id moves with what shapes vectors
    blob = torch.load(path, weights_only=True)
    blob["kernel"]["digest"] = "0" * 16
    torch.save(blob, tmp_path / "other.pt")
    with pytest.raises(ProxylabError, match="random features differ"):
        Encoders.load(tmp_path / "other.pt")
    with pytest.raises(ProxylabError, match="learned_weight"):
        Encoders(feature_dim=F.FEATURE_DIM, width=8, dim=8, learned_weight=0.0)


@pytest.mark.parametrize("flag, value", [("--lr", "nan"), ("--lr", "0"), ("--grad-clip", "-1"), ("--grad-clip", "inf")])
def test_training_refuses_rates_that_would_ship_broken_encoders(tmp_path, capsys, flag, value):
    from proxylab.retrieval.train_encoders import main

    with pytest.raises(SystemExit) as exit_:
        main(["--zoo", str(tmp_path), flag, value])
    assert exit_.value.code == 2 and f"{flag} must be" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--sigma-class", "0"], "--sigma-class must be"),
    (["--sigma-class", "nan", "--validate", "v.csv"], "--sigma-class must be"),
    (["--extractor", "fx.pt", "--ship"], "apply to --validate only"),
    (["--validate-split", "train"], "apply to --validate only"),
    (["--index-only", "--sigma-class", "0.1"], "--index-only re-encodes"),
])
def test_training_cli_refuses_options_that_would_be_ignored_or_invalid(tmp_path, capsys, args, message):
    """An option that would silently do nothing (or ship the default kernel) is refused before any work."""
    from proxylab.retrieval.train_encoders import main

    with pytest.raises(SystemExit) as exit_:
        main(["--zoo", str(tmp_path)] + args)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- learned ensembles
def _members(n, seed0=0):
    return [_enc(seed0 + k) for k in range(n)]


def test_one_member_ensemble_is_the_encoder_itself_and_format_2_files_still_load(tmp_path):
    base = _kenc(0.35, n_features=128)
    one = Encoders.ensemble([base], kernel=base.kernel, learned_weight=0.35)
    sig = _sig()
    x, y = _query()
    # a one-member ensemble keeps the id and the bytes: shipped indexes of format-2 encoders stay valid
    assert one.id == base.id and one.dim == base.dim
    assert one.encode_signature(sig).tobytes() == base.encode_signature(sig).tobytes()
    assert one.encode_query(x, y).tobytes() == base.encode_query(x, y).tobytes()
    # a file written in format 2 (state = one model/query pair) loads as one member with the same vectors
    blob = torch.load(__import__("io").BytesIO(base.to_bytes()), weights_only=True)
    blob["format"] = "proxylab-encoders-2"
    blob["state"] = blob["state"]["members"][0]
    torch.save(blob, tmp_path / "v2.pt")
    old = Encoders.load(tmp_path / "v2.pt", extractor=base.extractor)
    assert len(old.members) == 1 and old.id == base.id
    assert old.encode_signature(sig).tobytes() == base.encode_signature(sig).tobytes()


def test_one_member_id_and_vector_are_pinned_to_the_format_2_code(one_thread):
    """Pinned values computed by the format-2 code (commit a74eca1's encoders.py) for a seeded one-member encoder:
    a change of the id hash or of the one-member vector would silently orphan every format-2 index."""
    import hashlib

    torch.manual_seed(0)
    enc = Encoders(feature_dim=8, width=8, dim=4, extractor_id="ext-test", kernel=KernelMap(8, n_features=16),
                   learned_weight=0.25)
    rng = np.random.default_rng(0)
    v = enc.encode_query_features(rng.random((12, 8)).astype(np.float32), np.repeat(np.arange(3), 4))
    assert enc.id == "enc-da265826706a3136"
    assert hashlib.sha256(v.tobytes()).hexdigest()[:16] == "bee5f4f739412088"


def test_ensemble_similarity_is_kernel_plus_w2_times_the_mean_member_similarity():
    members, w = _members(3), 0.5
    kernel = KernelMap(F.FEATURE_DIM, n_features=128)
    ens = Encoders.ensemble(members, kernel=kernel, learned_weight=w)
    assert len(ens.members) == 3 and ens.dim == kernel.dim + 3 * 16
    sig = _sig(5)
    x, y = _query(classes=4)
    m, q = ens.encode_signature(sig).astype(np.float64), ens.encode_query(x, y).astype(np.float64)
    feats = members[0].extractor.embed(x)
    km, kq = kernel.embed(sig.anchors), kernel.embed(class_prototypes(feats, y))
    lm = [e.encode_signature(sig).astype(np.float64) for e in members]  # learned-only members: unit vectors
    # (each _enc has its own random extractor: the members are compared on the ensemble's features)
    lq = [e.encode_query_features(feats, y).astype(np.float64) for e in members]
    # every part is unit length, so each full vector has norm sqrt(1 + w^2) before the final normalisation
    expected = (km @ kq + w * w * np.mean([a @ b for a, b in zip(lm, lq)])) / (1 + w * w)
    assert abs(float(m @ q) - expected) < 1e-5
    # unit, deterministic, invariant to class order like a single encoder
    assert abs(float(np.linalg.norm(m)) - 1) < 1e-5
    assert np.allclose(ens.encode_signature(_permuted(sig, [4, 2, 0, 1, 3])), m, atol=1e-5)
    perm = np.array([2, 0, 3, 1])
    assert np.allclose(ens.encode_query(x, perm[y]), q, atol=1e-5)


def test_ensemble_round_trip_id_and_member_checks(tmp_path):
    kernel = KernelMap(F.FEATURE_DIM, n_features=128)
    ens = Encoders.ensemble(_members(3), kernel=kernel, learned_weight=0.35)
    path = tmp_path / "ens.pt"
    ens.save(path)
    back = Encoders.load(path, extractor=ens.extractor)
    sig = _sig()
    assert len(back.members) == 3 and back.id == ens.id and back.dim == ens.dim
    assert back.encode_signature(sig).tobytes() == ens.encode_signature(sig).tobytes()
    # the id moves with any member, their number and their order
    assert Encoders.ensemble(_members(2), kernel=kernel, learned_weight=0.35).id != ens.id
    assert Encoders.ensemble(_members(3, seed0=1), kernel=kernel, learned_weight=0.35).id != ens.id
    assert Encoders.ensemble(_members(3)[::-1], kernel=kernel, learned_weight=0.35).id != ens.id
    # learned-only ensembles are unit vectors too
    plain = Encoders.ensemble(_members(2), kernel=None, learned_weight=1.0)
    v = plain.encode_signature(sig)
    assert v.shape == (32,) and abs(float(np.linalg.norm(v)) - 1) < 1e-5
    with pytest.raises(ProxylabError, match="at least one"):
        Encoders.ensemble([])
    torch.manual_seed(0)
    wide = Encoders(feature_dim=F.FEATURE_DIM, width=16, dim=16, extractor_id="fx-test")
    with pytest.raises(ProxylabError, match="share"):
        Encoders.ensemble([_enc(), wide])


def test_training_refuses_an_empty_ensemble(tmp_path, capsys):
    from proxylab.retrieval.train_encoders import main

    with pytest.raises(SystemExit) as exit_:
        main(["--zoo", str(tmp_path), "--ensemble", "0"])
    assert exit_.value.code == 2 and "--ensemble must be" in capsys.readouterr().err
