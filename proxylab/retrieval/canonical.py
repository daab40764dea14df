"""The one input format every zoo model, the feature extractor, probes and queries share.

``IMAGE_SHAPE = (3, 32, 32)``, float32 pixels in [0, 1], NOT normalised: each zoo model normalises inside
itself. One format means one shared probe pool and one feature space, so a signature captured from any model
and a query built from any data set can be compared.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Tuple

import numpy as np

from proxylab.errors import ProxylabError

if TYPE_CHECKING:  # torch is imported lazily at run time
    import torch

IMAGE_SHAPE: Tuple[int, int, int] = (3, 32, 32)
# Resizing and denormalising leave values a hair outside [0, 1]; anything further off is a wrong input scale.
RANGE_TOLERANCE = 1e-3


def to_canonical(split_x, dataset) -> "torch.Tensor":
    """Normalised images of `dataset` ([N, C, H, W]) -> canonical [N, 3, 32, 32] float32 in [0, 1].

    Undoes the data set's normalisation, resizes bilinearly to 32x32 (antialiased when shrinking), and
    repeats a single grey channel to RGB.
    """
    import torch
    import torch.nn.functional as F

    x = torch.as_tensor(split_x)
    if x.ndim != 4:
        raise ProxylabError(f"to_canonical expects images [N, C, H, W], got shape {list(x.shape)}")
    if not x.is_floating_point():
        raise ProxylabError(f"to_canonical expects the data set's normalised float images, got dtype {x.dtype}")
    channels = x.shape[1]
    if channels != len(dataset.mean):
        raise ProxylabError(f"images have {channels} channels but data set '{dataset.name}' has {len(dataset.mean)}: "
                            "pass images of that data set")
    if channels not in (1, 3):
        raise ProxylabError(f"canonical images are RGB; cannot convert {channels}-channel images (need 1 or 3)")
    x = dataset.denormalize(x.detach().to("cpu", torch.float32))
    size = IMAGE_SHAPE[1:]
    if tuple(x.shape[-2:]) != size:
        shrinking = x.shape[-1] > size[1] or x.shape[-2] > size[0]
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrinking)
    if channels == 1:
        x = x.repeat(1, 3, 1, 1)
    # Bilinear interpolation of [0, 1] pixels stays in [0, 1] up to rounding; clamp removes that rounding.
    return x.clamp_(0.0, 1.0).contiguous()


def check_images(x: Any, what: str = "images") -> "torch.Tensor":
    """Validate canonical images and return them as a CPU float32 contiguous tensor [N, 3, 32, 32].

    ProxylabError on a wrong ndim or shape, a non-float dtype, NaN/inf, values outside [0, 1] (beyond
    RANGE_TOLERANCE; the small overshoot is clamped away) or N == 0.
    """
    import torch

    if isinstance(x, np.ndarray):
        if not np.issubdtype(x.dtype, np.floating):
            raise ProxylabError(f"{what} must be float pixels in [0, 1], got dtype {x.dtype}; "
                                "convert uint8 images with x.astype(np.float32) / 255")
        t = torch.from_numpy(np.ascontiguousarray(x))
    elif isinstance(x, torch.Tensor):
        if not x.is_floating_point():
            raise ProxylabError(f"{what} must be float pixels in [0, 1], got dtype {x.dtype}; "
                                "convert uint8 images with x.float() / 255")
        t = x.detach()
    else:
        raise ProxylabError(f"{what} must be a numpy array or torch tensor, got {type(x).__name__}")
    if t.ndim != 4 or tuple(t.shape[1:]) != IMAGE_SHAPE:
        raise ProxylabError(f"{what} must have shape [N, {', '.join(map(str, IMAGE_SHAPE))}], got {list(t.shape)}; "
                            "convert with proxylab.retrieval.canonical.to_canonical")
    if t.shape[0] == 0:
        raise ProxylabError(f"{what} are empty (N == 0): give at least one image")
    t = t.to("cpu", torch.float32)
    if not bool(torch.isfinite(t).all()):
        raise ProxylabError(f"{what} contain NaN or inf")
    lo, hi = float(t.min()), float(t.max())
    if lo < -RANGE_TOLERANCE or hi > 1.0 + RANGE_TOLERANCE:
        raise ProxylabError(f"{what} must lie in [0, 1] (unnormalised pixels), got values in [{lo:.4g}, {hi:.4g}]; "
                            "undo the normalisation, e.g. with to_canonical")
    if lo < 0.0 or hi > 1.0:
        t = t.clamp(0.0, 1.0)
    return t.contiguous()
