"""Weight and activation quantizers against plain numpy implementations."""
import warnings

import numpy as np
import pytest
import torch

from proxylab.errors import ProxylabError
from proxylab.quant import ActQuantizer, quantize_weight, weight_scale
from proxylab.quant.quantizers import MSE_CLIP_RATIOS


def np_quantize_weight(w, bits, per_channel, ratio=1.0):
    rows = w.reshape(w.shape[0], -1) if per_channel else w.reshape(1, -1)
    if bits == 1:
        s = np.abs(rows).mean(axis=1, keepdims=True)
        return np.where(rows >= 0, s, -s).reshape(w.shape), s
    qmax = 2 ** (bits - 1) - 1
    s = (np.abs(rows).max(axis=1, keepdims=True) * np.float32(ratio) / np.float32(qmax)).astype(np.float32)
    safe = np.where(s > 0, s, np.float32(1))
    q = np.clip(np.round(rows / safe), -qmax, qmax) * s
    return q.reshape(w.shape).astype(np.float32), s


@pytest.fixture
def weight():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(8, 4, 3, 3, generator=g) * torch.linspace(0.01, 2.0, 8).view(8, 1, 1, 1)
    w[3, 0, 0, 0] = 9.0  # an outlier channel: per-channel and per-tensor scales must differ
    return w


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8, 16])
@pytest.mark.parametrize("per_channel", [True, False])
def test_max_clip_matches_numpy(weight, bits, per_channel):
    q = quantize_weight(weight, bits, per_channel=per_channel)
    ref, s = np_quantize_weight(weight.numpy(), bits, per_channel)
    assert q.shape == weight.shape and q.dtype == weight.dtype
    np.testing.assert_allclose(q.numpy(), ref, rtol=1e-6, atol=1e-7)
    scale = weight_scale(weight, bits, per_channel=per_channel).numpy()
    np.testing.assert_allclose(scale, s, rtol=1e-6)
    rows = q.reshape(len(scale), -1).numpy() if per_channel else q.reshape(1, -1).numpy()
    if bits > 1:
        qmax = 2 ** (bits - 1) - 1
        ints = rows / scale
        np.testing.assert_allclose(ints, np.round(ints), atol=1e-3)  # values on the grid
        assert np.abs(np.round(ints)).max() <= qmax
        err = np.abs(rows - (weight.reshape(rows.shape).numpy()))
        assert (err <= scale / 2 * (1 + 1e-5) + 1e-7).all()  # max clip never clips: error <= half a step
    else:
        assert set(np.unique(np.abs(rows / scale)).round(5)) == {1.0}


def test_per_channel_beats_per_tensor_on_outlier(weight):
    err_c = (quantize_weight(weight, 4) - weight).pow(2).sum()
    err_t = (quantize_weight(weight, 4, per_channel=False) - weight).pow(2).sum()
    assert err_c < err_t / 2


def test_more_bits_less_error(weight):
    errs = [(quantize_weight(weight, b) - weight).pow(2).sum().item() for b in (2, 3, 4, 6, 8)]
    assert all(a > b for a, b in zip(errs, errs[1:]))


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_mse_clip_is_the_best_ratio_per_channel(weight, bits):
    q = quantize_weight(weight, bits, clip="mse")
    w = weight.numpy()
    per_ratio = []
    for r in MSE_CLIP_RATIOS:
        ref, _ = np_quantize_weight(w, bits, True, ratio=r)
        per_ratio.append(((ref - w) ** 2).reshape(len(w), -1).sum(axis=1))
    best = np.min(np.stack(per_ratio), axis=0)
    got = ((q.numpy() - w) ** 2).reshape(len(w), -1).sum(axis=1)
    np.testing.assert_allclose(got, best, rtol=1e-4, atol=1e-9)
    max_err = ((quantize_weight(weight, bits) - weight) ** 2).sum().item()
    assert got.sum() < max_err  # the outlier channel alone guarantees clipping pays at low bits


@pytest.mark.parametrize("clip", ["max", "mse"])
@pytest.mark.parametrize("bits", [1, 2, 4])
def test_all_zero_channel_stays_zero(weight, clip, bits):
    w = weight.clone()
    w[2] = 0
    q = quantize_weight(w, bits, clip=clip)
    assert torch.isfinite(q).all()
    assert (q[2] == 0).all()
    assert torch.isfinite(quantize_weight(torch.zeros(3, 5), bits, clip=clip)).all()


def test_linear_weight_and_input_untouched():
    w = torch.randn(5, 7)
    before = w.clone()
    q = quantize_weight(w, 3)
    assert torch.equal(w, before) and not torch.equal(q, w)


@pytest.mark.parametrize("bad", [0, 17, -2, 2.5, "4", None, True])
def test_bad_bits(bad):
    with pytest.raises(ProxylabError):
        quantize_weight(torch.randn(4, 4), bad)


def test_unknown_clip():
    with pytest.raises(ProxylabError, match="clip"):
        quantize_weight(torch.randn(4, 4), 4, clip="percentile")


def np_act_quant(x, bits, lo, hi):
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    qmax = 2**bits - 1
    s = (hi - lo) / qmax
    zp = int(np.clip(np.round(-lo / s), 0, qmax))
    return (np.clip(np.round(x / np.float32(s)) + zp, 0, qmax) - zp) * s, s, zp


@pytest.mark.parametrize("bits", [2, 4, 8, 10])
@pytest.mark.parametrize("signed", [True, False])
def test_act_quantizer_matches_numpy(bits, signed):
    g = torch.Generator().manual_seed(bits)
    calib = torch.randn(64, 3, 5, 5, generator=g) * 2 + 0.3
    x = torch.randn(32, 3, 5, 5, generator=g) * 2.5  # wider than calibration: clipping is exercised
    if not signed:
        calib, x = calib.relu(), x.relu()
    q = ActQuantizer(bits)
    q.observe(calib[:32])
    q.observe(calib[32:])
    assert q.lo == pytest.approx(calib.min().item()) and q.hi == pytest.approx(calib.max().item())
    ref, s, zp = np_act_quant(x.numpy(), bits, calib.min().item(), calib.max().item())
    assert q.scale == pytest.approx(s) and q.zero_point == zp
    if not signed:
        assert zp == 0  # non-negative range: plain unsigned grid over [0, max]
    out = q(x)
    mismatch = np.abs(out.numpy() - ref) > 1e-5 * max(1.0, abs(ref).max())
    # x / s (numpy) and x * (1 / s) (torch kernels) may round an exact tie differently: one step at most
    assert mismatch.mean() < 1e-3
    assert np.abs(out.numpy() - ref).max() <= s * 1.001
    assert torch.equal(out, q.reference(x))  # the fast kernel is the fused fake-quant op, exactly
    ints = out.numpy() / s + zp
    np.testing.assert_allclose(ints, np.round(ints), atol=1e-2)
    assert ints.min() >= -1e-3 and ints.max() <= 2**bits - 1 + 1e-3


def test_act_quantizer_channels_last_and_bad_bits():
    x = torch.randn(4, 8, 6, 6).contiguous(memory_format=torch.channels_last)
    q = ActQuantizer(8)
    q.observe(x)
    assert torch.equal(q(x), q.reference(x.contiguous()))
    with pytest.raises(ProxylabError):
        ActQuantizer(0)


@pytest.mark.parametrize("bits", [2, 4, 8, 12])
@pytest.mark.parametrize("lo, hi", [(0.0, 3.7), (-1.3, 2.9), (-5.0, -0.5)])
def test_act_quantizer_is_bit_identical_to_torch_kernels(bits, lo, hi):
    """The four-pass kernel equals torch's fused fake-quant (and, at 8 bits, quantize + dequantize), including
    exact ties k + 0.5 on the grid, their float neighbours and values far outside the range."""
    q = ActQuantizer(bits).set_range(lo, hi)
    s = np.float32(q.scale)
    k = np.arange(-q.zero_point - 3, 2**bits - q.zero_point + 3, dtype=np.float32)
    ties = (k + np.float32(0.5)) * s
    edges = np.concatenate([ties, np.nextafter(ties, np.float32(np.inf)), np.nextafter(ties, np.float32(-np.inf)),
                            k * s, np.float32([1e30, -1e30, 0.0, -0.0])])
    g = torch.Generator().manual_seed(bits)
    x = torch.cat([torch.from_numpy(edges), (torch.rand(20000, generator=g) * 1.4 - 0.2) * (hi - lo) + lo])
    x = x[: len(x) // 8 * 8].reshape(-1, 2, 2, 2)
    got = q(x)
    assert torch.equal(got, q.reference(x))
    if bits == 8:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            qdq = torch.quantize_per_tensor(x, q.scale, q.zero_point, torch.quint8).dequantize()
        # the quint8 kernel's int32 wraps around beyond 2**31 grid steps (1e30 -> zero point instead of the top)
        sane = x.abs() < 1e6
        assert torch.equal(got[sane], qdq[sane])
    buf = torch.empty_like(x)
    assert q(x, out=buf) is buf and torch.equal(buf, got)


def test_gradients_flow_through_the_activation_quantizer():
    """With autograd recording, the quantizer takes the fused op (straight-through gradient) instead of
    writing into a buffer, which torch refuses for tensors that need gradients."""
    import torch.nn as nn

    from proxylab.quant import QuantizedNetwork

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    x = torch.randn(8, 1, 8, 8)
    qn = QuantizedNetwork(net, x, bit_choices=(4,), act_bits=8)
    qn.apply([4, 4])
    with torch.no_grad():
        expect = qn.model(x[:2])
    xi = x[:2].clone().requires_grad_()
    out = qn.model(xi)
    out.sum().backward()
    assert torch.equal(out.detach(), expect)  # same numbers on the autograd path
    assert xi.grad is not None and xi.grad.abs().sum() > 0
