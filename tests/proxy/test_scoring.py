"""Vectorised scoring (layer table + gather) against the naive per-config path, on real NetworkStats."""
import pickle
import time

import numpy as np
import pytest

from proxylab.errors import ProxylabError
from proxylab.proxy import (
    KNOWN_PROXIES,
    InvalidProxy,
    emq_graph,
    emq_linear,
    emq_tree,
    parse_proxy,
    random_formula,
    score_configs,
    validate,
)
from proxylab.proxy.evaluate import bits_to_columns
from proxylab.stats import NetworkStats


def _configs(stats, n=12, seed=0):
    rng = np.random.default_rng(seed)
    return rng.choice(stats.bit_choices, size=(n, len(stats.layer_names)))


def _naive_all(p, stats, bits):
    return np.array([p.score_naive(stats, row) for row in bits])


@pytest.mark.parametrize("name", KNOWN_PROXIES.names())
def test_known_proxy_vectorised_equals_naive(stats, name):
    p = KNOWN_PROXIES.get(name)
    bits = _configs(stats)
    np.testing.assert_allclose(score_configs(p, stats, bits), _naive_all(p, stats, bits), rtol=1e-6, atol=0)


def _uniform_configs(stats):
    return np.array([[b] * len(stats.layer_names) for b in stats.bit_choices])


def test_random_trees_vectorised_equals_naive(stats):
    """Same value when valid; when the table is invalid, the naive path fails on a config using that entry, and
    the first invalid layer agrees (uniform configs cover every table entry)."""
    makers = [random_formula, emq_tree, emq_linear, emq_graph]
    valid = invalid = 0
    for i in range(160):
        p = makers[i % 4](1000 + i)
        uniform = _uniform_configs(stats)
        try:
            table = p.layer_table(stats)
        except InvalidProxy as err:
            invalid += 1
            failures = []
            for row in uniform:
                try:
                    p.score_naive(stats, row)
                except InvalidProxy as e:
                    failures.append(stats.layer_names.index(e.layer))
            assert failures, f"vectorised says invalid ({err}) but naive scores every config: {p}"
            assert stats.layer_names[min(failures)] == err.layer, str(p)
            continue
        valid += 1
        bits = np.vstack([uniform, _configs(stats, 8, i)])
        fast = score_configs(p, stats, bits)
        slow = _naive_all(p, stats, bits)
        np.testing.assert_allclose(fast, slow, rtol=1e-6, atol=1e-12, err_msg=str(p))
        assert table.shape == (len(stats.layer_names), len(stats.bit_choices))
    assert valid > 40 and invalid > 10  # both branches really exercised


def test_invalid_proxy_names_layer_and_op(stats):
    first = stats.layer_names[0]
    with pytest.raises(InvalidProxy) as err:
        parse_proxy("mean_layers(mean(invert(relu(bW))))").layer_table(stats)  # relu zeros -> 1/0
    assert (err.value.layer, err.value.op) == (first, "invert")
    assert f"layer '{first}'" in str(err.value) and isinstance(err.value, ProxylabError)
    with pytest.raises(InvalidProxy) as err:
        parse_proxy("mean_layers(mean(tostd(tomean(bW))))").layer_table(stats)  # std of a single value
    assert err.value.op == "tostd"
    with pytest.raises(InvalidProxy, match="do not broadcast") as err:
        parse_proxy("mean_layers(mean(add(bW, bA)))").layer_table(stats)
    assert err.value.op == "add"
    e2 = pickle.loads(pickle.dumps(err.value))
    assert (e2.layer, e2.op, e2.reason) == (err.value.layer, err.value.op, err.value.reason)


def test_validate_fails_fast(stats):
    assert validate("mean_layers(mean(abs(bW)))", stats) is None
    bad = validate("mean_layers(mean(exp(exp(exp(abs(bA))))))", stats)
    assert isinstance(bad, InvalidProxy) and bad.op == "exp"


def test_bit_dependence(stats):
    p = parse_proxy("mean_layers(mean(abs(W)))")
    t = p.layer_table(stats)
    assert np.all(t == t[:, :1])  # no bit-dependent input: same value for every bit choice
    q = parse_proxy("sum_layers(smul(bits, mean(abs(W))))")
    np.testing.assert_allclose(q.layer_table(stats), t * np.array(stats.bit_choices)[None, :], rtol=1e-12)


def test_aggregators(stats):
    bits = _configs(stats)
    body = "mean(sqrt(abs(bG)))"
    t = parse_proxy(f"mean_layers({body})").layer_table(stats)
    cols = bits_to_columns(bits, stats.bit_choices, stats.layer_names)
    per_layer = t[np.arange(t.shape[0])[None, :], cols]
    for agg, fn in (("mean_layers", np.mean), ("sum_layers", np.sum), ("min_layers", np.min), ("max_layers", np.max)):
        p = parse_proxy(f"{agg}({body})")
        assert p.decomposable == (agg in ("mean_layers", "sum_layers"))
        np.testing.assert_allclose(score_configs(p, stats, bits), fn(per_layer, axis=1), rtol=1e-12)


def test_bad_configs_are_clear(stats):
    p = parse_proxy("mean_layers(mean(abs(bW)))")
    L = len(stats.layer_names)
    with pytest.raises(ProxylabError, match=rf"shape \[N, {L}\]"):
        score_configs(p, stats, np.full((2, L + 1), 2))
    bits = np.full((2, L), 2)
    bits[1, 1] = 5
    with pytest.raises(ProxylabError, match=rf"bit-width 5 \(config 1, layer '{stats.layer_names[1]}'\)"):
        score_configs(p, stats, bits)
    with pytest.raises(ProxylabError, match="config has"):
        p.score_naive(stats, [2] * (L - 1))
    for row in ([2.7] + [2] * (L - 1), [5] + [2] * (L - 1)):  # the oracle refuses what the fast path refuses
        with pytest.raises(ProxylabError, match="integers|not one of"):
            p.score_naive(stats, row)


def test_missing_hessian_is_explained(stats):
    d = stats.to_dict()
    d["scalars"] = {}
    no_hessian = NetworkStats.from_dict(d)
    with pytest.raises(ProxylabError, match="hessian=True"):
        KNOWN_PROXIES.get("hawqv2").layer_table(no_hessian)
    assert KNOWN_PROXIES.get("hawqv2").uses_hessian and not KNOWN_PROXIES.get("emq").uses_hessian


def test_float32_evaluation_close_to_float64(stats):
    import torch

    p = KNOWN_PROXIES.get("emq")
    np.testing.assert_allclose(p.layer_table(stats, torch.float32), p.layer_table(stats), rtol=1e-5)


def test_vectorised_is_much_faster_than_naive(stats):
    p = parse_proxy("mean_layers(smul(mean(softmax(abslog(bV))), mean(sqrt(relu(bW)))))")
    bits = _configs(stats, 200, 1)
    p.layer_table(stats)  # warm the prepared inputs, as the search loop would be
    t0 = time.perf_counter()
    score_configs(p, stats, bits)
    fast = time.perf_counter() - t0
    t0 = time.perf_counter()
    _naive_all(p, stats, bits[:20])
    slow = (time.perf_counter() - t0) * 10
    assert slow / fast > 20, f"vectorised {fast * 1e3:.1f} ms vs naive {slow * 1e3:.1f} ms for 200 configs"


def test_prepared_inputs_are_cached_and_released(stats):
    import gc

    import torch

    from proxylab.proxy import inputs

    copy = NetworkStats.from_dict(stats.to_dict())
    p = parse_proxy("mean_layers(mean(abs(bW)))")
    p.layer_table(copy)
    assert inputs.prepare(copy) is inputs.prepare(copy)  # converted once, reused by every candidate
    key = (id(copy), torch.float64)
    assert key in inputs._PREPARED
    del copy
    gc.collect()
    assert key not in inputs._PREPARED  # the cache never keeps stats alive
