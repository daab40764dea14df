"""QuantizedNetwork against an oracle built from scratch: deepcopy + quantize every layer + fake-quant hooks."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from proxylab.errors import ProxylabError
from proxylab.quant import PROTOCOLS, QuantizedNetwork, quantizable_layers, quantize_weight


class TinyResNet(nn.Module):
    def __init__(self, classes=5):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(8)
        self.c1 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8)
        self.short = nn.Conv2d(8, 8, 1, stride=2)
        self.fc = nn.Linear(8, classes)

    def forward(self, x):
        x = F.relu(self.bn0(self.stem(x)))
        x = x + F.relu(self.bn1(self.c1(x)))
        x = self.dw(x) + self.short(x)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = TinyResNet()
    with torch.no_grad():  # non-trivial BN statistics, as after training
        for bn in (m.bn0, m.bn1):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    return m.eval()


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(80, 3, 8, 8, generator=g), torch.randn(40, 3, 8, 8, generator=g)


FOLDS = [("stem", "bn0"), ("c1", "bn1")]


def oracle(model, calib, bits, act_bits=8, per_channel=True, clip="max", fold=True):
    """A fresh copy, BN folded by hand, quantized layer by layer; activation ranges from numpy min/max."""
    ref = copy.deepcopy(model).eval()
    if fold:
        with torch.no_grad():
            for conv_name, bn_name in FOLDS:
                conv, bn = getattr(ref, conv_name), getattr(ref, bn_name)
                scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                conv.weight.data = conv.weight * scale.view(-1, 1, 1, 1)
                conv.bias = nn.Parameter((torch.zeros_like(bn.running_mean) - bn.running_mean) * scale + bn.bias)
                setattr(ref, bn_name, nn.Identity())
    layers = quantizable_layers(ref, calib[:1])
    ranges = {}

    def record(name):
        def hook(m, inputs):
            a = inputs[0].numpy()
            lo, hi = ranges.get(name, (np.inf, -np.inf))
            ranges[name] = (min(lo, a.min()), max(hi, a.max()))

        return hook

    hs = [m.register_forward_pre_hook(record(n)) for n, m in layers]
    with torch.no_grad():
        ref(calib)
    for h in hs:
        h.remove()
    for (name, m), b in zip(layers, bits):
        m.weight.data = quantize_weight(m.weight.data, b, per_channel=per_channel, clip=clip)
        if act_bits is not None:
            lo, hi = min(float(ranges[name][0]), 0.0), max(float(ranges[name][1]), 0.0)
            scale = (hi - lo) / (2**act_bits - 1)
            zp = int(min(max(round(-lo / scale), 0), 2**act_bits - 1))
            m.register_forward_pre_hook(
                lambda mod, inp, s=scale, z=zp: (torch.fake_quantize_per_tensor_affine(inp[0], s, z, 0, 2**act_bits - 1),)
            )
    return ref


def run(model, x):
    with torch.no_grad():
        return model(x)


CONFIGS = [(4, 4, 4, 4, 4), (2, 3, 4, 2, 3), (3, 2, 2, 4, 2)]


@pytest.mark.parametrize("bits", CONFIGS)
def test_apply_equals_fresh_quantized_copy(model, data, bits):
    calib, x = data
    qn = QuantizedNetwork(model, calib, channels_last=False)
    assert qn.layer_names == ["stem", "c1", "dw", "short", "fc"]
    qn.apply(bits)
    assert torch.equal(qn.predict(x), run(oracle(model, calib, bits), x))


def test_apply_then_apply_again_leaves_no_residue(model, data):
    calib, x = data
    qn = QuantizedNetwork(model, calib, channels_last=False)
    for first in CONFIGS:
        qn.apply(first)
        qn.apply((2, 2, 3, 3, 4))
        assert torch.equal(qn.predict(x), run(oracle(model, calib, (2, 2, 3, 3, 4)), x))
    qn.restore_float()
    torch.testing.assert_close(qn.predict(x), run(model, x), atol=1e-5, rtol=1e-5)  # folded BN: rounding only
    assert qn.current_bits is None


def test_without_folding(model, data):
    calib, x = data
    qn = QuantizedNetwork(model, calib, channels_last=False, fold_bn=False)
    assert qn.folded_bn == []
    qn.apply(CONFIGS[1])
    assert torch.equal(qn.predict(x), run(oracle(model, calib, CONFIGS[1], fold=False), x))
    qn.restore_float()
    assert torch.equal(qn.predict(x), run(model, x))
    folded = QuantizedNetwork(model, calib, channels_last=False)
    assert folded.folded_bn == ["bn0", "bn1"]
    folded.apply(CONFIGS[1])
    qn.apply(CONFIGS[1])
    # per-channel quantization commutes with the per-channel BN scale: same network up to rounding
    torch.testing.assert_close(folded.predict(x), qn.predict(x), atol=1e-4, rtol=1e-4)


class RawOutputReused(nn.Module):
    """The conv's raw output is used beside its BN: folding would change the function."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        y = self.conv(x)
        return self.fc((self.bn(y) + y).mean(dim=(2, 3)))


class BNAct(nn.BatchNorm2d):
    """Like timm's BatchNormAct2d: the activation lives inside the BN module."""

    def forward(self, x):
        return torch.relu(super().forward(x))


def test_fold_is_undone_when_it_would_change_the_function(data):
    calib, x = data
    torch.manual_seed(0)
    model = RawOutputReused().eval()
    with torch.no_grad():
        model.bn.running_var.fill_(3.0)
        model.bn.running_mean.fill_(0.5)
    qn = QuantizedNetwork(model, calib, channels_last=False)
    assert qn.folded_bn == []
    assert torch.equal(qn.predict(x), run(model, x))


def test_fold_keeps_a_bn_subclass_that_does_more(data):
    calib, x = data
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), BNAct(4), nn.Flatten(), nn.LazyLinear(2))
    run(model, x)
    model.eval()
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
    qn = QuantizedNetwork(model, calib, channels_last=False)
    assert qn.folded_bn == ["1"] and isinstance(qn.model[1], BNAct)
    torch.testing.assert_close(qn.predict(x), run(model, x), atol=1e-5, rtol=1e-5)


def test_original_model_untouched(model, data):
    calib, x = data
    before = {k: v.clone() for k, v in model.state_dict().items()}
    qn = QuantizedNetwork(model, calib, protocol="bias_correction")
    qn.apply((2, 2, 2, 2, 2))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before) and set(before) == set(after)
    assert model.stem.bias is None


def test_channels_last_same_function(model, data):
    calib, x = data
    qn = QuantizedNetwork(model, calib, channels_last=True)
    qn.apply(CONFIGS[1])
    ref = run(oracle(model, calib, CONFIGS[1]), x)
    torch.testing.assert_close(qn.predict(x), ref, atol=1e-4, rtol=1e-4)


def test_float_activations_and_per_tensor(model, data):
    calib, x = data
    qn = QuantizedNetwork(model, calib, act_bits=None, per_channel=False, channels_last=False)
    qn.apply(CONFIGS[2])
    assert torch.equal(qn.predict(x), run(oracle(model, calib, CONFIGS[2], act_bits=None, per_channel=False), x))
    assert qn.bitops(CONFIGS[2]) == pytest.approx(float((qn.macs * np.array(CONFIGS[2]) * 32).sum()))


def test_mse_protocol_and_lazy_bits(model, data):
    calib, x = data
    qn = QuantizedNetwork(model, calib, protocol="mse", bit_choices=(2, 4), channels_last=False, fold_bn=False)
    bits = (6, 2, 5, 4, 3)  # 6, 5, 3 were not precomputed: quantized on first use
    qn.apply(bits)
    assert torch.equal(qn.predict(x), run(oracle(model, calib, bits, clip="mse", fold=False), x))
    assert torch.equal(qn.layers[0].weight, quantize_weight(model.stem.weight, 6, clip="mse"))


def test_all_8_bit_close_to_float(model, data):
    calib, x = data
    qn = QuantizedNetwork(model, calib)
    qn.apply([8] * 5)
    q8 = qn.predict(x)
    qn.restore_float()
    fp = qn.predict(x)
    assert (q8 - fp).abs().max() < 0.05 * fp.abs().max()


def _layer_io(model, calib):
    """Each quantizable layer's float input on the calibration images."""
    ins = {}
    layers = quantizable_layers(model, calib[:1])
    hs = [m.register_forward_pre_hook(lambda m, i, n=n: ins.__setitem__(n, i[0].clone())) for n, m in layers]
    run(model, calib)
    for h in hs:
        h.remove()
    return layers, ins


def _mean_out(module, x, w, b):
    if isinstance(module, nn.Linear):
        return F.linear(x, w, b).mean(0)
    return module._conv_forward(x, w, b).mean(dim=(0, 2, 3))


@pytest.mark.parametrize("protocol, corrected", [("bias_correction", True), ("mse", False)])
def test_bias_correction_restores_mean_output(model, data, protocol, corrected):
    calib, _ = data
    qn = QuantizedNetwork(model, calib, protocol=protocol, channels_last=False, fold_bn=False)
    qn.apply((2, 2, 2, 2, 2))
    layers, ins = _layer_io(model, calib)
    gaps = []
    for (name, m), qm in zip(layers, qn.layers):
        b = m.bias if m.bias is not None else torch.zeros(m.weight.shape[0])
        qb = qm.bias if qm.bias is not None else torch.zeros(m.weight.shape[0])
        with torch.no_grad():
            gaps.append((_mean_out(m, ins[name], qm.weight, qb) - _mean_out(m, ins[name], m.weight, b)).abs().max())
    if corrected:
        assert max(gaps) < 1e-4
    else:
        assert max(gaps) > 1e-3  # without correction 2-bit weights do shift the mean output


def test_size_and_bitops(model, data):
    calib, _ = data
    qn = QuantizedNetwork(model, calib)
    # stem 8*3*9 + BN 16; c1 8*8*9 + BN 16; dw 8*9 + 8; short 64 + 8; fc 40 + 5
    assert qn.params.tolist() == [232, 592, 80, 72, 45]
    # stem/c1 at 8x8 output, dw/short at 4x4 output
    assert qn.macs.tolist() == [64 * 8 * 27, 64 * 8 * 72, 16 * 8 * 9, 16 * 8 * 8, 40]
    bits = [2, 3, 4, 2, 8]
    assert qn.size_mb(bits) == pytest.approx(sum(b * p for b, p in zip(bits, qn.params)) / 8 / 2**20)
    assert qn.bitops(bits) == pytest.approx(float(sum(b * m * 8 for b, m in zip(bits, qn.macs))))
    assert qn.size_mb(np.array([bits, [4] * 5])).shape == (2,)


def test_bad_configs(model, data):
    calib, _ = data
    qn = QuantizedNetwork(model, calib)
    with pytest.raises(ProxylabError, match=r"expected 5 bit-widths.*stem, c1, dw, short, fc.*got 4"):
        qn.apply([4, 4, 4, 4])
    with pytest.raises(ProxylabError, match="layer dw must be in 1..16, got 17"):
        qn.apply([4, 4, 17, 4, 4])
    with pytest.raises(ProxylabError, match="1..16"):
        qn.apply([4, 0, 4, 4, 4])
    with pytest.raises(ProxylabError, match="integer"):
        qn.apply([4, 4.5, 4, 4, 4])
    with pytest.raises(ProxylabError):
        qn.apply("44444")
    with pytest.raises(ProxylabError, match="unknown quantization protocol 'rnt'.*rtn"):
        QuantizedNetwork(model, calib, protocol="rnt")
    with pytest.raises(ProxylabError):
        QuantizedNetwork(model, calib, bit_choices=(2, 32))
    with pytest.raises(ProxylabError, match="calib_x"):
        QuantizedNetwork(model, calib[:0])
    with pytest.raises(ProxylabError, match="labels"):
        qn.evaluate(calib[:4], torch.zeros(3, dtype=torch.long))


def test_protocol_registry():
    assert {"rtn", "mse", "bias_correction"} <= set(PROTOCOLS.names())
    assert PROTOCOLS.get("rtn").clip == "max" and not PROTOCOLS.get("rtn").bias_correction


class InPlaceBetweenReaders(nn.Module):
    """x is read by `a`, changed in place, then read by `b`: a quantized copy shared by a and b would be stale."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        x = x * 1.0
        y = self.a(x)
        x.copy_(x.flip(-1))  # same value range, so both readers get identical quantizers
        return (y + self.b(x)).mean(dim=(2, 3))


def test_shared_input_quantization_only_when_exact(model, data):
    calib, x = data
    assert QuantizedNetwork(model, calib)._share  # dw and short read the same tensor: quantized once
    torch.manual_seed(0)
    tricky = InPlaceBetweenReaders().eval()
    qn = QuantizedNetwork(tricky, calib, channels_last=False, fold_bn=False)
    assert not qn._share
    qn.apply((4, 4))
    ref = oracle(tricky, calib, (4, 4), fold=False)
    assert torch.equal(qn.predict(x), run(ref, x))
