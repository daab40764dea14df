"""Offline data sets: real images shipped inside packages plus procedural RGB shapes scenes.

``get_dataset(name, seed)`` returns disjoint, stratified, seeded train/calib/test splits as normalised
float tensors; ``DATASETS`` is the registry behind the names (``proxylab data list`` prints it).
"""
from proxylab.data.catalog import DATASETS, DatasetSpec, clear_cache, get_dataset, list_datasets, parse_name
from proxylab.data.dataset import Dataset, Split
from proxylab.data.shapes import TASKS as SHAPES_TASKS
from proxylab.data.shapes import Scenes, generate_scenes
from proxylab.data.sources import load_numpy_pickle

__all__ = [
    "DATASETS",
    "Dataset",
    "DatasetSpec",
    "SHAPES_TASKS",
    "Scenes",
    "Split",
    "clear_cache",
    "generate_scenes",
    "get_dataset",
    "list_datasets",
    "load_numpy_pickle",
    "parse_name",
]
