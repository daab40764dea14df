"""A small VGG with batch norm: plain 3x3 conv stacks, max pooling, global average pooling and one linear head.

No residual connections and no depthwise convs: a third kind of network for proxies to be tested on.
"""
from __future__ import annotations

from typing import Sequence, Union

import torch
import torch.nn as nn

from proxylab.errors import require
from proxylab.nets.zoo import NETS

_CONFIG = (32, 32, "M", 64, 64, "M", 128, 128, "M")


class SmallVGG(nn.Module):
    def __init__(self, config: Sequence[Union[int, str]], num_classes: int, in_channels: int):
        super().__init__()
        layers, in_ch = [], in_channels
        for item in config:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(in_ch, int(item), 3, padding=1, bias=False), nn.BatchNorm2d(int(item)), nn.ReLU(inplace=True)]
                in_ch = int(item)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


@NETS.register("vgg_small", help="small VGG with BN: 6 3x3 convs (32-32-M-64-64-M-128-128-M), global pool, linear head; `width` scales channels")
def vgg_small(*, num_classes: int, in_channels: int = 3, image_size: int = 32, width: float = 1.0) -> nn.Module:
    require(width > 0, f"width must be > 0, got {width}")
    pools = sum(1 for c in _CONFIG if c == "M")
    require(image_size >= 2**pools, f"vgg_small halves the image {pools} times: image_size must be >= {2**pools}, got {image_size}")
    config = [c if c == "M" else max(4, int(round(c * width))) for c in _CONFIG]
    return SmallVGG(config, num_classes, in_channels)
