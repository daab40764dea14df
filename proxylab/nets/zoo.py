"""The network registry: build any registered network by name for a given input and class count.

Every builder takes ``num_classes, in_channels, image_size`` plus its own keyword options, so a caller can
rebuild a network from a checkpoint's config.json alone. Options are checked against the builder's signature
before it runs, so a typo in ``--net-arg`` names the accepted options instead of failing inside timm.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, List

import torch.nn as nn

from proxylab.errors import ProxylabError, require
from proxylab.registry import Registry

NETS = Registry("network")

# The shapes `nets list` reports parameter counts at (CIFAR-like input, 10 classes).
DEFAULT_INPUT = dict(num_classes=10, in_channels=3, image_size=32)


def list_nets(pattern: str = "*") -> List[str]:
    return NETS.names(pattern)


def net_options(name: str) -> Dict[str, Any]:
    """The builder's own keyword options and their defaults (beyond num_classes/in_channels/image_size)."""
    sig = inspect.signature(NETS.get(name))
    skip = {"num_classes", "in_channels", "image_size"}
    return {k: p.default for k, p in sig.parameters.items() if k not in skip and p.kind == p.KEYWORD_ONLY}


def create_net(name: str, num_classes: int, in_channels: int = 3, image_size: int = 32, **kwargs: Any) -> nn.Module:
    builder: Callable[..., nn.Module] = NETS.get(name)
    require(isinstance(num_classes, int) and num_classes >= 2, f"num_classes must be an integer >= 2, got {num_classes!r}")
    require(in_channels in (1, 3) or (isinstance(in_channels, int) and in_channels >= 1),
            f"in_channels must be a positive integer, got {in_channels!r}")
    require(isinstance(image_size, int) and image_size >= 8, f"image_size must be an integer >= 8 pixels, got {image_size!r}")
    options = net_options(name)
    unknown = [k for k in kwargs if k not in options]
    if unknown:
        accepted = ", ".join(f"{k}={v!r}" for k, v in options.items()) or "none"
        raise ProxylabError(f"network '{name}' has no option {', '.join(map(repr, unknown))}; accepted options: {accepted}")
    return builder(num_classes=num_classes, in_channels=in_channels, image_size=image_size, **kwargs)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
