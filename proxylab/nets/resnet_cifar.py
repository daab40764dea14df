"""ResNet-20 for small images (He et al. 2016, section 4.2): 3 stages of 3 basic blocks, 16/32/64 channels.

Shortcuts that change shape use a 1x1 conv + BN (projection, "option B") rather than zero padding, so every
weight sits in a Conv2d/Linear that the quantizer can see, like the downsample convs of MQ-Bench's ResNet-18.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from proxylab.errors import require
from proxylab.nets.zoo import NETS


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut, inplace=True)


class CifarResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int, in_channels: int, widths=(16, 32, 64)):
        super().__init__()
        require((depth - 2) % 6 == 0, f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, ...), got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages, in_ch = [], widths[0]
        for i, w in enumerate(widths):
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(in_ch, w, 2 if (i > 0 and j == 0) else 1))
                in_ch = w
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(in_ch, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # No zero-init of the last BN per block ("bag of tricks"): measured on mnist5k, 3 epochs, it left the
        # network at 37% test accuracy against 96% without it; short schedules cannot afford the slow start.

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)), inplace=True)
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


@NETS.register("resnet20", help="CIFAR-style ResNet-20: 3x3 stem, 3 stages x 3 basic blocks (16/32/64 ch); `width` scales channels")
def resnet20(*, num_classes: int, in_channels: int = 3, image_size: int = 32, width: float = 1.0) -> nn.Module:
    require(width > 0, f"width must be > 0, got {width}")
    widths = tuple(max(4, int(round(c * width))) for c in (16, 32, 64))
    return CifarResNet(20, num_classes, in_channels, widths)
