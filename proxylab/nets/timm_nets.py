"""ResNet-18 and MobileNetV2 built from timm's own classes (never pretrained: weights are trained here).

Both get a ``width`` multiplier, so a reference network's weights stay a few MB, and a ``stem`` choice:
ImageNet stems divide a 28-32 px input by 4 (ResNet) or 2 (MobileNetV2) before the first block, leaving 1x1
feature maps in the last stages; the small stems keep the early resolution, which is what small images need.
"""
from __future__ import annotations

import torch.nn as nn

from proxylab.errors import require
from proxylab.nets.zoo import NETS

_RESNET_STEMS = ("auto", "small", "small_s2", "imagenet")
_MOBILENET_STEMS = ("auto", "small", "imagenet")


def _scaled(channels, width: float, divisor: int = 8):
    """Scale channel counts, rounded to a multiple of `divisor` (SIMD-friendly) and never below it."""
    return tuple(max(divisor, int(round(c * width / divisor)) * divisor) for c in channels)


def _resolve_stem(stem: str, image_size: int, allowed) -> str:
    require(stem in allowed, f"stem must be one of {', '.join(allowed)}; got '{stem}'")
    if stem == "auto":
        return "small" if image_size <= 32 else "imagenet"
    return stem


@NETS.register("resnet18", help="timm ResNet-18 (basic blocks 2-2-2-2); `width` scales channels (0.5 -> 32..256), `stem` small for <=32 px")
def resnet18(*, num_classes: int, in_channels: int = 3, image_size: int = 32, width: float = 0.5, stem: str = "auto") -> nn.Module:
    from timm.models import ResNet
    from timm.models.resnet import BasicBlock

    require(width > 0, f"width must be > 0, got {width}")
    stem = _resolve_stem(stem, image_size, _RESNET_STEMS)
    channels = _scaled((64, 128, 256, 512), width)
    # timm's single-conv stem is always 64 wide; its "deep" stem is 2*stem_width wide, which lets the stem follow
    # `width`. The deep stem's three convs are then swapped for the one conv each stem choice wants.
    model = ResNet(BasicBlock, (2, 2, 2, 2), num_classes=num_classes, in_chans=in_channels,
                   channels=channels, stem_type="deep", stem_width=channels[0] // 2,
                   zero_init_last=False)  # zero-init residual BNs slows the short schedules used here (see resnet_cifar)
    if stem == "imagenet":
        model.conv1 = nn.Conv2d(in_channels, channels[0], 7, 2, 3, bias=False)
    else:
        model.conv1 = nn.Conv2d(in_channels, channels[0], 3, 1, 1, bias=False)
        if stem == "small":
            model.maxpool = nn.Identity()
        # small_s2 keeps timm's 3x3/stride-2 max pool: 4x fewer MACs than "small", same 3x3 stem conv.
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model


_MOBILENETV2_ARCH = [  # MobileNetV2 (Sandler et al. 2018, table 2) in timm's block notation
    ["ds_r1_k3_s1_c16"],
    ["ir_r2_k3_s2_e6_c24"],
    ["ir_r3_k3_s2_e6_c32"],
    ["ir_r4_k3_s2_e6_c64"],
    ["ir_r3_k3_s1_e6_c96"],
    ["ir_r3_k3_s2_e6_c160"],
    ["ir_r1_k3_s1_e6_c320"],
]


@NETS.register("mobilenetv2", help="timm MobileNetV2 (inverted residuals, ReLU6); `width` multiplier (0.35 default), `stem` small = stride 1")
def mobilenetv2(*, num_classes: int, in_channels: int = 3, image_size: int = 32, width: float = 0.35,
                stem: str = "auto", head_features: int = 1280) -> nn.Module:
    from functools import partial

    from timm.models import EfficientNet
    from timm.models._efficientnet_builder import decode_arch_def, round_channels

    require(width > 0, f"width must be > 0, got {width}")
    require(head_features >= 8, f"head_features must be >= 8, got {head_features}")
    stem = _resolve_stem(stem, image_size, _MOBILENET_STEMS)
    round_fn = partial(round_channels, multiplier=width)
    model = EfficientNet(
        block_args=decode_arch_def(_MOBILENETV2_ARCH),
        num_classes=num_classes,
        # timm's rule: the 1x1 head never shrinks below 1280 channels (it only grows for width > 1)
        num_features=max(head_features, round_fn(head_features)),
        in_chans=in_channels,
        stem_size=32,
        round_chs_fn=round_fn,
        act_layer=nn.ReLU6,
        norm_layer=nn.BatchNorm2d,
    )
    if stem == "small":
        conv = model.conv_stem
        require(isinstance(conv, nn.Conv2d) and conv.padding == (1, 1), "unexpected timm MobileNetV2 stem; use stem='imagenet'")
        conv.stride = (1, 1)  # same weights and padding; only the output resolution changes
    return model
