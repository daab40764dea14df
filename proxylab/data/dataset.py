"""``Split`` (tensors of one split) and ``Dataset`` (three splits plus what describes them)."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Dict, List, Sequence, Tuple, Union

import numpy as np
import torch

from proxylab.errors import ProxylabError


def _resolve_classes(classes: Sequence[Union[int, str]], class_names: Sequence[str]) -> List[int]:
    """Class indices from indices or names; ProxylabError on unknown, repeated or empty selections."""
    if isinstance(classes, (str, int)):
        classes = [classes]
    out: List[int] = []
    for c in classes:
        if isinstance(c, (int, np.integer)) and not isinstance(c, bool):
            if not 0 <= int(c) < len(class_names):
                raise ProxylabError(f"class index {c} is out of range: this data set has classes 0..{len(class_names) - 1}")
            out.append(int(c))
        elif isinstance(c, str) and c in class_names:
            out.append(list(class_names).index(c))
        else:
            raise ProxylabError(f"unknown class {c!r}: give indices 0..{len(class_names) - 1} or names from {list(class_names)}")
    if not out:
        raise ProxylabError("filter_classes needs at least one class")
    if len(set(out)) != len(out):
        raise ProxylabError(f"class list {list(classes)} repeats a class")
    return out


@dataclass
class Split:
    """One split: ``x`` float32 [N, C, H, W] (normalised), ``y`` int64 [N].

    Rows come in class-interleaved order, so ``subset(n)`` (the first n rows) is nearly class-balanced.
    """

    x: torch.Tensor
    y: torch.Tensor
    class_names: Tuple[str, ...] = field(default=())
    name: str = ""

    def __post_init__(self) -> None:
        if self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"x has {self.x.shape[0]} rows but y has {self.y.shape[0]}")

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def subset(self, n_or_indices: Union[int, Sequence[int], np.ndarray, torch.Tensor]) -> "Split":
        """The first n rows (an int), or the rows at the given indices."""
        if isinstance(n_or_indices, (int, np.integer)) and not isinstance(n_or_indices, bool):
            n = int(n_or_indices)
            if not 0 <= n <= len(self):
                raise ProxylabError(f"subset size {n} is outside 0..{len(self)} (the size of split '{self.name}')")
            return replace(self, x=self.x[:n], y=self.y[:n])
        arr = np.asarray(n_or_indices.cpu() if isinstance(n_or_indices, torch.Tensor) else n_or_indices)
        if arr.dtype == bool:  # a boolean mask over the rows
            if arr.shape != (len(self),):
                raise ProxylabError(f"a boolean subset mask needs {len(self)} entries, got shape {arr.shape}")
            arr = np.nonzero(arr)[0]
        elif arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise ProxylabError(f"subset takes an int, integer indices or a boolean mask, got {arr.dtype} values")
        idx = torch.as_tensor(arr.astype(np.int64).reshape(-1))
        if len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= len(self)):
            raise ProxylabError(f"subset indices must lie in 0..{len(self) - 1} for split '{self.name}'")
        return replace(self, x=self.x[idx], y=self.y[idx])

    def filter_classes(self, classes: Sequence[Union[int, str]], relabel: bool = True) -> "Split":
        """Only the rows of ``classes`` (indices or names). With relabel, class ``classes[i]`` becomes label i."""
        names = tuple(self.class_names) or tuple(str(i) for i in range(int(self.y.max()) + 1 if len(self) else 0))
        keep = _resolve_classes(classes, names)
        mask = torch.isin(self.y, torch.tensor(keep, dtype=torch.long))
        y = self.y[mask]
        if relabel:
            lut = torch.full((len(names),), -1, dtype=torch.long)
            lut[torch.tensor(keep)] = torch.arange(len(keep))
            y = lut[y]
            names = tuple(names[k] for k in keep)
        return replace(self, x=self.x[mask], y=y, class_names=names)


@dataclass
class Dataset:
    """Three disjoint splits of one data set, normalised with the train split's per-channel mean/std."""

    name: str
    class_names: Tuple[str, ...]
    train: Split
    calib: Split
    test: Split
    source: str
    seed: int
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    options: Dict[str, Any] = field(default_factory=dict)
    base: str = ""  # the registry name the data came from (name minus the @options)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_channels(self) -> int:
        return int(self.train.x.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train.x.shape[-1])

    def splits(self) -> Dict[str, Split]:
        return {"train": self.train, "calib": self.calib, "test": self.test}

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Back to the [0, 1] pixel scale (for plots and for probes that need raw pixels)."""
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return x * std + mean

    def filter_classes(self, classes: Sequence[Union[int, str]], relabel: bool = True) -> "Dataset":
        """The same data set restricted to some classes (indices or names of this data set's classes).

        Normalisation stays the parent's. The new name records the original class indices, so
        ``get_dataset(sub.name)`` rebuilds it (e.g. a model trained on a class subset can be reloaded).
        """
        keep = _resolve_classes(classes, self.class_names)
        prior = self.options.get("classes")
        if prior is not None and self.options.get("keep_labels") and not set(keep) <= set(prior):
            raise ProxylabError(f"classes {sorted(set(keep) - set(prior))} were filtered out already (this data set "
                                f"keeps classes {prior})")
        parts = {k: s.filter_classes(keep, relabel) for k, s in self.splits().items()}
        relabelled = prior is not None and not self.options.get("keep_labels", False)
        original = [prior[k] for k in keep] if relabelled else keep
        options = dict(self.options, classes=original, keep_labels=not relabel)
        names = tuple(self.class_names[k] for k in keep) if relabel else self.class_names
        return replace(self, name=format_name(self.base, options), class_names=names, options=options, **parts)

    def info(self) -> Dict[str, Any]:
        return {
            "name": self.name,
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "in_channels": self.in_channels,
            "image_size": self.image_size,
            "sizes": {k: len(s) for k, s in self.splits().items()},
            "seed": self.seed,
            "source": self.source,
            "mean": list(self.mean),
            "std": list(self.std),
            "base": self.base,
            "options": dict(self.options),
        }


def format_name(base: str, options: Dict[str, Any]) -> str:
    """``base@28px,3ch,classes=0-2-5``: a name that ``get_dataset`` parses back to the same data.

    ``keeplabels`` marks a class filter that kept the original label values.
    """
    tokens = []
    if options.get("image_size") is not None:
        tokens.append(f"{options['image_size']}px")
    if options.get("channels") is not None:
        tokens.append(f"{options['channels']}ch")
    if options.get("classes") is not None:
        tokens.append("classes=" + "-".join(str(c) for c in options["classes"]))
        if options.get("keep_labels"):
            tokens.append("keeplabels")
    return base + ("@" + ",".join(tokens) if tokens else "")
