"""Procedural RGB scenes: coloured, textured shapes on a noisy background, several tasks per scene.

No colour image set ships inside a Python package, so colour tasks are generated. A scene has a group of
1-4 objects that share one shape kind, hue, size and texture, placed in one quadrant of a 32x32 canvas over
a low-frequency, low-saturation noise background. Every factor is drawn as a balanced permutation, so each
task (one factor as the label) has equal class counts and the factors are independent of each other.

Rendering is vectorised over images: each object slot is an anti-aliased signed-distance coverage map on
the whole canvas, composited over the background; 12k scenes take about a second or two on one core.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

import numpy as np

IMAGE_SIZE = 32
SHAPE_KINDS = ("circle", "square", "triangle", "cross", "ring", "semicircle")
COLOR_NAMES = ("red", "yellow", "green", "cyan", "blue", "magenta")  # hue centres 0, 60, ..., 300 degrees
SIZE_NAMES = ("small", "medium", "large")
TEXTURE_NAMES = ("solid", "stripes", "checker", "dots")
COUNT_NAMES = ("1", "2", "3", "4")
POSITION_NAMES = ("top-left", "top-right", "bottom-left", "bottom-right")

# Radius ranges keep a 2x2 group of large objects (spacing 2r + gap) inside the canvas: r + r + gap/2 <= 15.
_RADIUS_RANGES = ((2.8, 3.8), (4.3, 5.3), (5.8, 6.75))
_HUE_JITTER = 12.0  # degrees; classes are 60 degrees apart, so hue classes never overlap
_TEXTURE_LOW = 0.45  # value multiplier of a texture's dark parts: dark enough to see, still clearly coloured
_SEED_TAG = 0x5A3E5  # separates this stream from other users of the same integer seed

# task name -> (factor, class names). "shapes" is the default task of the generator.
TASKS: Dict[str, Tuple[str, Tuple[str, ...]]] = {
    "shapes": ("kind", SHAPE_KINDS),
    "shapes-color": ("color", COLOR_NAMES),
    "shapes-count": ("count", COUNT_NAMES),
    "shapes-size": ("size", SIZE_NAMES),
    "shapes-texture": ("texture", TEXTURE_NAMES),
    "shapes-position": ("position", POSITION_NAMES),
}


@dataclass
class Scenes:
    """Rendered images plus the factors that made them (factor arrays are class indices, count is 0-based)."""

    images: np.ndarray  # uint8 [N, 3, 32, 32]
    factors: Dict[str, np.ndarray]  # kind, color, size, texture, count (objects - 1), position: int64 [N]
    radius: np.ndarray  # float32 [N]
    centers: np.ndarray  # float32 [N, 4, 2] (x, y) per object slot; slots >= count+1 are unused

    def labels(self, task: str) -> np.ndarray:
        return self.factors[TASKS[task][0]]


def _balanced(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    return rng.permutation(np.resize(np.arange(k), n)).astype(np.int64)


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """h in degrees, s and v in [0, 1], broadcastable; returns [..., 3]."""
    out = []
    for n in (5.0, 3.0, 1.0):
        k = np.mod(n + h / 60.0, 6.0)
        out.append(v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0))
    return np.stack(out, axis=-1)


def _interp_matrix(src: int, dst: int) -> np.ndarray:
    """Linear interpolation weights [dst, src] (align corners): upsamples a coarse noise grid smoothly."""
    pos = np.linspace(0, src - 1, dst)
    lo = np.minimum(np.floor(pos).astype(int), src - 2)
    frac = pos - lo
    m = np.zeros((dst, src), np.float32)
    m[np.arange(dst), lo] = 1 - frac
    m[np.arange(dst), lo + 1] = frac
    return m


def _signed_distance(kind: int, u: np.ndarray, v: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Approximate signed distance (pixels, negative inside) of one shape kind in object coordinates."""
    if kind == 0:  # circle
        return np.sqrt(u * u + v * v) - 0.95 * r
    if kind == 1:  # square
        return np.maximum(np.abs(u), np.abs(v)) - 0.8 * r
    if kind == 2:  # equilateral triangle, circumradius 1.05 r: the inradius is half of it
        R = 1.05 * r
        d = np.maximum(v, -0.5 * v + 0.8660254 * u)
        return np.maximum(d, -0.5 * v - 0.8660254 * u) - 0.5 * R
    if kind == 3:  # plus-shaped cross
        au, av, w = np.abs(u), np.abs(v), 0.33 * r
        return np.minimum(np.maximum(au - r, av - w), np.maximum(au - w, av - r))
    if kind == 4:  # ring, outer radius r, hole radius 0.44 r
        return np.abs(np.sqrt(u * u + v * v) - 0.72 * r) - 0.28 * r
    if kind == 5:  # half disk, flat edge through v = r/2 so the shape is centred
        w = v - 0.5 * r
        return np.maximum(np.sqrt(u * u + w * w) - r, w)
    raise ValueError(f"unknown shape kind {kind}")


def _texture(tex: int, u: np.ndarray, v: np.ndarray, period: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """Brightness multiplier in {_TEXTURE_LOW, 1} per pixel for one texture; period and phase are [n, 1, 1]."""
    if tex == 0:  # solid
        return np.ones_like(u)
    a = u / period + phase
    if tex == 1:  # stripes
        bright = np.sin(2 * np.pi * a) > 0
    else:
        b = v / period + phase
        if tex == 2:  # checker
            bright = (np.floor(a) + np.floor(b)) % 2 == 0
        elif tex == 3:  # bright dots on a darker body
            fa, fb = a - np.floor(a) - 0.5, b - np.floor(b) - 0.5
            bright = fa * fa + fb * fb < 0.12
        else:
            raise ValueError(f"unknown texture {tex}")
    return np.where(bright, np.float32(1.0), np.float32(_TEXTURE_LOW))


def _sample_layout(rng, n, count, radius, position) -> np.ndarray:
    """Object centres [n, 4, 2]: the group's cells of a 2x2 grid, bounding box centred in its quadrant."""
    gap = rng.uniform(2.0, 3.0, n)
    spacing = 2 * radius + gap
    cells = np.array([[-0.5, -0.5], [0.5, -0.5], [-0.5, 0.5], [0.5, 0.5]], np.float64)
    order = np.argsort(rng.random((n, 4)), axis=1)  # which cells the group occupies
    offsets = cells[order] * spacing[:, None, None]  # [n, 4, 2]
    used = np.arange(4)[None, :] <= count[:, None]
    big = np.where(used[..., None], offsets, np.nan)
    lo, hi = np.nanmin(big, axis=1), np.nanmax(big, axis=1)
    offsets = offsets - (lo + hi)[:, None, :] / 2  # bounding box of the used centres is centred on 0
    extent = (hi - lo) / 2 + radius[:, None]  # half-size of the group, per axis
    # Group centre: anywhere in its quadrant, then pulled inwards just enough to keep the group on the
    # canvas. extent <= 15 < 16, so the pull never crosses the midline and the quadrant stays the label.
    qx = (position % 2).astype(np.float64)
    qy = (position // 2).astype(np.float64)
    gx = qx * 16 + rng.uniform(4.0, 12.0, n)
    gy = qy * 16 + rng.uniform(4.0, 12.0, n)
    centre = np.stack([gx, gy], axis=1)
    centre = np.clip(centre, extent - 0.5, IMAGE_SIZE - 0.5 - extent)
    return (centre[:, None, :] + offsets).astype(np.float32)


def _render_chunk(rng, f: Dict[str, np.ndarray], radius, centers, bg_matrix) -> np.ndarray:
    n = len(radius)
    size = IMAGE_SIZE
    # Background: a random dull colour with smooth low-frequency mottling (per channel).
    bg_h = rng.uniform(0, 360, n)
    bg_s = rng.uniform(0.0, 0.2, n)
    bg_v = rng.uniform(0.15, 0.5, n)
    base = _hsv_to_rgb(bg_h, bg_s, bg_v).astype(np.float32)  # [n, 3]
    coarse = rng.normal(0.0, 1.0, (n, 3, 5, 5)).astype(np.float32)
    coarse = 0.06 * coarse + 0.06 * coarse.mean(axis=1, keepdims=True)  # mostly luminance mottling
    mottle = bg_matrix @ coarse @ bg_matrix.T  # [n, 3, 32, 32]
    img = base[:, :, None, None] + mottle

    hue = f["color"] * 60.0 + rng.uniform(-_HUE_JITTER, _HUE_JITTER, n)
    sat = rng.uniform(0.7, 1.0, n)
    val = rng.uniform(0.75, 1.0, n)
    rgb = _hsv_to_rgb(hue, sat, val).astype(np.float32)  # [n, 3]
    period = rng.uniform(2.6, 3.6, n).astype(np.float32)[:, None, None]
    phase = rng.uniform(0, 1, n).astype(np.float32)[:, None, None]
    angles = rng.uniform(0, 2 * np.pi, (n, 4)).astype(np.float32)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    for slot in range(4):
        idx = np.nonzero(f["count"] >= slot)[0]  # only scenes that have an object in this slot
        if len(idx) == 0:
            continue
        kind, tex = f["kind"][idx], f["texture"][idx]
        r = radius[idx].astype(np.float32)[:, None, None]
        c = np.cos(angles[idx, slot])[:, None, None]
        s = np.sin(angles[idx, slot])[:, None, None]
        dx = xs[None] - centers[idx, slot, 0, None, None]
        dy = ys[None] - centers[idx, slot, 1, None, None]
        u, v = c * dx + s * dy, c * dy - s * dx
        sd = np.empty_like(u)
        shade = np.empty_like(u)
        for k in range(len(SHAPE_KINDS)):
            sel = kind == k
            if sel.any():
                sd[sel] = _signed_distance(k, u[sel], v[sel], r[sel])
        for t in range(len(TEXTURE_NAMES)):
            sel = tex == t
            if sel.any():
                shade[sel] = _texture(t, u[sel], v[sel], period[idx][sel], phase[idx][sel])
        alpha = np.clip(0.5 - sd, 0.0, 1.0)[:, None]
        colour = rgb[idx, :, None, None] * shade[:, None]
        img[idx] = img[idx] * (1 - alpha) + colour * alpha
    img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(0.03)
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def generate_scenes(n: int, seed: int = 0, chunk: int = 1000) -> Scenes:
    """Render n scenes; the same (n, seed) gives identical bytes (chunk only bounds memory, keep the default)."""
    if n < 1:
        raise ValueError("n must be >= 1")
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed) & (2**63 - 1), _SEED_TAG])))
    factors = {
        "kind": _balanced(rng, n, len(SHAPE_KINDS)),
        "color": _balanced(rng, n, len(COLOR_NAMES)),
        "size": _balanced(rng, n, len(SIZE_NAMES)),
        "texture": _balanced(rng, n, len(TEXTURE_NAMES)),
        "count": _balanced(rng, n, len(COUNT_NAMES)),
        "position": _balanced(rng, n, len(POSITION_NAMES)),
    }
    ranges = np.array(_RADIUS_RANGES)
    radius = rng.uniform(ranges[factors["size"], 0], ranges[factors["size"], 1])
    centers = _sample_layout(rng, n, factors["count"], radius, factors["position"])
    bg_matrix = _interp_matrix(5, IMAGE_SIZE)
    images = np.empty((n, 3, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    for start in range(0, n, chunk):
        sl = slice(start, min(n, start + chunk))
        part = {k: a[sl] for k, a in factors.items()}
        images[sl] = _render_chunk(rng, part, radius[sl], centers[sl], bg_matrix)
    return Scenes(images=images, factors=factors, radius=radius.astype(np.float32), centers=centers)
