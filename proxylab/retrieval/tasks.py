"""Tasks: class subsets of the offline data sets, in the canonical image space.

A ``Task`` is what a zoo model is trained on (a SOURCE task) or what a user brings to the zoo (a query). The
registry holds two disjoint groups:

- ``SOURCE_TASKS``: the tasks zoo models are trained on. Their TEST split is never trained on, so few-shot
  samples of it are "same-task" queries (task identification: did the top model come from this task?).
- ``NEW_TASKS``: held-out class subsets and a held-out labelling (``shapes-position``) that no zoo model was
  trained on: "new-task" queries (transfer: how good is the retrieved model on them?). None of them is a
  class subset of one source task (tested).
- ``SUBSET_TASKS``: class subsets of ONE source task (``Task.parent``), e.g. ``shapes-rgb`` = the red, green
  and blue classes of ``shapes-color``. They are not new tasks (the parent's models were trained on exactly
  these images and labels), so they are "subset" queries: task identification against the parent task.

Source tasks within one data set use disjoint class sets, so "the model came from the query's task" is a
well-defined label; new tasks mix classes across those sets, or label the shapes scenes by a new factor.
Every image a task hands out is canonical (``proxylab.retrieval.canonical``): float32 [N, 3, 32, 32] in [0, 1].
"""
from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from proxylab.errors import ProxylabError, require

SPLITS = ("train", "calib", "test")
KINDS = ("source", "query")
# Few-shot support sizes the issue asks queries to use (labelled images per class).
MIN_SHOTS, MAX_SHOTS = 5, 20
# Test images per class reserved as a query task's scoring set; supports are drawn from the rest of the
# test split, so a probe is never scored on an image it was fit on, whatever the support seed.
DEFAULT_EVAL_PER_CLASS = 25  # digits has 48 test images in its smallest class: 25 + 20 shots fit


@dataclass(frozen=True)
class Task:
    """A class subset (``classes`` = original class indices, None = all) of the data set ``dataset``.

    Labels handed out are relabelled 0..C-1 in the order of ``classes``.
    """

    name: str
    dataset: str
    classes: Optional[Tuple[int, ...]] = None
    kind: str = "source"
    data_seed: int = 0
    parent: Optional[str] = None  # the source task this is a class subset of (SUBSET_TASKS only)

    def __post_init__(self) -> None:
        require(self.kind in KINDS, f"task kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple(int(c) for c in self.classes))
            require(len(self.classes) >= 2, f"task '{self.name}' needs at least 2 classes, got {list(self.classes)}")

    # -- description ------------------------------------------------------------------------------------
    @property
    def family(self) -> str:
        """The task family: the data source (all shapes labellings share the generator 'shapes')."""
        return self.dataset.split("-")[0]

    @property
    def dataset_name(self) -> str:
        """The ``get_dataset`` name of exactly this subset (original class indices recorded)."""
        if self.classes is None:
            return self.dataset
        return f"{self.dataset}@classes=" + "-".join(str(c) for c in self.classes)

    @property
    def class_names(self) -> Tuple[str, ...]:
        return _dataset(self.dataset, self.data_seed, self.classes).class_names

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def info(self) -> Dict[str, object]:
        return {"name": self.name, "dataset": self.dataset, "family": self.family, "kind": self.kind,
                "classes": list(self.classes) if self.classes is not None else None,
                "class_names": list(self.class_names), "num_classes": self.num_classes}

    # -- data ---------------------------------------------------------------------------------------------
    def data(self, split: str, limit: Optional[int] = None, seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
        """All canonical images and labels of `split`, or a seeded random subset of `limit` of them."""
        x, y = _canonical_split(self.dataset, self.data_seed, self.classes, _check_split(split))
        if limit is not None:
            require(isinstance(limit, int) and limit >= 1, f"limit must be a positive integer, got {limit!r}")
            if limit < len(y):
                keep = np.sort(self._rng(seed, "limit", split).permutation(len(y))[:limit])
                idx = torch.as_tensor(keep)
                return x[idx], y[idx]
        return x, y

    def sample(self, split: str, n_per_class: int, seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
        """A seeded few-shot sample: `n_per_class` images of every class from `split` (class-sorted rows).

        On the test split the images come from outside the task's scoring set (see ``query``), so the
        same-task and new-task queries never share an image with the set their ground truth is scored on.
        """
        if _check_split(split) == "test":
            return self.query(n_per_class, seed=seed, split=split)[0]
        x, y = self.data(split)
        idx = _per_class_draw(y.numpy(), self.num_classes, n_per_class, self._rng(seed, "sample", split), self.name, split)
        return x[idx], y[idx]

    def query(self, n_per_class: int, seed: int = 0, split: str = "test",
              n_eval_per_class: int = DEFAULT_EVAL_PER_CLASS):
        """A query: ((support images, labels), (eval images, labels)), disjoint.

        The eval set is fixed per task and split (it does not depend on `seed`), the support is a seeded
        draw of `n_per_class` images per class from the remaining rows.
        """
        _check_split(split)
        require(isinstance(n_eval_per_class, int) and n_eval_per_class >= 1,
                f"n_eval_per_class must be a positive integer, got {n_eval_per_class!r}")
        x, y = self.data(split)
        labels = y.numpy()
        fixed = self._rng(0, "eval", split)
        eval_idx, rest = [], []
        for c in range(self.num_classes):
            rows = np.flatnonzero(labels == c)
            rows = rows[fixed.permutation(len(rows))]
            need = n_eval_per_class + n_per_class
            if len(rows) < need:
                raise ProxylabError(f"task '{self.name}' has only {len(rows)} {split} images of class {c} "
                                    f"({self.class_names[c]}); a query needs {n_per_class} + {n_eval_per_class} "
                                    "(support + scoring): ask for fewer")
            eval_idx.append(rows[:n_eval_per_class])
            rest.append(rows[n_eval_per_class:])
        rng = self._rng(seed, "sample", split)
        support_idx = []
        for c, rows in enumerate(rest):
            _check_shots(n_per_class)
            support_idx.append(np.sort(rows[rng.permutation(len(rows))[:n_per_class]]))
        s = torch.as_tensor(np.concatenate(support_idx))
        e = torch.as_tensor(np.concatenate(eval_idx))
        return (x[s], y[s]), (x[e], y[e])

    def _rng(self, seed: int, purpose: str, split: str) -> np.random.Generator:
        # One independent stream per (task, purpose, split, seed): changing one task never moves another's draws.
        tag = zlib.crc32(f"{self.name}|{self.dataset}|{self.classes}|{purpose}|{split}".encode())
        return np.random.default_rng([int(seed) & 0xFFFFFFFF, tag])


def _check_split(split: str) -> str:
    require(split in SPLITS, f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    return split


def _check_shots(n: int) -> None:
    require(isinstance(n, (int, np.integer)) and n >= 1, f"n_per_class must be a positive integer, got {n!r}")


def _per_class_draw(labels: np.ndarray, num_classes: int, n: int, rng: np.random.Generator, name: str,
                    split: str) -> np.ndarray:
    _check_shots(n)
    out = []
    for c in range(num_classes):
        rows = np.flatnonzero(labels == c)
        if len(rows) < n:
            raise ProxylabError(f"task '{name}' has only {len(rows)} {split} images of class {c}; asked for {n} per class")
        out.append(np.sort(rows[rng.permutation(len(rows))[:n]]))
    return np.concatenate(out)


def _dataset(dataset: str, data_seed: int, classes: Optional[Tuple[int, ...]]):
    from proxylab.data import get_dataset

    ds = get_dataset(dataset, seed=data_seed)
    return ds.filter_classes(list(classes)) if classes is not None else ds


@functools.lru_cache(maxsize=8)
def _canonical_split(dataset: str, data_seed: int, classes: Optional[Tuple[int, ...]], split: str):
    # Kept small (8 entries, <= ~100 MB each for the shapes train split): callers that need many tasks at once
    # (the zoo build) take what they need and move on.
    from proxylab.retrieval.canonical import to_canonical

    ds = _dataset(dataset, data_seed, classes)
    part = getattr(ds, split)
    return to_canonical(part.x, ds), part.y.clone()


def clear_cache() -> None:
    """Drop cached canonical splits and the data sets behind them (a shapes data set holds ~150 MB)."""
    from proxylab.data import clear_cache as clear_data

    _canonical_split.cache_clear()
    clear_data()


# -- the registry -------------------------------------------------------------------------------------------
_LO, _HI, _ODD = (0, 1, 2, 3, 4), (5, 6, 7, 8, 9), (1, 3, 5, 7, 9)

SOURCE_TASKS: Dict[str, Task] = {t.name: t for t in (
    Task("mnist5k-lo", "mnist5k", _LO), Task("mnist5k-hi", "mnist5k", _HI),
    Task("animal-lo", "animal", _LO), Task("animal-hi", "animal", _HI),
    Task("digits-lo", "digits", _LO), Task("digits-hi", "digits", _HI),
    Task("shapes-color", "shapes-color"), Task("shapes-count", "shapes-count"),
    Task("shapes-size", "shapes-size"), Task("shapes-texture", "shapes-texture"),
)}

# Class subsets never used as a source (each straddles two source tasks, or is their union), plus labellings
# of the shapes scenes no model learnt: where the objects are, and which shape they are. (Shape kind is a
# held-out task rather than a source because a few CPU seconds of training leave it at chance: 0.15-0.24
# test accuracy for 6 classes after 1-2 epochs on 1500 images, so its models would carry no knowledge of it.)
NEW_TASKS: Dict[str, Task] = {t.name: t for t in (
    Task("mnist5k-odd", "mnist5k", _ODD, kind="query"), Task("mnist5k-all", "mnist5k", None, kind="query"),
    Task("animal-odd", "animal", _ODD, kind="query"), Task("animal-all", "animal", None, kind="query"),
    Task("digits-odd", "digits", _ODD, kind="query"),
    Task("shapes-position", "shapes-position", kind="query"), Task("shapes", "shapes", kind="query"),
)}

# Class subsets of a single source task: held-out queries, but NOT new tasks. `shapes-rgb` (red, green, blue
# of shapes-color) was listed as a new task until a review noticed that every shapes-color model was trained
# on exactly its images and labels; it is evaluated as its own query kind ("subset") since.
SUBSET_TASKS: Dict[str, Task] = {t.name: t for t in (
    Task("shapes-rgb", "shapes-color", (0, 2, 4), kind="query", parent="shapes-color"),
)}
TASK_KINDS = ("source", "same", "new", "subset", "all")


def get_task(name: str) -> Task:
    """A registered task (source, new or subset) by name."""
    for group in (SOURCE_TASKS, NEW_TASKS, SUBSET_TASKS):
        if name in group:
            return group[name]
    raise ProxylabError(f"unknown task '{name}'; source tasks: {', '.join(SOURCE_TASKS)}; "
                        f"new (held-out) tasks: {', '.join(NEW_TASKS)}; class subsets of a source task: "
                        f"{', '.join(SUBSET_TASKS)}")


def list_tasks(kind: str = "all") -> List[Task]:
    """kind: 'source' | 'same' (= source tasks queried on their test split) | 'new' | 'subset' | 'all'."""
    require(kind in TASK_KINDS, f"task kind must be one of {', '.join(TASK_KINDS)}; got {kind!r}")
    if kind in ("source", "same"):
        return list(SOURCE_TASKS.values())
    if kind == "new":
        return list(NEW_TASKS.values())
    if kind == "subset":
        return list(SUBSET_TASKS.values())
    return list(SOURCE_TASKS.values()) + list(NEW_TASKS.values()) + list(SUBSET_TASKS.values())


@dataclass(frozen=True)
class QuerySpec:
    """One evaluation query: `n_per_class` labelled images per class of `task` drawn (seeded) from `split`."""

    task: str
    n_per_class: int = 10
    seed: int = 0
    split: str = "test"
    n_eval_per_class: int = DEFAULT_EVAL_PER_CLASS

    @property
    def key(self) -> str:
        base = f"{self.task}.{self.split}.n{self.n_per_class}.s{self.seed}"
        # the scoring-set size changes the probe accuracies: part of the cache key unless it is the default
        return base if self.n_eval_per_class == DEFAULT_EVAL_PER_CLASS else f"{base}.e{self.n_eval_per_class}"

    @property
    def kind(self) -> str:
        """'same' when zoo models were trained on this task (task identification), 'subset' for a class subset
        of one source task (identification of that parent task), else 'new' (transfer)."""
        if self.task in SOURCE_TASKS:
            return "same"
        return "subset" if self.task in SUBSET_TASKS else "new"

    def load(self):
        """((support x, y), (eval x, y)) canonical tensors."""
        return get_task(self.task).query(self.n_per_class, self.seed, self.split, self.n_eval_per_class)


def default_queries(kind: str = "all", n_per_class: Sequence[int] = (5, 10, 20), seeds: Sequence[int] = (0,),
                    split: str = "test") -> List[QuerySpec]:
    """The evaluation queries: every same-task and/or new task x shot count x seed, on `split`."""
    for n in n_per_class:
        require(MIN_SHOTS <= int(n) <= MAX_SHOTS, f"few-shot queries use {MIN_SHOTS} to {MAX_SHOTS} images per class, got {n}")
    return [QuerySpec(t.name, int(n), int(s), split) for t in list_tasks(kind) for n in n_per_class for s in seeds]
