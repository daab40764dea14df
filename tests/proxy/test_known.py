"""Known proxies: registered with a source and a sign, formulas that round-trip, and behaviour that follows
from their definitions on a real network."""
import math

import numpy as np
import pytest
import torch

from proxylab.proxy import KNOWN_PROXIES, OMPQ, Proxy, parse_proxy, score_configs
from proxylab.stats import NetworkStats

EXPECTED = {"bparams", "hawq", "hawqv2", "ompq", "qe", "snip", "synflow", "fisher", "grad_norm", "emq"}


def test_registry_holds_the_brief():
    assert EXPECTED <= set(KNOWN_PROXIES.names())


@pytest.mark.parametrize("name", KNOWN_PROXIES.names())
def test_documented_and_round_trips(name):
    p = KNOWN_PROXIES.get(name)
    assert p.source and "(" in p.source  # names the paper
    assert KNOWN_PROXIES.help(name) == p.source
    if isinstance(p, Proxy):
        assert parse_proxy(str(p)).hash == p.hash
    assert parse_proxy(name) is p


@pytest.mark.parametrize("name", KNOWN_PROXIES.names())
def test_more_bits_everywhere_scores_higher(stats, name):
    """Each known proxy's sign makes all-max-bits beat all-min-bits: less quantization noise (hawq, hawqv2, qe,
    fit) or a bit-weight that grows with b (the bit-weighted saliencies, ompq, emq's sqrt(relu(b W)))."""
    L = len(stats.layer_names)
    lo, hi = min(stats.bit_choices), max(stats.bit_choices)
    s = score_configs(KNOWN_PROXIES.get(name), stats, np.array([[lo] * L, [hi] * L]))
    assert s[1] > s[0]


def test_bparams_is_model_size(stats):
    bits = np.array([[2, 3, 4], [4, 4, 4]])[:, : len(stats.layer_names)]
    expected = (bits * stats.params[None, :]).sum(axis=1)
    np.testing.assert_allclose(score_configs(KNOWN_PROXIES.get("bparams"), stats, bits), expected)


def test_hawqv2_matches_its_definition(stats):
    bits = [4, 2, 3]
    expected = -sum(
        stats.scalar(l, "hessian_trace") / stats.params[l] * float((stats.qerr(l, b).double() ** 2).sum())
        for l, b in enumerate(bits)
    )
    got = score_configs(KNOWN_PROXIES.get("hawqv2"), stats, np.array([bits]))[0]
    assert got == pytest.approx(expected, rel=1e-9)


def _with_acts(stats, acts):
    """Stats whose ``act`` is replaced and that have no Gram extras: OMPQ's fallback path."""
    d = stats.to_dict()
    d["tensors"]["act"] = acts
    d.pop("extras", None)
    return NetworkStats.from_dict(d)


def _with_grams(stats, acts):
    """Stats whose Gram extras are those of ``acts`` (what compute_stats stores over the whole batch)."""
    d = stats.to_dict()
    d["extras"] = dict(d["extras"], gram=[a.double().reshape(len(a), -1) @ a.double().reshape(len(a), -1).T
                                          for a in acts])
    return NetworkStats.from_dict(d)


@pytest.mark.parametrize("make, ompq", [(_with_acts, OMPQ(source="act")), (_with_acts, KNOWN_PROXIES.get("ompq")),
                                        (_with_grams, KNOWN_PROXIES.get("ompq"))])
def test_ompq_orthogonality(stats, make, ompq):
    """Gram source with Gram extras, act source, and the Gram source falling back to acts without extras."""
    rng = np.random.default_rng(0)
    base = torch.tensor(rng.normal(size=(6, 40)), dtype=torch.float32)
    other = torch.tensor(rng.normal(size=(6, 40)), dtype=torch.float32)
    # layers 0 and 1 see the same features (one scaled: CKA is scale invariant), layer 2 something else
    st = make(stats, [base, 3 * base, other])
    imp = ompq.importance(st)
    x, z = base.double().numpy(), other.double().numpy()

    def cka(a, b):
        n = a.shape[0]
        h = np.eye(n) - 1.0 / n
        ka, kb = h @ a @ a.T @ h, h @ b @ b.T @ h
        return (ka * kb).sum() / (np.linalg.norm(ka) * np.linalg.norm(kb))

    c = cka(x, z)
    np.testing.assert_allclose(imp, [math.exp(-(1 + c)), math.exp(-(1 + c)), math.exp(-2 * c)], rtol=1e-9)
    assert imp[2] > imp[0]  # the layer unlike the others matters more
    bits = np.array([[2, 4, 3], [4, 2, 2]])
    np.testing.assert_allclose(score_configs(ompq, st, bits), [ompq.score_naive(st, b) for b in bits], rtol=1e-9)


def test_ompq_uses_the_whole_batch_not_the_kept_images(stats):
    """The act tensor keeps few images; OMPQ's Gram matrices cover every image of the batch (16 here)."""
    assert stats.tensor(0, "act").shape[0] < 16
    assert all(stats.gram(l).shape == (16, 16) for l in range(len(stats.layer_names)))
    known = KNOWN_PROXIES.get("ompq")
    assert known.source_kind == "gram" and OMPQ().hash == known.hash
    old = OMPQ(source="act")  # the images "act" kept, as every OMPQ figure before the extras
    assert not np.allclose(old.importance(stats), known.importance(stats))
    assert old.hash != known.hash


def test_ompq_needs_enough_images(stats):
    from proxylab.proxy import InvalidProxy

    st = _with_acts(stats, [stats.tensor(l, "act")[:2] for l in range(len(stats.layer_names))])
    with pytest.raises(InvalidProxy, match="at least 3 images"):
        KNOWN_PROXIES.get("ompq").layer_table(st)


SYNFLOW_FORMULA = "sum_layers(smul(bits, smul(params, mean(abs(mul(V, W))))))"


def test_synflow_equals_its_formula_up_to_one_positive_factor(stats):
    """Without bounded activations the float64 saliencies are the formula's, divided by the largest layer's."""
    rng = np.random.default_rng(1)
    bits = rng.choice([2, 3, 4], size=(20, len(stats.layer_names)))
    got = score_configs(KNOWN_PROXIES.get("synflow"), stats, bits)
    want = score_configs(parse_proxy(SYNFLOW_FORMULA), stats, bits)
    ratio = got / want
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-5)
    assert ratio[0] > 0
    np.testing.assert_allclose(got, [KNOWN_PROXIES.get("synflow").score_naive(stats, b) for b in bits], rtol=1e-9)
    d = stats.to_dict()
    d.pop("extras")
    no_extras = NetworkStats.from_dict(d)  # falls back to the float32 V: same ranks
    fallback = score_configs(KNOWN_PROXIES.get("synflow"), no_extras, bits)
    np.testing.assert_allclose(fallback / want, (fallback / want)[0], rtol=1e-9)


def test_synflow_invalid_when_every_layer_is_zero(stats):
    from proxylab.proxy import InvalidProxy

    d = stats.to_dict()
    d["extras"] = dict(d["extras"], synflow_log=torch.full((len(stats.layer_names),), -math.inf, dtype=torch.float64))
    with pytest.raises(InvalidProxy, match="zero"):
        KNOWN_PROXIES.get("synflow").layer_table(NetworkStats.from_dict(d))
