"""Is a picture file really showing something? Shared by tests/test_plots.py and the notebook tests."""
from pathlib import Path

import numpy as np


def assert_picture_shows_something(path, min_ink: float = 0.01) -> np.ndarray:
    """Load the PNG and fail when it is blank: a single colour, or almost nothing but background.

    ``min_ink``: the share of pixels that must differ from the most common (background) colour. Axes, ticks
    and labels alone give a few percent; an empty canvas gives zero and a variance of zero.
    """
    from matplotlib.image import imread

    path = Path(path)
    assert path.is_file() and path.stat().st_size > 0, f"no picture at {path}"
    img = imread(path)
    assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50, f"{path}: odd picture shape {img.shape}"
    rgb = img[..., :3].reshape(-1, 3)
    assert rgb.var(axis=0).sum() > 1e-3, f"{path} is blank (one colour)"
    values, counts = np.unique((rgb * 255).round().astype(np.uint8), axis=0, return_counts=True)
    background = values[counts.argmax()]
    ink = np.abs(rgb * 255 - background).sum(axis=1) > 30
    assert ink.mean() > min_ink, f"{path}: only {ink.mean():.2%} of the pixels differ from the background"
    colours = len(values)
    assert colours > 8, f"{path}: only {colours} colours, nothing but a frame was drawn"
    return img
