"""Stats extras: Gram matrices over the whole batch (OMPQ) and float64 SynFlow log-saliencies that see
through bounded activations (ReLU6), stored in a side cache entry that leaves the main entry untouched."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from proxylab.stats import compute_stats

from .conftest import make_tiny


def test_grams_are_the_outputs_gram_over_every_image(tmp_path):
    net = make_tiny().eval()
    torch.manual_seed(1)
    x, y = torch.randn(20, 1, 6, 6), torch.randint(0, 3, (20,))
    st = compute_stats(net, x, y, batch_size=12, hessian=False, act_images=2)
    # the same 12 images compute_stats draws (seeded), through the float network, by numpy
    idx = torch.randperm(20, generator=torch.Generator().manual_seed(0))[:12]
    outs = {}

    def keep(name):
        def hook(_m, _i, out):
            outs[name] = out.detach().numpy()

        return hook

    layers = [("stem", net.stem), ("conv", net.conv), ("head", net.head)]
    handles = [m.register_forward_hook(keep(n)) for n, m in layers]
    with torch.no_grad():
        net(x[idx])
    for h in handles:
        h.remove()
    for name in ("stem", "conv", "head"):
        flat = outs[name].reshape(12, -1).astype(np.float64)
        np.testing.assert_allclose(st.gram(name).numpy(), flat @ flat.T, rtol=1e-6, atol=1e-9)
    assert st.tensor("stem", "act").shape[0] == 2  # act keeps few images; the Gram matrix has them all


class ReLU6Net(nn.Module):
    """Three conv + ReLU6 layers and a head, weights big enough that the positive-linearized network
    saturates every ReLU6 (as MobileNetV2's does)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.c1 = nn.Conv2d(2, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)
        self.c3 = nn.Conv2d(4, 4, 1)
        self.fc = nn.Linear(4, 3)
        self.act = nn.ReLU6()
        with torch.no_grad():
            for m in (self.c1, self.c2, self.c3):
                m.weight.mul_(4.0)

    def forward(self, x):
        x = self.act(self.c1(x))
        x = self.act(self.c2(x))
        x = self.act(self.c3(x))
        return self.fc(x.mean((2, 3)))


def linear_oracle(net: nn.Module, input_shape, batch: int):
    """params_l * mean|V_l W_l| by forward passes only: on the positive network with ReLU6 -> identity (what
    ReLU is there), sum(logits) is affine in each W_l with slope V_l >= 0, so sum(V_l * W_l) is the drop
    of the output when W_l is zeroed. Independent of autograd."""
    pos = ReLU6Net().double()
    pos.load_state_dict({k: v.double().abs() for k, v in net.state_dict().items()})
    pos.act = nn.Identity()
    ones = torch.ones((1,) + tuple(input_shape[1:]), dtype=torch.float64)
    out = []
    with torch.no_grad():
        full = float(pos(ones).sum()) * batch
        for m in (pos.c1, pos.c2, pos.c3, pos.fc):
            keep = m.weight.clone()
            m.weight.zero_()
            drop = full - float(pos(ones).sum()) * batch
            m.weight.copy_(keep)
            params = m.weight.numel() + m.bias.numel()
            out.append(math.log(params * drop / m.weight.numel()))
    return np.array(out)


def test_synflow_sees_through_relu6():
    net = ReLU6Net().eval()
    x, y = torch.randn(8, 2, 5, 5), torch.randint(0, 3, (8,))
    st = compute_stats(net, x, y, batch_size=8, hessian=False)
    # the synflow saliencies reach every layer below the saturated ReLU6s (kept as ReLU6, all three layers'
    # gradients were exactly zero) and equal the forward-difference oracle ...
    logs = st.synflow_log()
    assert np.isfinite(logs).all()
    np.testing.assert_allclose(logs, linear_oracle(net, x.shape, 8), rtol=1e-9)
    # ... and so does the virtual_grad tensor the proxy language reads as V (float32, rescaled)
    scale = 2.0 ** st.meta["virtual_grad_log2_scale"]
    for l, m in enumerate((net.c1, net.c2, net.c3, net.fc)):
        v = st.tensor(l, "virtual_grad").double() * scale
        assert float(v.abs().min()) > 0
        saliency = float(st.params[l]) * float((v * m.weight.detach().double().abs()).mean())
        assert math.log(saliency) == pytest.approx(logs[l], rel=1e-5)
    from proxylab.proxy import KNOWN_PROXIES, score_configs

    scores = score_configs(KNOWN_PROXIES.get("synflow"), st, np.array([[2, 2, 2, 2], [4, 2, 2, 2], [2, 2, 2, 4]]))
    assert np.isfinite(scores).all() and len(set(scores.tolist())) == 3


def test_extras_get_their_own_cache_entry_and_the_main_one_is_untouched(tmp_path):
    net = make_tiny().eval()
    torch.manual_seed(2)
    x, y = torch.randn(16, 1, 6, 6), torch.randint(0, 3, (16,))
    first = compute_stats(net, x, y, batch_size=8, hessian=False, cache_dir=tmp_path)
    main = tmp_path / f"{first.key}.pt"
    before = main.read_bytes()
    assert len(list(tmp_path.glob("*.pt"))) == 1 and len(list((tmp_path / "extras").glob("*.pt"))) == 1
    assert "extras" not in torch.load(main, weights_only=True)  # the main entry's format did not change
    again = compute_stats(net, x, y, batch_size=8, hessian=False, cache_dir=tmp_path)
    assert again.meta["cache_hit"] and main.read_bytes() == before
    for l in range(len(first)):
        assert torch.equal(again.gram(l), first.gram(l))
    np.testing.assert_array_equal(again.synflow_log(), first.synflow_log())
    # an entry written before extras existed (its extras file deleted) gets them added, main file unchanged
    for p in (tmp_path / "extras").glob("*"):
        p.unlink()
    third = compute_stats(net, x, y, batch_size=8, hessian=False, cache_dir=tmp_path)
    assert third.meta["cache_hit"] and main.read_bytes() == before
    np.testing.assert_array_equal(third.synflow_log(), first.synflow_log())


def test_stats_without_extras_say_what_to_do():
    from proxylab.errors import ProxylabError
    from proxylab.stats import NetworkStats

    net = make_tiny().eval()
    st = compute_stats(net, torch.randn(8, 1, 6, 6), torch.randint(0, 3, (8,)), batch_size=8, hessian=False)
    d = st.to_dict()
    d.pop("extras")
    bare = NetworkStats.from_dict(d)
    with pytest.raises(ProxylabError, match="recompute"):
        bare.gram(0)
    assert NetworkStats.from_dict(st.to_dict()).gram(0).shape == (8, 8)  # round trip keeps them
    assert st.to("cpu").synflow_log().shape == (len(st),)


def test_only_networks_with_bounded_activations_changed_their_cache_key(tmp_path):
    """The ReLU6-as-ReLU fix changed virtual_grad only where a Hardtanh is: entries of other networks keep
    their keys (still valid), ReLU6 networks get new ones (their old entries hold all-zero gradients)."""
    x, y = torch.randn(8, 2, 5, 5), torch.randint(0, 3, (8,))
    bounded = ReLU6Net().eval()
    plain = ReLU6Net().eval()
    plain.act = nn.ReLU()
    a = compute_stats(bounded, x, y, batch_size=8, hessian=False, cache_dir=tmp_path)
    b = compute_stats(plain, x, y, batch_size=8, hessian=False, cache_dir=tmp_path)
    # same weights, and on the linearized network ReLU and ReLU6-as-ReLU are the same map
    for l in range(4):
        assert torch.equal(a.tensor(l, "virtual_grad"), b.tensor(l, "virtual_grad"))
    from proxylab.stats import cache as stats_cache

    state = stats_cache.state_dict_sha256(plain)
    assert state == stats_cache.state_dict_sha256(bounded) and a.key != b.key


def test_a_full_cache_hit_runs_no_forward_pass(tmp_path):
    net = make_tiny().eval()
    calls = []
    net.register_forward_pre_hook(lambda *_: calls.append(1))
    x, y = torch.randn(8, 1, 6, 6), torch.randint(0, 3, (8,))
    first = compute_stats(net, x, y, batch_size=8, hessian=False, cache_dir=tmp_path)
    assert calls  # computing ran the network
    calls.clear()
    again = compute_stats(net, x, y, batch_size=8, hessian=False, cache_dir=tmp_path)
    assert again.meta["cache_hit"] and not calls
    np.testing.assert_array_equal(again.synflow_log(), first.synflow_log())


def test_networks_without_bounded_activations_keep_their_pre_fix_cache_key():
    """Pinned: this key is what commit 3564348 (before the ReLU6 fix) computed for the same network and batch,
    so every cached entry of a ReLU network (the ResNet tables') stays valid."""
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 3)).eval()
    with torch.no_grad():
        for i, p in enumerate(net.parameters()):
            p.copy_(torch.linspace(-1, 1, p.numel()).reshape(p.shape) * (0.5 + 0.1 * i))
    x, y = torch.linspace(0, 1, 8 * 36).reshape(8, 1, 6, 6), torch.arange(8) % 3
    st = compute_stats(net, x, y, batch_size=8, hessian=False)
    assert st.key == "9243ad07eda39c8faf60f5f5aa9b67575a404f4bfa58e0d69f57430afc06a7c5"
