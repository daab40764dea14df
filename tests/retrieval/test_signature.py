"""Signatures: anchors and boundaries found black-box (oracles: brute force, a linear model's exact boundary),
counted calls, byte-for-byte determinism, relabelling invariance, refusal of bad models and bad files."""
import numpy as np
import pytest
import torch
import torch.nn as nn

from proxylab.errors import ProxylabError
from proxylab.retrieval import features as F
from proxylab.retrieval.blackbox import BlackBoxModel, TorchBlackBox
from proxylab.retrieval.signature import Signature, boundary_fractions, capture_signature, probe_pool


def _fx():
    torch.manual_seed(0)
    return F.FeatureExtractor(F._build_trunk(), id="fx-test")


def _linear(k=4, seed=0, perm=None):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, k))
    if perm is not None:  # the same model with its classes relabelled: new class c = old class perm[c]
        with torch.no_grad():
            lin = net[1]
            lin.weight.copy_(lin.weight[perm].clone())
            lin.bias.copy_(lin.bias[perm].clone())
    return net


def _pool(n=48, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).uniform(size=(n, 3, 32, 32)).astype(np.float32))


def test_shapes_calls_and_anchor_oracle():
    net, pool, fx = _linear(4), _pool(), _fx()
    bb = TorchBlackBox(net)
    sig = capture_signature(bb, extractor=fx, pool=pool, steps=5)
    assert sig.anchors.shape == (4, F.FEATURE_DIM) and sig.boundary.shape == (6, F.FEATURE_DIM)
    assert sig.pairs.tolist() == [[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]]
    assert sig.extractor == "fx-test" and sig.num_classes == 4
    # Brute force: the anchor features of class c are the mean features of the 8 pool images with the
    # highest softmax probability of c.
    with torch.no_grad():
        p = torch.softmax(net(pool), 1).numpy()
    feats = fx.embed(pool)
    for c in range(4):
        top = sorted(range(len(pool)), key=lambda n: -p[n, c])[:8]
        np.testing.assert_allclose(sig.anchors[c], feats[top].mean(0), rtol=1e-5, atol=1e-7)
    one = capture_signature(TorchBlackBox(net), extractor=fx, pool=pool, steps=5, top=1)
    np.testing.assert_array_equal(one.anchors, feats[p.argmax(0)])  # top=1: the single anchor image
    # Calls: the pool pass, then one image per bisection round for each pair whose two anchors the model
    # ranks i vs j differently (only those paths cross the boundary).
    pa = p[p.argmax(0)]
    crossing = sum((pa[i, i] >= pa[i, j]) != (pa[j, i] >= pa[j, j]) for i, j in sig.pairs)
    assert crossing >= 1
    assert sig.calls == bb.calls == 48 + crossing * 5


def test_bisection_lands_on_the_exact_boundary_of_a_linear_model():
    net, pool = _linear(3, seed=2), _pool(seed=1)
    with torch.no_grad():
        logits = net(pool)
    anchors = pool[torch.softmax(logits, 1).argmax(0)]
    pairs = np.array([[0, 1], [0, 2], [1, 2]])
    steps = 10

    def ask(images):
        with torch.no_grad():
            return torch.softmax(net(images), 1).numpy()

    t = boundary_fractions(ask, anchors, ask(anchors), pairs, steps).numpy()
    with torch.no_grad():
        la = net(anchors)
    for n, (i, j) in enumerate(pairs):
        # Logits are affine in the image, so logit_i - logit_j is affine in t: one exact crossing.
        d0 = float(la[i, i] - la[i, j])
        d1 = float(la[j, i] - la[j, j])
        t_star = d0 / (d0 - d1)
        assert abs(t[n] - t_star) <= 2.0 ** -(steps + 1) + 1e-6


def test_capture_is_byte_for_byte_deterministic():
    fx, pool = _fx(), _pool()
    a = capture_signature(TorchBlackBox(_linear(5)), extractor=fx, pool=pool, steps=4)
    b = capture_signature(TorchBlackBox(_linear(5)), extractor=fx, pool=pool, steps=4)
    assert a.to_bytes() == b.to_bytes()


def test_relabelling_classes_permutes_the_signature():
    fx, pool = _fx(), _pool()
    perm = [2, 0, 3, 1]
    sig = capture_signature(TorchBlackBox(_linear(4)), extractor=fx, pool=pool, steps=6)
    sig_p = capture_signature(TorchBlackBox(_linear(4, perm=perm)), extractor=fx, pool=pool, steps=6)
    np.testing.assert_array_equal(sig_p.anchors, sig.anchors[perm])
    rows = {tuple(p): r for r, p in enumerate(sig.pairs.tolist())}
    for r, (i, j) in enumerate(sig_p.pairs.tolist()):
        a, b = sorted((perm[i], perm[j]))
        np.testing.assert_allclose(sig_p.boundary[r], sig.boundary[rows[(a, b)]], rtol=1e-5, atol=1e-6)


class _Bad(BlackBoxModel):
    def __init__(self, kind):
        super().__init__()
        self.kind, self.num_classes = kind, 3

    def _predict(self, x):
        n = x.shape[0]
        p = np.full((n, 3), 1 / 3, np.float32)
        if self.kind == "nan":
            p[0, 0] = np.nan
        elif self.kind == "negative":
            p[:, 0], p[:, 1] = -0.5, 1.5 - 1 / 3
        elif self.kind == "width":
            p = np.full((n, 4), 0.25, np.float32)
        return p


@pytest.mark.parametrize("kind", ["nan", "negative", "width"])
def test_a_model_that_does_not_return_probabilities_is_refused(kind, tmp_path):
    with pytest.raises(ProxylabError):
        capture_signature(_Bad(kind), extractor=_fx(), pool=_pool(8))


def test_one_class_model_and_bad_steps_are_refused():
    bb = TorchBlackBox(_linear(2))
    bb.num_classes = 1
    with pytest.raises(ProxylabError, match=">= 2 classes"):
        capture_signature(bb, extractor=_fx(), pool=_pool(8))
    with pytest.raises(ProxylabError, match="steps"):
        capture_signature(TorchBlackBox(_linear(2)), extractor=_fx(), pool=_pool(8), steps=0)


def test_save_load_and_bytes_round_trip(tmp_path):
    sig = capture_signature(TorchBlackBox(_linear(3)), extractor=_fx(), pool=_pool(16), steps=3)
    path = tmp_path / "s.npz"
    sig.save(path)
    back = Signature.load(path)
    assert back.to_bytes() == sig.to_bytes() == Signature.from_bytes(sig.to_bytes()).to_bytes()
    assert (back.num_classes, back.calls, back.extractor, back.seed) == (3, sig.calls, "fx-test", 0)


def test_bad_signature_files_are_refused(tmp_path):
    sig = capture_signature(TorchBlackBox(_linear(3)), extractor=_fx(), pool=_pool(16), steps=3)
    with pytest.raises(ProxylabError, match="not a proxylab signature"):
        Signature.from_bytes(b"garbage")
    with pytest.raises(ProxylabError, match="not a proxylab signature"):
        Signature.from_bytes(sig.to_bytes()[:100])
    with pytest.raises(ProxylabError, match="does not exist"):
        Signature.load(tmp_path / "missing.npz")
    with pytest.raises(ProxylabError, match="NaN"):
        Signature(np.full((3, 4), np.nan), np.zeros((3, 4)), sig.pairs, 3, 0, "x", 0)
    with pytest.raises(ProxylabError, match="pairs"):
        Signature(np.zeros((3, 4)), np.zeros((3, 4)), [[1, 0], [0, 2], [1, 2]], 3, 0, "x", 0)
    with pytest.raises(ProxylabError, match="anchors"):
        Signature(np.zeros((2, 4)), np.zeros((3, 4)), sig.pairs, 3, 0, "x", 0)
    # An npz that needs pickle (object array) is refused, never unpickled.
    import io
    buf = io.BytesIO()
    np.savez(buf, format=np.array("proxylab-signature-1"), anchors=np.array([object()], dtype=object))
    with pytest.raises(ProxylabError):
        Signature.from_bytes(buf.getvalue())


@pytest.mark.slow
def test_probe_pool_is_seeded_canonical_and_from_source_data():
    a, b = probe_pool(0, 16), probe_pool.__wrapped__(0, 16)
    assert torch.equal(a, b)  # recomputed from scratch: same bytes
    assert a.shape == (16 + 6 * 8, 3, 32, 32) and float(a.min()) >= 0 and float(a.max()) <= 1
    assert not torch.equal(probe_pool(1, 16), a)


def test_signature_size_is_bounded_so_one_upload_cannot_exhaust_memory():
    k = 65
    pairs = np.array([(i, j) for i in range(k) for j in range(i + 1, k)])
    with pytest.raises(ProxylabError, match="at most 64 classes"):
        Signature(np.zeros((k, 4)), np.zeros((len(pairs), 4)), pairs, k, 0, "x", 0)
    repeated = np.array([[0, 1]] * 4)  # 3 classes have 3 pairs: a fourth boundary sample repeats one
    with pytest.raises(ProxylabError, match="at most one per class pair"):
        Signature(np.zeros((3, 4)), np.zeros((4, 4)), repeated, 3, 0, "x", 0)
