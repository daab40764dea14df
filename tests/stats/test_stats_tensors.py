"""Each per-layer tensor of compute_stats against an independent computation with plain torch.autograd."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from proxylab.quant import quantizable_layers, quantize_weight
from proxylab.stats import compute_stats
from proxylab.stats.collect import _fisher_loop, _fisher_vmap

FAST = dict(hessian=False)


def test_layer_order_is_forward_order_not_registration_order(tiny, data):
    x, y = data
    st = compute_stats(tiny, x, y, **FAST)
    expected = [name for name, _ in quantizable_layers(tiny, x[:1])]
    assert st.layer_names == expected == ["stem", "conv", "head"]
    assert [st.tensor(i, "weight").shape for i in range(3)] == [(3, 1, 3, 3), (4, 3, 3, 3), (3, 4)]


def test_grad_is_autograd_of_mean_cross_entropy(tiny, data):
    x, y = data
    st = compute_stats(tiny, x, y, batch_size=len(x), **FAST)
    ref = copy.deepcopy(tiny).eval()
    loss = F.cross_entropy(ref(x), y)
    loss.backward()
    for i, module in enumerate([ref.stem, ref.conv, ref.head]):
        torch.testing.assert_close(st.tensor(i, "grad"), module.weight.grad, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(st.tensor(i, "weight"), module.weight.detach())
    assert st.meta["loss"] == pytest.approx(float(loss.detach()), rel=1e-6)


def test_grad_uses_the_seeded_subset_of_the_batch(tiny, data, batch_order):
    x, y = data
    st = compute_stats(tiny, x, y, batch_size=10, seed=3, **FAST)
    idx = batch_order(len(x), 3)[:10]
    ref = copy.deepcopy(tiny).eval()
    F.cross_entropy(ref(x[idx]), y[idx]).backward()
    torch.testing.assert_close(st.tensor("head", "grad"), ref.head.weight.grad, rtol=1e-5, atol=1e-7)
    other = compute_stats(tiny, x, y, batch_size=10, seed=4, **FAST)
    assert not torch.allclose(other.tensor("head", "grad"), st.tensor("head", "grad"))


def test_act_is_the_layer_output_of_the_first_images_and_bounded(tiny, data, batch_order):
    x, y = data
    st = compute_stats(tiny, x, y, batch_size=16, seed=2, act_images=5, act_max_elements=200, **FAST)
    idx = batch_order(len(x), 2)[:16]
    outs = {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: outs.__setitem__(n, o.detach()))
             for n, m in [("stem", tiny.stem), ("conv", tiny.conv), ("head", tiny.head)]]
    with torch.no_grad():
        tiny.eval()(x[idx])
    for h in hooks:
        h.remove()
    # stem: 3x6x6 = 108 values per image -> 200 // 108 = 1 image; conv: 4x3x3 = 36 -> 5; head: 3 -> 5
    for name, keep in [("stem", 1), ("conv", 5), ("head", 5)]:
        act = st.tensor(name, "act")
        assert act.shape[0] == keep
        torch.testing.assert_close(act, outs[name][:keep])


def test_virtual_grad_plain_is_grad_of_summed_logits_on_ones(tiny, data):
    x, y = data
    st = compute_stats(tiny, x, y, batch_size=7, virtual="plain", **FAST)
    ref = copy.deepcopy(tiny).eval()
    ref(torch.ones(7, 1, 6, 6)).sum().backward()
    for i, module in enumerate([ref.stem, ref.conv, ref.head]):
        torch.testing.assert_close(st.tensor(i, "virtual_grad"), module.weight.grad, rtol=1e-5, atol=1e-6)


def _synflow_oracle(net, batch: int):
    """The tiny net written out by hand with every affine map made positive, in float64."""
    d = {k: v.detach().double() for k, v in net.state_dict().items()}
    w1 = d["stem.weight"].abs().requires_grad_()
    w2 = d["conv.weight"].abs().requires_grad_()
    w3 = d["head.weight"].abs().requires_grad_()
    s = d["bn.weight"] / torch.sqrt(d["bn.running_var"] + net.bn.eps)
    t = d["bn.bias"] - s * d["bn.running_mean"]
    h = F.conv2d(torch.ones(batch, 1, 6, 6, dtype=torch.float64), w1, padding=1)
    h = torch.relu(h * s.abs().view(1, -1, 1, 1) + t.abs().view(1, -1, 1, 1))
    h = torch.relu(F.conv2d(h, w2, d["conv.bias"].abs(), stride=2, padding=1))
    out = F.linear(h.mean((2, 3)), w3, d["head.bias"].abs())
    out.sum().backward()
    return [w1.grad, w2.grad, w3.grad]


def test_virtual_grad_synflow_matches_hand_linearized_network(tiny, data):
    x, y = data
    st = compute_stats(tiny, x, y, batch_size=9, **FAST)
    assert st.meta["virtual"] == "synflow"
    for i, ref in enumerate(_synflow_oracle(tiny, 9)):
        got = st.tensor(i, "virtual_grad")
        assert got.dtype == torch.float32 and bool((got >= 0).all())
        torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-8)
    # the caller's network is untouched by the linearization
    assert bool((tiny.stem.weight < 0).any())


def test_fisher_is_sum_of_squared_per_sample_gradients(tiny, data):
    x, y = data
    st = compute_stats(tiny, x, y, batch_size=len(x), **FAST)
    ref = copy.deepcopy(tiny).eval()
    expected = [torch.zeros_like(m.weight) for m in (ref.stem, ref.conv, ref.head)]
    for i in range(len(x)):
        ref.zero_grad()
        F.cross_entropy(ref(x[i:i + 1]), y[i:i + 1]).backward()
        for e, m in zip(expected, (ref.stem, ref.conv, ref.head)):
            e += m.weight.grad ** 2
    assert st.meta["fisher_method"] == "vmap"
    for i in range(3):
        torch.testing.assert_close(st.tensor(i, "fisher"), expected[i], rtol=1e-4, atol=1e-8)


def test_fisher_vmap_chunks_and_loop_fallback_agree(tiny, data):
    x, y = data
    layers = quantizable_layers(tiny, x[:1])
    tiny.eval()
    for _, m in layers:
        m.weight.requires_grad_(True)
    names = [f"{n}.weight" for n, _ in layers]
    whole = _fisher_vmap(tiny, names, x, y, chunk=len(x))
    chunked = _fisher_vmap(tiny, names, x, y, chunk=5)
    looped = _fisher_loop(tiny, layers, x, y)
    for a, b, c in zip(whole, chunked, looped):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-9)
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_qerr_is_weight_minus_rtn(tiny, data, bits):
    x, y = data
    st = compute_stats(tiny, x, y, bit_choices=(2, 3, 4), **FAST)
    for i in range(len(st)):
        w = st.tensor(i, "weight")
        expected = w - quantize_weight(w, bits, per_channel=True)
        torch.testing.assert_close(st.qerr(i, bits), expected)
        assert st.qerr(i, bits).abs().max() > 0


def test_same_seed_same_stats_and_model_left_as_found(tiny, data):
    x, y = data
    tiny.train()
    tiny.stem.weight.requires_grad_(False)
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    a = compute_stats(tiny, x, y, batch_size=12, seed=5, hessian_probes=3, hessian_iters=4)
    b = compute_stats(tiny, x, y, batch_size=12, seed=5, hessian_probes=3, hessian_iters=4)
    for key in ("weight", "act", "grad", "virtual_grad", "fisher"):
        for i in range(len(a)):
            assert torch.equal(a.tensor(i, key), b.tensor(i, key))
    assert a.scalars("hessian_trace").tolist() == b.scalars("hessian_trace").tolist()
    assert a.scalars("hessian_eig").tolist() == b.scalars("hessian_eig").tolist()
    assert tiny.training and not tiny.stem.weight.requires_grad and tiny.conv.weight.requires_grad
    for k, v in tiny.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in tiny.parameters())


def test_double_precision_model_is_measured_on_a_float32_copy(tiny, data):
    x, y = data
    ref = compute_stats(tiny, x, y, **FAST)
    dbl = copy.deepcopy(tiny).double()
    st = compute_stats(dbl, x, y, **FAST)
    assert next(dbl.parameters()).dtype == torch.float64
    for i in range(3):
        assert st.tensor(i, "grad").dtype == torch.float32
        torch.testing.assert_close(st.tensor(i, "grad"), ref.tensor(i, "grad"))


def test_huge_synflow_values_are_scaled_by_one_power_of_two():
    torch.manual_seed(0)
    layers = [nn.Flatten(), nn.Linear(4, 16)] + [nn.Linear(16, 16) for _ in range(12)] + [nn.Linear(16, 3)]
    net = nn.Sequential(*layers)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Linear):
                m.weight.uniform_(-4.0, 4.0)  # |w| ~ 2, fan-in 16: ~32x growth per layer
    x = torch.randn(6, 1, 2, 2)
    y = torch.randint(0, 3, (6,))
    st = compute_stats(net, x, y, batch_size=6, hessian=False)
    shift = st.meta["virtual_grad_log2_scale"]
    assert shift > 0
    ref = copy.deepcopy(net).double()
    with torch.no_grad():
        for p in ref.parameters():
            p.abs_()
    ref(torch.ones(6, 1, 2, 2, dtype=torch.float64)).sum().backward()
    linears = [m for m in ref.modules() if isinstance(m, nn.Linear)]
    peak = 0.0
    for i, m in enumerate(linears):
        got = st.tensor(i, "virtual_grad")
        assert bool(torch.isfinite(got.pow(2)).all())
        torch.testing.assert_close(got.double(), m.weight.grad / 2.0**shift, rtol=1e-5, atol=0)
        peak = max(peak, float(got.abs().max()))
    assert 2.0**59 < peak <= 2.0**60
