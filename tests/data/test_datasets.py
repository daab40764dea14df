"""The contract of every registered data set (parametrized over the registry) and get_dataset's options."""
import hashlib

import numpy as np
import pytest
import torch

from proxylab.data import DATASETS, Dataset, clear_cache, get_dataset, list_datasets
from proxylab.errors import ProxylabError

ALL = list_datasets()


@pytest.fixture(scope="module", autouse=True)
def _release_memory():
    yield
    clear_cache()


def _hashes(x: torch.Tensor):
    return {hashlib.blake2b(r.numpy().tobytes(), digest_size=16).digest() for r in x.reshape(len(x), -1)}


def test_registry_holds_the_contract_names():
    expected = {"digits", "mnist5k", "animal", "shapes", "shapes-color", "shapes-count", "shapes-size",
                "shapes-texture", "shapes-position"}
    assert expected <= set(ALL)


@pytest.mark.parametrize("name", ALL)
def test_layout_sizes_and_types(name):
    spec = DATASETS.get(name)
    ds = get_dataset(name)
    assert isinstance(ds, Dataset) and ds.name == name
    assert (ds.num_classes, ds.in_channels, ds.image_size) == (spec.num_classes, spec.in_channels, spec.image_size)
    assert [len(ds.train), len(ds.calib), len(ds.test)] == list(spec.sizes)
    for split in (ds.train, ds.calib, ds.test):
        assert split.x.dtype == torch.float32 and split.y.dtype == torch.int64
        assert tuple(split.x.shape[1:]) == (ds.in_channels, ds.image_size, ds.image_size)
        assert int(split.y.min()) >= 0 and int(split.y.max()) < ds.num_classes
        assert torch.isfinite(split.x).all()
    info = ds.info()
    assert info["sizes"] == {"train": spec.sizes[0], "calib": spec.sizes[1], "test": spec.sizes[2]}
    assert info["class_names"] == list(ds.class_names) and info["source"] == spec.source


@pytest.mark.parametrize("name", ALL)
def test_splits_share_no_image(name):
    ds = get_dataset(name)
    h = [_hashes(s.x) for s in (ds.train, ds.calib, ds.test)]
    assert not (h[0] & h[1]) and not (h[0] & h[2]) and not (h[1] & h[2])


@pytest.mark.parametrize("name", ALL)
def test_classes_are_stratified(name):
    ds = get_dataset(name)
    ys = [s.y for s in (ds.train, ds.calib, ds.test)]
    total = torch.bincount(torch.cat(ys), minlength=ds.num_classes).double()
    n = total.sum()
    for y in ys:
        counts = torch.bincount(y, minlength=ds.num_classes).double()
        assert (counts - total / n * len(y)).abs().max() <= 1.5


@pytest.mark.parametrize("name", ALL)
def test_normalised_with_train_statistics(name):
    ds = get_dataset(name)
    x = ds.train.x.double()
    assert x.mean(dim=(0, 2, 3)).abs().max() < 1e-4
    assert (x.std(dim=(0, 2, 3)) - 1).abs().max() < 1e-3
    # other splits come from the same distribution, normalised with the same (train) numbers
    assert ds.test.x.double().mean(dim=(0, 2, 3)).abs().max() < 0.1
    raw = ds.denormalize(ds.test.x)
    assert raw.min() > -0.2 and raw.max() < 1.2  # pixels back on the [0, 1] scale (shapes add a little noise)


def test_cached_per_arguments():
    assert get_dataset("digits") is get_dataset("digits", seed=0)
    assert get_dataset("digits", seed=1) is not get_dataset("digits")
    assert get_dataset("digits", image_size=8) is get_dataset("digits")  # native size is no option


def test_shapes_seed_changes_the_generated_images():
    # Same seed -> same bytes is checked on the generator itself (test_shapes.py); here the seed reaches it.
    a = get_dataset("shapes-size", seed=0)
    b = get_dataset("shapes-size", seed=1)
    assert not (_hashes(a.train.x) & _hashes(b.train.x))
    assert a.mean != b.mean


def test_resize_and_channels_are_options_recorded_in_the_name():
    base = get_dataset("digits")
    ds = get_dataset("digits", image_size=28, channels=3)
    assert ds.name == "digits@28px,3ch" and ds.info()["options"] == {"image_size": 28, "channels": 3}
    assert tuple(ds.train.x.shape[1:]) == (3, 28, 28)
    assert torch.equal(ds.train.x[:, 0], ds.train.x[:, 2])
    assert torch.equal(ds.train.y, base.train.y)  # same split, only the pixels changed
    assert get_dataset("digits@28px,3ch") is ds
    # oracle: a smooth 4x upsampling correlates with nearest-neighbour replication of the original
    up = get_dataset("digits", image_size=32)
    big = up.denormalize(up.train.x[:50])[:, 0].numpy()
    small = base.denormalize(base.train.x[:50])[:, 0].numpy()
    nearest = np.stack([np.kron(im, np.ones((4, 4)))[2:-2, 2:-2] for im in small])
    r = np.corrcoef(big[:, 2:-2, 2:-2].ravel(), nearest.ravel())[0, 1]
    assert r > 0.9


def test_rgb_to_grey_uses_luma():
    rgb = get_dataset("shapes-count")
    grey = get_dataset("shapes-count", channels=1)
    assert grey.in_channels == 1 and grey.name == "shapes-count@1ch"
    expected = (rgb.denormalize(rgb.test.x[:20]) * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    torch.testing.assert_close(grey.denormalize(grey.test.x[:20]), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bad, match", [
    ("digts", "Known: animal, digits"),
    ("", "non-empty"),
    ("digits@28cm", "cannot read option"),
    ("digits@keeplabels", "only makes sense"),
])
def test_bad_names(bad, match):
    with pytest.raises(ProxylabError, match=match):
        get_dataset(bad)


@pytest.mark.parametrize("kwargs, match", [
    ({"seed": -1}, "seed"),
    ({"seed": 1.5}, "seed"),
    ({"image_size": 2}, "image_size"),
    ({"channels": 2}, "channels"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ProxylabError, match=match):
        get_dataset("digits", **kwargs)


def test_conflicting_name_option_and_argument():
    with pytest.raises(ProxylabError, match="give it once"):
        get_dataset("digits@16px", image_size=28)


def test_subset():
    ds = get_dataset("digits")
    head = ds.train.subset(100)
    assert torch.equal(head.x, ds.train.x[:100])
    counts = torch.bincount(head.y, minlength=10)
    assert counts.max() - counts.min() <= 2  # class-interleaved order: a prefix is a stratified sample
    picked = ds.train.subset([5, 1, 5])
    assert torch.equal(picked.y, ds.train.y[[5, 1, 5]])
    for bad in (len(ds.train) + 1, -1):
        with pytest.raises(ProxylabError, match="subset size"):
            ds.train.subset(bad)
    mask = (ds.train.y == 3).numpy()
    assert torch.equal(ds.train.subset(mask).x, ds.train.x[ds.train.y == 3])
    assert torch.equal(ds.train.subset(torch.tensor([2, 0])).y, ds.train.y[[2, 0]])
    for bad, match in (([0, len(ds.train)], "indices"), ([-1], "indices"), ([0.5], "integer indices"),
                       (mask[:10], "boolean subset mask")):
        with pytest.raises(ProxylabError, match=match):
            ds.train.subset(bad)


def test_split_filter_classes_relabels_in_the_given_order():
    split = get_dataset("digits").test
    sub = split.filter_classes([7, "2"])
    assert sub.class_names == ("7", "2")
    assert torch.equal(sub.x[sub.y == 0], split.x[split.y == 7])
    assert torch.equal(sub.x[sub.y == 1], split.x[split.y == 2])
    kept = split.filter_classes([7, 2], relabel=False)
    assert set(kept.y.tolist()) == {2, 7} and len(kept) == len(sub)
    for bad, match in (([10], "out of range"), (["ten"], "unknown class"), ([1, 1], "repeats"), ([], "at least one")):
        with pytest.raises(ProxylabError, match=match):
            split.filter_classes(bad)


def test_dataset_filter_classes_round_trips_through_its_name():
    ds = get_dataset("digits", image_size=16)
    sub = ds.filter_classes([9, 3, 4])
    assert sub.name == "digits@16px,classes=9-3-4" and sub.num_classes == 3
    assert sub.mean == ds.mean  # normalisation stays the parent's
    again = get_dataset(sub.name)
    assert torch.equal(again.train.x, sub.train.x) and torch.equal(again.test.y, sub.test.y)
    nested = sub.filter_classes(["4"])  # indices/names refer to the subset; the name to the original
    assert nested.name == "digits@16px,classes=4" and torch.equal(get_dataset(nested.name).test.x, nested.test.x)
    kept = ds.filter_classes([1, 2], relabel=False)
    assert kept.name.endswith("classes=1-2,keeplabels") and torch.equal(get_dataset(kept.name).train.y, kept.train.y)
    assert kept.filter_classes([2]).name == "digits@16px,classes=2"
    with pytest.raises(ProxylabError, match="filtered out already"):
        kept.filter_classes([5])


def test_same_seed_same_tensors_other_seed_other_split():
    # Last in the file: it empties the cache the tests above share.
    a = get_dataset("digits", seed=3)
    clear_cache()
    b = get_dataset("digits", seed=3)
    assert a is not b
    for s, t in zip((a.train, a.calib, a.test), (b.train, b.calib, b.test)):
        assert torch.equal(s.x, t.x) and torch.equal(s.y, t.y)
    c = get_dataset("digits", seed=4)
    assert _hashes(a.test.x) != _hashes(c.test.x)
