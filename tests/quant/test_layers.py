"""Layer order, parameter counts, MACs, size and BitOps against hand-computed values."""
import numpy as np
import pytest
import torch
from torch import nn

from proxylab.errors import ProxylabError
from proxylab.quant import bitops, layer_info, quantizable_layers, size_mb


class OutOfOrder(nn.Module):
    """Registers head, branch b, branch a, stem; runs stem, a, b, head; `unused` never runs."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(8 * 4 * 4, 5)
        self.b = nn.Conv2d(8, 8, 1, bias=False)
        self.bn_b = nn.BatchNorm2d(8)
        self.a = nn.Conv2d(8, 8, 3, padding=1, groups=4)
        self.unused = nn.Conv2d(8, 8, 1)
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
        self.bn_stem = nn.BatchNorm2d(8)

    def forward(self, x):
        x = torch.relu(self.bn_stem(self.stem(x)))
        x = self.a(x) + torch.relu(self.bn_b(self.b(x)))
        return self.head(x.flatten(1))


def test_execution_order_not_registration_order():
    model = OutOfOrder()
    names = [n for n, _ in quantizable_layers(model, torch.randn(2, 3, 8, 8))]
    assert names == ["stem", "a", "b", "head"]
    assert [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))][0] == "head"


def test_params_and_macs_by_hand():
    model = OutOfOrder().train()
    info = {i.name: i for i in layer_info(model, torch.randn(3, 3, 8, 8))}
    assert model.training  # mode restored after the (eval-mode) trace
    # stem: 8x8 -> 4x4, 8 out, fan-in 3*3*3; no bias; BN folded: + 8 gamma + 8 beta
    assert info["stem"].macs == 4 * 4 * 8 * 3 * 9
    assert info["stem"].params == 8 * 3 * 9 + 16 and info["stem"].folded_bn == "bn_stem"
    # a: grouped conv, fan-in (8/4)*3*3, bias 8, no BN
    assert info["a"].macs == 4 * 4 * 8 * 2 * 9
    assert info["a"].params == 8 * 2 * 9 + 8 and info["a"].folded_bn is None
    assert info["b"].macs == 4 * 4 * 8 * 8 and info["b"].params == 64 + 16
    assert info["head"].macs == 128 * 5 and info["head"].params == 128 * 5 + 5
    assert info["head"].weight_shape == (5, 128) and info["head"].kind == "linear"
    assert info["a"].weight_params == 8 * 2 * 9


def test_linear_per_token_macs_and_reused_layer():
    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(6, 4)

        def forward(self, x):  # [N, 10 tokens, 6], proj applied twice
            return self.proj(torch.cat([x, x], dim=1)[..., :6]).sum() + self.proj(x).sum()

    (info,) = layer_info(Tokens(), torch.randn(2, 10, 6))
    assert info.macs == 20 * 24 + 10 * 24


def test_no_quantizable_layer():
    with pytest.raises(ProxylabError, match="nothing to quantize"):
        quantizable_layers(nn.Sequential(nn.ReLU()), torch.randn(1, 3))


# MQ-Bench-101 / EMQ per-position parameter counts of ResNet-18 (downsample convs folded into 6, 10, 14)
EMQ_RESNET18 = [9536, 36992, 36992, 36992, 36992, 73984, 156160, 147712, 147712, 295424, 623616, 590336,
                590336, 1180672, 2492416, 2360320, 2360320, 513000]


def test_resnet18_counts_match_mq_bench():
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet18(num_classes=1000)
    info = layer_info(model, torch.randn(1, 3, 224, 224))
    assert len(info) == 21
    positions, sizes = [], []
    for i in info:
        if "downsample" in i.name:
            sizes[-1] += i.params  # execution order: the block's conv2 runs just before its downsample
        else:
            positions.append(i.name)
            sizes.append(i.params)
    assert sizes == EMQ_RESNET18
    assert positions[0] == "conv1" and positions[-1] == "fc"
    macs = {i.name: i.macs for i in info}
    assert macs["conv1"] == 112 * 112 * 64 * 3 * 49
    assert macs["layer4.1.conv2"] == 7 * 7 * 512 * 512 * 9
    assert macs["fc"] == 512 * 1000
    assert sum(macs.values()) == 1_813_561_344 + 512_000  # 1.81 G multiply-adds in the convs, plus fc
    p = np.array(EMQ_RESNET18)
    assert size_mb(p, [2] * 18) == pytest.approx(2.79, abs=0.005)
    assert size_mb(p, [4] * 18) == pytest.approx(5.57, abs=0.005)


def test_size_and_bitops_vectorised():
    rng = np.random.default_rng(0)
    params, macs = rng.integers(1, 10**6, 7), rng.integers(1, 10**8, 7)
    bits = rng.integers(1, 9, (5, 7))
    sizes, ops = size_mb(params, bits), bitops(macs, bits, 8)
    assert sizes.shape == ops.shape == (5,)
    for row, s, o in zip(bits, sizes, ops):
        assert s == pytest.approx(sum(int(b) * int(p) for b, p in zip(row, params)) / 8 / 2**20)
        assert o == pytest.approx(sum(int(m) * int(b) * 8 for b, m in zip(row, macs)), rel=1e-12)
        assert size_mb(params, row) == pytest.approx(s)
    per_layer_a = rng.integers(4, 9, 7)
    assert bitops(macs, bits[0], per_layer_a) == pytest.approx(float((macs * bits[0] * per_layer_a).sum()))
    with pytest.raises(ProxylabError, match="expected 7"):
        size_mb(params, [4] * 6)
    with pytest.raises(ProxylabError, match="expected 7"):
        bitops(macs, np.full((2, 8), 4), 8)


def test_data_the_network_cannot_take_is_one_clear_error():
    model = OutOfOrder()  # takes 3-channel images
    for fn in (layer_info, quantizable_layers):
        with pytest.raises(ProxylabError, match=r"OutOfOrder failed on the data's images of shape \[1, 8, 8\] "
                                                r"\(Given groups=1.*channels and size it was trained on"):
            fn(model, torch.randn(2, 1, 8, 8))
