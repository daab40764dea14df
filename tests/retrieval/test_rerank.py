"""Transferability estimators against brute-force loops of their formulas, and the re-ranking stage."""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from proxylab.errors import ProxylabError
from proxylab.retrieval.blackbox import BlackBoxModel, TorchBlackBox
from proxylab.retrieval.index import Hit
from proxylab.retrieval.rerank import hscore, leep, logme, logme_details, nce, rerank


def _probs(n, cs, seed=0, sharp=2.0):
    rng = np.random.default_rng(seed)
    logits = sharp * rng.normal(size=(n, cs))
    p = np.exp(logits - logits.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True)


def _leep_loops(theta, y):
    n, cs = theta.shape
    classes = sorted(set(y.tolist()))
    joint = {(a, z): 0.0 for a in classes for z in range(cs)}
    for i in range(n):
        for z in range(cs):
            joint[(y[i], z)] += theta[i, z] / n
    total = 0.0
    for i in range(n):
        inner = 0.0
        for z in range(cs):
            pz = sum(joint[(a, z)] for a in classes)
            inner += joint[(y[i], z)] / pz * theta[i, z]
        total += math.log(inner)
    return total / n


def _nce_loops(theta, y):
    n = len(y)
    z = [int(np.argmax(theta[i])) for i in range(n)]
    pairs = {}
    for a, b in zip(y.tolist(), z):
        pairs[(a, b)] = pairs.get((a, b), 0) + 1 / n
    h = 0.0
    for (a, b), p in pairs.items():
        pz = sum(q for (a2, b2), q in pairs.items() if b2 == b)
        h -= p * math.log(p / pz)
    return -h


@pytest.mark.parametrize("seed", range(4))
def test_leep_and_nce_match_loops(seed):
    rng = np.random.default_rng(seed)
    theta = _probs(40, 6, seed)
    y = rng.integers(0, 3, 40) * 7 + 2  # arbitrary integer labels: only the grouping matters
    assert leep(theta, y) == pytest.approx(_leep_loops(theta, y), abs=1e-10)
    assert nce(theta, y) == pytest.approx(_nce_loops(theta, y), abs=1e-10)


def test_leep_and_nce_prefer_the_model_that_knows_the_labels():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200)
    good = np.full((200, 5), 0.05)
    good[np.arange(200), y] = 0.8  # source class y predicts target class y
    bad = _probs(200, 5, seed=1)
    assert leep(good, y) > leep(bad, y)
    assert nce(good, y) == pytest.approx(0.0, abs=1e-12)  # Y is a function of Z: no conditional entropy
    assert nce(bad, y) < -0.5


def test_leep_tolerates_a_source_class_nobody_predicts():
    theta = np.array([[0.5, 0.5, 0.0], [0.2, 0.8, 0.0], [0.9, 0.1, 0.0]])
    assert math.isfinite(leep(theta, [0, 1, 1]))


def _evidence_direct(f, t, a, b):
    """log p(t | F, a, b) of Bayesian linear regression, from its definition with dense matrices."""
    n, d = f.shape
    A = a * np.eye(d) + b * f.T @ f
    m = b * np.linalg.solve(A, f.T @ t)
    _, logdet = np.linalg.slogdet(A)
    return (d / 2 * np.log(a) + n / 2 * np.log(b) - n / 2 * np.log(2 * np.pi)
            - b / 2 * np.sum((f @ m - t) ** 2) - a / 2 * m @ m - 0.5 * logdet)


@pytest.mark.parametrize("n,d", [(60, 8), (45, 20)])
def test_logme_matches_direct_evidence_at_the_fixed_point(n, d):
    rng = np.random.default_rng(n + d)
    y = rng.integers(0, 3, n)
    f = rng.normal(size=(n, d)) + 0.8 * np.eye(3)[y] @ rng.normal(size=(3, d))
    res = logme_details(f, y)
    evid = []
    for c in range(3):
        t = (y == c).astype(float)
        a, b = res.alpha[c], res.beta[c]
        e = _evidence_direct(f, t, a, b)
        assert res.evidence[c] == pytest.approx(e, rel=1e-8, abs=1e-8)
        # a maximum: moving alpha or beta either way lowers the evidence
        for fa, fb in [(1.2, 1), (0.8, 1), (1, 1.2), (1, 0.8)]:
            assert _evidence_direct(f, t, a * fa, b * fb) < e
        evid.append(e)
    assert res.score == pytest.approx(np.mean(evid) / n, rel=1e-10)
    assert logme(f, y) == res.score


def test_logme_when_features_interpolate_the_labels():
    """N < D: beta grows without bound; the evidence must approach its supremum from below."""
    rng = np.random.default_rng(1)
    n, d = 12, 30
    y = rng.integers(0, 3, n)
    f = rng.normal(size=(n, d)) + 0.8 * np.eye(3)[y] @ rng.normal(size=(3, d))
    res = logme_details(f, y)
    assert np.isfinite(res.score) and (res.iterations < 300).all()
    for c in range(3):
        t = (y == c).astype(float)
        a, b = res.alpha[c], res.beta[c]
        for fb in (1e-2, 1e-4):  # smaller beta (well conditioned for the dense oracle): lower evidence
            assert _evidence_direct(f, t, a, b * fb) < res.evidence[c] + 1e-6
        assert _evidence_direct(f, t, a * 1.3, b * 1e-3) < res.evidence[c] + 1e-6


def test_logme_and_hscore_prefer_informative_features():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 150)
    informative = np.eye(4)[y] @ rng.normal(size=(4, 16)) + 0.3 * rng.normal(size=(150, 16))
    noise = rng.normal(size=(150, 16))
    assert logme(informative, y) > logme(noise, y) + 0.1
    assert hscore(informative, y) > hscore(noise, y) + 1.0


def _hscore_loops(f, y):
    n, d = f.shape
    mean = f.sum(0) / n
    cov_f = sum(np.outer(f[i] - mean, f[i] - mean) for i in range(n)) / (n - 1)
    class_mean = {c: f[y == c].mean(0) for c in set(y.tolist())}
    g = np.array([class_mean[c] for c in y.tolist()])
    gmean = g.sum(0) / n
    cov_g = sum(np.outer(g[i] - gmean, g[i] - gmean) for i in range(n)) / (n - 1)
    return float(np.trace(np.linalg.inv(cov_f) @ cov_g))


@pytest.mark.parametrize("seed", range(3))
def test_hscore_matches_loops(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, 50)
    f = rng.normal(size=(50, 5)) + np.eye(3)[y] @ rng.normal(size=(3, 5))
    assert hscore(f, y) == pytest.approx(_hscore_loops(f, y), rel=1e-9)


@pytest.mark.parametrize("call,match", [
    (lambda: leep(_probs(5, 3), [0, 0, 0, 0, 0]), "single class"),
    (lambda: leep(_probs(5, 3), [0, 1]), "one label per sample"),
    (lambda: leep(_probs(5, 3) * 2, [0, 1, 0, 1, 0]), "sum to 1"),
    (lambda: nce(-_probs(3, 3), [0, 1, 0]), "negative"),
    (lambda: nce(np.ones(3), [0, 1, 0]), "shape"),
    (lambda: leep(_probs(3, 3), [0.5, 1, 0]), "integers"),
    (lambda: logme(np.full((4, 2), np.nan), [0, 1, 0, 1]), "NaN"),
    (lambda: hscore(np.ones(4), [0, 1, 0, 1]), "\\[N, D\\]"),
])
def test_bad_inputs(call, match):
    with pytest.raises(ProxylabError, match=match):
        call()


def _models():
    """Three black boxes over canonical images, one of which separates the query's two classes."""
    torch.manual_seed(0)
    models = {}
    for mid in (10, 11, 12):
        lin = nn.Linear(3 * 32 * 32, 3)
        with torch.no_grad():
            lin.weight.zero_()
            lin.bias.zero_()
            if mid == 11:  # class 0 <- bright images, class 1 <- dark ones
                lin.weight[0].fill_(0.01)
                lin.weight[1].fill_(-0.01)
                lin.bias[0], lin.bias[1] = -0.01 * 1536, 0.01 * 1536  # threshold at mid-grey (3072 px * 0.5)
            else:
                lin.weight.normal_(0, 0.001)
        models[mid] = TorchBlackBox(nn.Sequential(nn.Flatten(), lin), name=f"m{mid}")
    return models


def _query():
    rng = np.random.default_rng(0)
    labels = np.array([0, 1] * 6)
    images = np.where(labels[:, None, None, None] == 0, 0.8, 0.2) + 0.05 * rng.uniform(size=(12, 3, 32, 32))
    return images.astype(np.float32), labels


@pytest.mark.parametrize("method", ["leep", "nce"])
def test_rerank_promotes_the_model_that_fits_and_counts_calls(method):
    models = _models()
    images, labels = _query()
    hits = [Hit(10, 0.9, {"name": "m10"}), Hit(12, 0.8, {"name": "m12"}), Hit(11, 0.7, {"name": "m11"})]
    out, spent = rerank(hits, models.__getitem__, images, labels, method=method)
    assert out[0].id == 11
    assert spent == 3 * 12 and sum(m.calls for m in models.values()) == 36
    assert out[0].metadata["index_score"] == 0.7 and out[0].metadata["rerank"] == method
    fn = leep if method == "leep" else nce
    for h in out:
        assert h.score == pytest.approx(fn(models[h.id].predict_proba(images), labels), abs=1e-9)
    assert [h.score for h in out] == sorted((h.score for h in out), reverse=True)


def test_rerank_validates_before_calling_anything():
    models = _models()
    images, labels = _query()
    hits = [Hit(10, 0.9, {})]
    with pytest.raises(ProxylabError, match="single class"):
        rerank(hits, models.__getitem__, images, np.zeros(12, int))
    with pytest.raises(ProxylabError, match="query images"):
        rerank(hits, models.__getitem__, images[:, :1], labels)
    with pytest.raises(ProxylabError, match="unknown re-ranking method 'hscore'; choose from leep, logme, nce"):
        rerank(hits, models.__getitem__, images, labels, method="hscore")
    assert all(m.calls == 0 for m in models.values())
    assert rerank([], models.__getitem__, images, labels) == ([], 0)


def _feature_models():
    """Three torch classifiers whose classifier INPUT (4-d) differs: model 21's is the mean brightness (what
    separates the query's classes), the others' are zero-sum random projections, blind to brightness (they see
    only the images' noise)."""
    torch.manual_seed(1)
    models = {}
    for mid in (20, 21, 22):
        proj = nn.Linear(3 * 32 * 32, 4)
        with torch.no_grad():
            if mid == 21:
                proj.weight.fill_(1.0 / 3072)
                proj.bias.zero_()
            else:
                proj.weight.normal_(0, 0.01)
                proj.weight.sub_(proj.weight.mean(dim=1, keepdim=True))
        models[mid] = TorchBlackBox(nn.Sequential(nn.Flatten(), proj, nn.Linear(4, 3)), name=f"f{mid}")
    return models


def test_logme_rerank_uses_the_models_features_and_counts_calls():
    from proxylab.retrieval.oracle import penultimate_features

    models = _feature_models()
    images, labels = _query()
    hits = [Hit(20, 0.9, {}), Hit(22, 0.8, {}), Hit(21, 0.7, {})]
    out, spent = rerank(hits, models.__getitem__, images, labels, method="logme")
    assert out[0].id == 21 and out[0].metadata["rerank"] == "logme"
    assert spent == 3 * 12 and sum(m.calls for m in models.values()) == 36
    for h in out:  # the score is LogME of the classifier's input, as the oracle reads it (white-box)
        want = logme(penultimate_features(models[h.id].module, torch.from_numpy(images)), labels)
        assert h.score == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_logme_rerank_refuses_a_model_without_features_before_any_call():
    class ProbsOnly(BlackBoxModel):
        num_classes = 3
        name = "remote"

        def _predict(self, x):
            return np.full((x.shape[0], 3), 1 / 3, np.float32)

    conv_only = TorchBlackBox(nn.Sequential(nn.Conv2d(3, 3, 32), nn.Flatten()), name="conv")  # no nn.Linear
    models = {**_feature_models(), 30: ProbsOnly(), 31: conv_only}
    images, labels = _query()
    for bad in (30, 31):
        with pytest.raises(ProxylabError, match=f"model {bad} .* exposes none"):
            rerank([Hit(20, 0.9, {}), Hit(bad, 0.8, {})], models.__getitem__, images, labels, method="logme")
        with pytest.raises(ProxylabError, match="exposes no features"):
            models[bad].features(images)
    assert all(m.calls == 0 for m in models.values())
    # leep still re-ranks the same models (probabilities only)
    out, spent = rerank([Hit(30, 0.9, {}), Hit(31, 0.8, {})], models.__getitem__, images, labels, method="leep")
    assert spent == 24 and {h.id for h in out} == {30, 31}


def test_features_need_the_classifier_to_run():
    class AuxHead(nn.Module):  # its last registered nn.Linear (aux) is never called
        def __init__(self):
            super().__init__()
            self.fc = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 3))
            self.aux = nn.Linear(3, 3)

        def forward(self, x):
            return self.fc(x)

    model = TorchBlackBox(AuxHead())
    images, _ = _query()
    assert model.supports_features
    for ask in (model.features, model.predict_with_features):
        with pytest.raises(ProxylabError, match="never called") as err:
            ask(images)
        assert "failed on canonical images" not in str(err.value)  # proxylab's own reason, not the generic one


def test_features_are_checked():
    from proxylab.retrieval.blackbox import check_features

    assert check_features(np.ones((2, 3), np.float32), 2).dtype == np.float64
    for bad, match in ((np.ones((2, 3)) * np.nan, "NaN"), (np.ones((3, 3)), "shape"), (np.ones(2), "shape"),
                       (np.ones((2, 0)), "shape"), (np.array([["a", "b"], ["c", "d"]]), "not numbers")):
        with pytest.raises(ProxylabError, match=match):
            check_features(bad, 2, source="m")
    models = _feature_models()
    images, _ = _query()
    f = models[21].features(images[:5])
    assert f.shape == (5, 4) and models[21].calls == 5
    with pytest.raises(ProxylabError, match="images"):
        models[21].features(images[:, :, :16])


def test_predict_with_features_is_one_pass_equal_to_the_two_calls():
    models = _feature_models()
    images, _ = _query()
    m = models[21]
    m.batch_size = 5  # several batches: the pair must be concatenated per answer
    forwards = []
    m.module.register_forward_hook(lambda *_: forwards.append(1))
    probs, feats = m.predict_with_features(images)
    assert len(forwards) == -(-len(images) // 5) and m.calls == len(images)  # one forward per batch, counted once
    np.testing.assert_allclose(probs, m.predict_proba(images), rtol=1e-6)
    np.testing.assert_array_equal(feats, m.features(images))
    assert probs.dtype == np.float32 and feats.dtype == np.float64


def test_predict_with_features_refuses_before_any_call_and_checks_both_answers():
    class ProbsOnly(BlackBoxModel):
        num_classes = 3

        def _predict(self, x):
            return np.full((x.shape[0], 3), 1 / 3, np.float32)

    images, _ = _query()
    remote = ProbsOnly()
    with pytest.raises(ProxylabError, match="exposes no features"):
        remote.predict_with_features(images)
    assert remote.calls == 0

    class OnePass(ProbsOnly):  # answers both from one pass; the test breaks one answer at a time
        supports_features = True
        bad = "probs"

        def _predict_with_features(self, x):
            probs, feats = self._predict(x), np.ones((x.shape[0], 4))
            if self.bad == "probs":
                probs = -probs
            else:
                feats[0, 0] = np.nan
            return probs, feats

    model = OnePass()
    with pytest.raises(ProxylabError, match="negative probabilities"):
        model.predict_with_features(images)
    model.bad = "features"
    with pytest.raises(ProxylabError, match="NaN or inf features"):
        model.predict_with_features(images)


def test_predict_with_features_without_a_one_pass_answer_counts_both_passes():
    class TwoCalls(BlackBoxModel):  # features, but no _predict_with_features: the images are sent twice
        num_classes = 3
        supports_features = True

        def _predict(self, x):
            return np.full((x.shape[0], 3), 1 / 3, np.float32)

        def _features(self, x):
            return x.flatten(1)[:, :4].double().numpy()

    images, _ = _query()
    model = TwoCalls()
    probs, feats = model.predict_with_features(images)
    assert model.calls == 2 * len(images) and probs.shape == (len(images), 3) and feats.shape == (len(images), 4)


def test_classifier_pass_outputs_that_do_not_join_are_a_clear_error():
    from proxylab.retrieval.blackbox import classifier_pass, penultimate_features

    class Squeezed(nn.Module):  # a last batch of one image comes back as [K], which does not stack with [N, K]
        def __init__(self):
            super().__init__()
            self.fc = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 3))

        def forward(self, x):
            return self.fc(x).squeeze()

    images = torch.from_numpy(_query()[0][:3])
    with pytest.raises(ProxylabError, match="do not join"):
        classifier_pass(Squeezed(), images, batch_size=2)
    assert penultimate_features(Squeezed(), images, batch_size=2).shape == (3, 3 * 32 * 32)  # outputs unused
