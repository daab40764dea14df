"""The procedural shapes generator: determinism, balance, and labels that really follow their factor.

The factor checks read the rendered pixels only (chroma mask = object pixels), so a label function that
drifted from the image content fails here.
"""
import numpy as np
import pytest
from scipy import ndimage

from proxylab.data.shapes import COLOR_NAMES, SHAPE_KINDS, TASKS, generate_scenes

CHROMA = 0.3  # object pixels are saturated; the dull background stays below this


@pytest.fixture(scope="module")
def scenes():
    return generate_scenes(1200, seed=5)


@pytest.fixture(scope="module")
def pixels(scenes):
    x = scenes.images.astype(np.float32) / 255
    return x, x.max(1) - x.min(1)


def test_same_seed_identical_different_seed_different():
    a, b, c = generate_scenes(150, 1), generate_scenes(150, 1), generate_scenes(150, 2)
    assert a.images.dtype == np.uint8 and a.images.shape == (150, 3, 32, 32)
    np.testing.assert_array_equal(a.images, b.images)
    for k in a.factors:
        np.testing.assert_array_equal(a.factors[k], b.factors[k])
    assert (a.images != c.images).mean() > 0.5
    assert any((a.factors[k] != c.factors[k]).any() for k in a.factors)


def test_images_are_distinct_and_use_the_range(scenes):
    flat = scenes.images.reshape(len(scenes.images), -1)
    assert len(np.unique(flat, axis=0)) == len(flat)
    assert flat.min() < 30 and flat.max() > 225


@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_task_is_balanced(scenes, task):
    factor, names = TASKS[task]
    y = scenes.labels(task)
    counts = np.bincount(y, minlength=len(names))
    assert len(counts) == len(names) >= 3
    assert counts.max() - counts.min() <= 1
    assert len(SHAPE_KINDS) >= 5 and len(COLOR_NAMES) >= 6


def test_factors_are_independent(scenes):
    # A task must not be solvable through another factor: the joint table of two factors is near uniform.
    table = np.zeros((6, 6))
    np.add.at(table, (scenes.factors["kind"], scenes.factors["color"]), 1)
    expected = len(scenes.factors["kind"]) / 36
    assert np.abs(table - expected).max() < 0.6 * expected


def test_color_label_is_the_dominant_hue(scenes, pixels):
    x, chroma = pixels
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    hue = np.arctan2(np.sqrt(3) * (g - b), 2 * r - g - b)  # radians, 0 = red, +2pi/3 = green
    w = np.where(chroma > CHROMA, chroma, 0.0)
    mean_hue = np.degrees(np.arctan2((np.sin(hue) * w).sum((1, 2)), (np.cos(hue) * w).sum((1, 2)))) % 360
    predicted = np.round(mean_hue / 60).astype(int) % 6
    assert (predicted == scenes.factors["color"]).mean() > 0.97


def test_count_label_is_the_number_of_blobs(scenes, pixels):
    _, chroma = pixels
    hits = []
    for mask, count in zip(chroma > CHROMA, scenes.factors["count"]):
        closed = ndimage.binary_closing(mask)
        lab, n = ndimage.label(closed, structure=np.ones((3, 3)))
        sizes = ndimage.sum(closed, lab, range(1, n + 1))
        hits.append((sizes >= 4).sum() == count + 1)
    assert np.mean(hits) > 0.85


def test_position_label_is_the_quadrant_of_the_objects(scenes, pixels):
    _, chroma = pixels
    quad = []
    for mask in chroma > CHROMA:
        ys, xs = np.nonzero(mask)
        quad.append(int(xs.mean() >= 15.5) + 2 * int(ys.mean() >= 15.5))
    assert (np.array(quad) == scenes.factors["position"]).mean() > 0.9


def test_size_label_orders_object_area(scenes, pixels):
    _, chroma = pixels
    area = (chroma > CHROMA).sum((1, 2)) / (scenes.factors["count"] + 1)
    means = [area[scenes.factors["size"] == k].mean() for k in range(3)]
    assert means[0] * 1.4 < means[1] and means[1] * 1.4 < means[2]


def test_texture_label_changes_brightness_inside_objects(scenes, pixels):
    x, chroma = pixels
    value = x.max(1)
    spread = np.array([value[i][m].std() for i, m in enumerate(chroma > CHROMA)])
    tex = scenes.factors["texture"]
    solid = spread[tex == 0].mean()
    for t in (1, 2, 3):
        assert spread[tex == t].mean() > 1.5 * solid


def test_rings_have_holes_and_filled_shapes_do_not(scenes, pixels):
    _, chroma = pixels
    f = scenes.factors
    plain = (f["texture"] == 0) & (f["size"] >= 1)  # textures darken parts of a body; small rings close up
    def has_hole(i):
        m = chroma[i] > CHROMA
        return ndimage.binary_fill_holes(m).sum() - m.sum() >= 2
    rings = [has_hole(i) for i in np.nonzero(plain & (f["kind"] == SHAPE_KINDS.index("ring")))[0]]
    solids = [has_hole(i) for i in np.nonzero(plain & np.isin(f["kind"], [0, 1, 2]))[0]]
    assert len(rings) > 10 and np.mean(rings) > 0.9
    assert np.mean(solids) < 0.05


def test_rejects_empty_request():
    with pytest.raises(ValueError):
        generate_scenes(0)
