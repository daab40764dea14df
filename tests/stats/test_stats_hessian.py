"""Hutchinson traces and power-iteration eigenvalues against exact Hessians (torch.autograd.functional.hessian,
torch.linalg.eigvalsh) of a tiny network, and against explicit matrices."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from proxylab.stats import compute_stats
from proxylab.stats.hessian import hutchinson_trace, power_iteration

LAYERS = ["stem", "conv", "head"]


def exact_hessian(net, x, y):
    """Full Hessian of the mean cross-entropy over the concatenated layer weights, and each layer's slice."""
    net.eval()
    params = {k: v.detach() for k, v in net.named_parameters()}
    buffers = dict(net.named_buffers())
    shapes = [params[f"{n}.weight"].shape for n in LAYERS]
    sizes = [math.prod(s) for s in shapes]
    flat0 = torch.cat([params[f"{n}.weight"].reshape(-1) for n in LAYERS]).double()

    def loss(flat):
        p = dict(params)
        for n, s, chunk in zip(LAYERS, shapes, flat.split(sizes)):
            p[f"{n}.weight"] = chunk.reshape(s).float()
        return F.cross_entropy(functional_call(net, (p, buffers), (x,)), y).double()

    h = torch.autograd.functional.hessian(loss, flat0)
    h = (h + h.T) / 2
    bounds = [0]
    for s in sizes:
        bounds.append(bounds[-1] + s)
    return h, [slice(bounds[i], bounds[i + 1]) for i in range(len(LAYERS))]


def rademacher_sd(h, blocks, l, joint: bool) -> float:
    """Exact std of one probe's value v_l.(Hv)_l: 2(||H_ll||_F^2 - sum diag^2), plus ||H_lk||_F^2 for every
    other block k when the probe covers all layers at once."""
    b = h[blocks[l], blocks[l]]
    var = 2 * (float((b ** 2).sum()) - float((torch.diagonal(b) ** 2).sum()))
    if joint:
        var += sum(float((h[blocks[l], blocks[k]] ** 2).sum()) for k in range(len(blocks)) if k != l)
    return math.sqrt(var)


@pytest.mark.parametrize("mode", ["joint", "block"])
def test_hutchinson_trace_converges_to_exact_block_trace(tiny, data, mode):
    x, y = data
    h, blocks = exact_hessian(tiny, x, y)
    errors = {}
    for probes in (8, 256):
        st = compute_stats(tiny, x, y, batch_size=len(x), hessian_probes=probes, hessian_iters=2,
                           hessian_trace_mode=mode, seed=0)
        for l in range(len(LAYERS)):
            exact = float(torch.trace(h[blocks[l], blocks[l]]))
            sd = rademacher_sd(h, blocks, l, joint=mode == "joint")
            err = abs(st.scalar(l, "hessian_trace") - exact)
            assert err <= 4 * sd / math.sqrt(probes) + 1e-5 * abs(exact), (mode, probes, LAYERS[l], err, sd)
            errors[(probes, l)] = err
            # the reported standard error estimates the same spread
            reported = st.meta["hessian_trace_stderr"][l]
            assert 0.3 * sd / math.sqrt(probes) <= reported <= 3 * sd / math.sqrt(probes) + 1e-9
    assert sum(errors[(256, l)] for l in range(3)) < sum(errors[(8, l)] for l in range(3))


def test_power_iteration_finds_dominant_eigenvalue_of_each_block(tiny, data):
    x, y = data
    h, blocks = exact_hessian(tiny, x, y)
    st = compute_stats(tiny, x, y, batch_size=len(x), hessian_probes=1, hessian_iters=3000, hessian_tol=1e-9)
    for l in range(len(LAYERS)):
        eigs = torch.linalg.eigvalsh(h[blocks[l], blocks[l]])
        dominant = float(eigs[eigs.abs().argmax()])
        assert st.scalar(l, "hessian_eig") == pytest.approx(dominant, rel=2e-3, abs=1e-6), LAYERS[l]


def test_hutchinson_on_explicit_matrix_is_unbiased_with_right_stderr():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(30, 30, generator=g)
    a = (a + a.T) / 2
    exact = float(torch.trace(a))
    sd = math.sqrt(2 * (float((a ** 2).sum()) - float((torch.diagonal(a) ** 2).sum())))
    est, err = hutchinson_trace(lambda v: a @ v, (30,), 400, torch.Generator().manual_seed(1))
    assert abs(est - exact) <= 4 * sd / 20
    assert err == pytest.approx(sd / 20, rel=0.25)
    # a diagonal matrix has zero Hutchinson variance: exact with one probe
    d = torch.diag(torch.arange(1.0, 6.0))
    assert hutchinson_trace(lambda v: d @ v, (5,), 1, torch.Generator().manual_seed(2)) == (15.0, 0.0)


def test_power_iteration_sign_tolerance_and_zero_block():
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=torch.Generator().manual_seed(3)))
    spectrum = torch.tensor([-9.0, 4.0, 3.0, 1.0, 0.5, 0.2, -0.1, 0.05])
    a = q @ torch.diag(spectrum) @ q.T
    eig, used = power_iteration(lambda v: a @ v, (8,), 500, 1e-7, torch.Generator().manual_seed(4))
    assert eig == pytest.approx(-9.0, rel=1e-5)
    assert used < 500  # stopped on the tolerance, not the cap
    eig1, used1 = power_iteration(lambda v: a @ v, (8,), 1, 1e-7, torch.Generator().manual_seed(4))
    assert used1 == 1 and abs(eig1) <= 9.0
    assert power_iteration(lambda v: torch.zeros_like(v), (3, 2), 10, 1e-3, torch.Generator())[0] == 0.0


def test_hessian_false_skips_scalars_with_clear_message(tiny, data):
    from proxylab.errors import ProxylabError

    x, y = data
    st = compute_stats(tiny, x, y, hessian=False)
    assert not st.has_hessian
    with pytest.raises(ProxylabError, match="hessian=True"):
        st.scalar(0, "hessian_trace")


def _graph(net, x, y):
    net.eval()
    weights = [getattr(net, n).weight for n in LAYERS]
    loss = F.cross_entropy(net(x), y)
    return weights, torch.autograd.grad(loss, weights, create_graph=True)


def test_block_products_are_exact_hessian_block_times_vector(tiny, data):
    from proxylab.stats.hessian import block_hvp

    x, y = data
    h, blocks = exact_hessian(tiny, x, y)
    weights, grads = _graph(tiny, x, y)
    g = torch.Generator().manual_seed(7)
    for l, (w, gr) in enumerate(zip(weights, grads)):
        v = torch.randn(w.shape, generator=g)
        got = block_hvp(gr, w)(v).reshape(-1).double()
        torch.testing.assert_close(got, h[blocks[l], blocks[l]] @ v.reshape(-1).double(), rtol=1e-4, atol=1e-6)


def test_joint_traces_are_the_quadratic_forms_of_their_probes(tiny, data):
    from proxylab.stats.collect import _joint_traces
    from proxylab.stats.hessian import rademacher

    x, y = data
    h, blocks = exact_hessian(tiny, x, y)
    weights, grads = _graph(tiny, x, y)
    means, errors = _joint_traces(list(grads), weights, 5, torch.Generator().manual_seed(11))
    replay = torch.Generator().manual_seed(11)  # same draws, same order: one vector per layer per probe
    values = []
    for _ in range(5):
        v = torch.cat([rademacher(w.shape, replay).reshape(-1) for w in weights]).double()
        hv = h @ v
        values.append([float(v[b] @ hv[b]) for b in blocks])
    values = torch.tensor(values)
    torch.testing.assert_close(torch.tensor(means), values.mean(0), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(torch.tensor(errors), values.std(0) / math.sqrt(5), rtol=1e-3, atol=1e-6)


def test_hessian_batch_is_the_head_of_the_calibration_batch(tiny, data):
    x, y = data
    kw = dict(hessian_probes=3, hessian_iters=6, seed=2)
    head = compute_stats(tiny, x, y, batch_size=16, hessian_batch=5, **kw)
    alone = compute_stats(tiny, x, y, batch_size=5, **kw)  # same seed: the same first five images
    assert head.meta["hessian_batch"] == 5 and head.key != alone.key
    assert head.scalars("hessian_trace").tolist() == alone.scalars("hessian_trace").tolist()
    assert head.scalars("hessian_eig").tolist() == alone.scalars("hessian_eig").tolist()
    whole = compute_stats(tiny, x, y, batch_size=16, **kw)
    assert whole.scalars("hessian_eig").tolist() != head.scalars("hessian_eig").tolist()
