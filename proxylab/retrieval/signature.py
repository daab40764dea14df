"""A model's decision knowledge, captured black-box and stored as features of the shared extractor.

Capture, using nothing but ``predict_proba`` (every image sent is a counted call):
1. The shared probe pool (``probe_pool``): a fixed, seeded set of canonical images: freshly generated
   shapes scenes plus images from the train splits of the zoo's SOURCE data (never query classes).
2. Anchors: for each class c, the pool image the model gives the highest probability of c (the end of the
   boundary paths); the stored anchor FEATURES of c are the mean over the ANCHOR_TOP pool images with the
   highest probability of c: the model's own class prototype, comparable with a query's class prototypes.
3. Boundary samples: for each unordered class pair (i, j), a bisection along the straight line from
   anchor i to anchor j for the point where the model's preference flips between p_i and p_j
   (decision-based: only the sign of p_i - p_j at each step is used). The bisection runs on dyadic
   fractions and the blend is computed symmetrically, so when the path crosses the boundary once,
   searching from i or from j gives the same image (relabelling classes does not move it).
4. All anchor and boundary images are embedded by the feature extractor; only features are kept, so a
   signature can travel to the service without any image or weight.

The same model, pool seed and extractor give the same signature byte for byte.
"""
from __future__ import annotations

import functools
import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Optional

import numpy as np

from proxylab.errors import ProxylabError
from proxylab.utils import PathLike, atomic_write_bytes

if TYPE_CHECKING:  # annotations only: importing this module does not import torch
    import torch

SIGNATURE_FORMAT = "proxylab-signature-1"
CAPTURE_HINT = "capture one with `proxylab zoo signature`"
POOL_PER_SOURCE = 96
BISECTION_STEPS = 6
ANCHOR_TOP = 8  # pool images averaged into a class's anchor features
_POOL_SEED_TAG = 0x51C7  # keeps the pool's scene stream apart from the shapes data set's own scenes

# The encoders attend over class-pair tokens (memory grows with C^4): bounded so one upload cannot fell a service.
MAX_SIGNATURE_CLASSES = 64


@dataclass
class Signature:
    anchors: np.ndarray  # float32 [K, D]: anchor features of class c (row c): mean of its top pool images
    boundary: np.ndarray  # float32 [P, D]: features of the decision-boundary samples
    pairs: np.ndarray  # int64 [P, 2]: (i, j), i < j, the class pair of each boundary sample
    num_classes: int
    calls: int
    extractor: str
    seed: int

    def __post_init__(self) -> None:
        self.anchors = np.ascontiguousarray(self.anchors, dtype=np.float32)
        self.boundary = np.ascontiguousarray(self.boundary, dtype=np.float32)
        self.pairs = np.ascontiguousarray(self.pairs, dtype=np.int64).reshape(-1, 2)
        self.num_classes, self.calls, self.seed = int(self.num_classes), int(self.calls), int(self.seed)
        self.extractor = str(self.extractor)
        self.validate()

    @property
    def dim(self) -> int:
        return int(self.anchors.shape[1])

    def validate(self, where: str = "signature") -> None:
        a, b, p = self.anchors, self.boundary, self.pairs
        if self.num_classes < 2:
            raise ProxylabError(f"{where}: a model signature needs >= 2 classes, got {self.num_classes}")
        if self.num_classes > MAX_SIGNATURE_CLASSES:
            raise ProxylabError(f"{where}: at most {MAX_SIGNATURE_CLASSES} classes are supported, got {self.num_classes} "
                                "(the encoders attend over every class pair)")
        if len(p) > self.num_classes * (self.num_classes - 1) // 2:
            raise ProxylabError(f"{where}: {len(p)} boundary samples for {self.num_classes} classes; at most one per "
                                "class pair")
        if a.ndim != 2 or a.shape[0] != self.num_classes or a.shape[1] < 1:
            raise ProxylabError(f"{where}: anchors must be [num_classes={self.num_classes}, D], got {list(a.shape)}")
        if b.ndim != 2 or b.shape[1] != a.shape[1] or b.shape[0] != p.shape[0]:
            raise ProxylabError(f"{where}: boundary must be [P, {a.shape[1]}] with one row per pair, "
                                f"got boundary {list(b.shape)} and pairs {list(p.shape)}")
        if not (np.isfinite(a).all() and np.isfinite(b).all()):
            raise ProxylabError(f"{where}: features contain NaN or inf")
        if p.size and (p.min() < 0 or p.max() >= self.num_classes or (p[:, 0] >= p[:, 1]).any()):
            raise ProxylabError(f"{where}: pairs must be class indices (i, j) with 0 <= i < j < {self.num_classes}")
        if self.calls < 0:
            raise ProxylabError(f"{where}: calls must be >= 0, got {self.calls}")

    # ---- bytes / files (npz without pickle) ----
    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, format=np.array(SIGNATURE_FORMAT), anchors=self.anchors, boundary=self.boundary,
                 pairs=self.pairs, num_classes=np.int64(self.num_classes), calls=np.int64(self.calls),
                 extractor=np.array(self.extractor), seed=np.int64(self.seed))
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, where: str = "signature bytes") -> "Signature":
        from proxylab.utils import read_npz

        try:
            # read_npz: pickle refused, and its lock makes np.load safe from the service's concurrent threads
            z = read_npz(bytes(data), where, hint=CAPTURE_HINT)
        except ProxylabError as exc:  # truncated zip, object arrays: its message names `where` and what to do
            raise ProxylabError(f"not a proxylab signature: {exc}") from None
        return cls.from_arrays(z, where)

    @classmethod
    def from_arrays(cls, z: Dict[str, np.ndarray], where: str = "signature bytes") -> "Signature":
        """A Signature from the arrays of its .npz (what ``from_bytes`` reads; the service has them already)."""
        try:
            if str(z["format"]) != SIGNATURE_FORMAT:
                raise ValueError(f"format is {str(z['format'])!r}, expected {SIGNATURE_FORMAT!r}")
            fields = {k: z[k] for k in ("anchors", "boundary", "pairs")}
            scalars = dict(num_classes=int(z["num_classes"]), calls=int(z["calls"]),
                           extractor=str(z["extractor"]), seed=int(z["seed"]))
        except KeyError as exc:
            raise ProxylabError(f"{where}: not a proxylab signature (it has no array {exc.args[0]!r}; it has "
                                f"{sorted(z)[:6]}); {CAPTURE_HINT}") from None
        except Exception as exc:  # noqa: BLE001 - wrong type or value: "not a signature"
            raise ProxylabError(f"{where}: not a proxylab signature ({type(exc).__name__}: {exc}); "
                                f"{CAPTURE_HINT}") from None
        for k, v in fields.items():
            if not np.issubdtype(v.dtype, np.number):
                raise ProxylabError(f"{where}: field '{k}' is not numeric")
        sig = cls.__new__(cls)
        sig.anchors = np.ascontiguousarray(fields["anchors"], dtype=np.float32)
        sig.boundary = np.ascontiguousarray(fields["boundary"], dtype=np.float32)
        sig.pairs = np.ascontiguousarray(fields["pairs"], dtype=np.int64)
        sig.num_classes, sig.calls, sig.extractor, sig.seed = (scalars["num_classes"], scalars["calls"],
                                                               scalars["extractor"], scalars["seed"])
        if sig.pairs.ndim != 2 or sig.pairs.shape[1:] != (2,):
            raise ProxylabError(f"{where}: pairs must be [P, 2], got {list(sig.pairs.shape)}")
        sig.validate(where)
        return sig

    def save(self, path: PathLike) -> None:
        atomic_write_bytes(path, self.to_bytes())

    @classmethod
    def load(cls, path: PathLike) -> "Signature":
        path = Path(path)
        if not path.is_file():
            raise ProxylabError(f"signature file {path} does not exist")
        return cls.from_bytes(path.read_bytes(), where=f"signature file {path}")


@functools.lru_cache(maxsize=2)
def probe_pool(seed: int = 0, per_source: int = POOL_PER_SOURCE) -> "torch.Tensor":
    """The shared probe pool: canonical images [M, 3, 32, 32], the same for every model (seeded, cached).

    `per_source` freshly generated shapes scenes (a stream apart from the shapes data set's; unlabelled, they
    stand for every shapes labelling), then per non-shapes source task `per_source // 2` train images.
    Only source tasks' train splits are used, so query images and held-out tasks never enter a signature.
    """
    import torch

    from proxylab.data import generate_scenes
    from proxylab.retrieval.features import default_sources, load_source_images

    scenes = generate_scenes(per_source, seed=(seed * 7919 + _POOL_SEED_TAG) % (2**31))
    parts = [torch.from_numpy(scenes.images).float() / 255.0]
    real = [t for t in default_sources() if t.family != "shapes"]
    for _, x, _, _ in load_source_images(real, "train", max_per_source=per_source // 2, seed=seed):
        parts.append(x)
    return torch.cat(parts).contiguous()


def _blend(a: "torch.Tensor", b: "torch.Tensor", t: "torch.Tensor") -> "torch.Tensor":
    # (1-t)*a + t*b with exactly representable dyadic t: swapping (a, b, t) for (b, a, 1-t) gives the same
    # bytes, since the two products are the same and float addition commutes.
    t = t.view(-1, 1, 1, 1)
    return (1.0 - t) * a + t * b


def capture_signature(model, extractor=None, seed: int = 0, pool: Optional["torch.Tensor"] = None,
                      steps: int = BISECTION_STEPS, per_source: int = POOL_PER_SOURCE, top: int = ANCHOR_TOP
                      ) -> Signature:
    """Anchors and boundary features of a black-box model; deterministic.

    Budget: pool size + steps * (number of class pairs whose anchors the model labels differently) calls.

    `pool` overrides the shared probe pool (tests); `steps` bisection steps per class pair.
    Raises ProxylabError (from the model's own validation) when its outputs are not probabilities.
    """
    import torch

    from proxylab.retrieval.blackbox import check_probabilities
    from proxylab.retrieval.canonical import check_images
    from proxylab.retrieval.features import FeatureExtractor

    k = int(getattr(model, "num_classes", 0) or 0)
    if k < 2:
        raise ProxylabError(f"a model needs >= 2 classes to have a signature, got num_classes={k}")
    if k > MAX_SIGNATURE_CLASSES:
        raise ProxylabError(f"signatures support models of at most {MAX_SIGNATURE_CLASSES} classes, this one has {k}")
    if int(steps) < 1:
        raise ProxylabError(f"steps must be >= 1, got {steps}")
    fx = extractor if extractor is not None else FeatureExtractor.default()
    x = check_images(pool if pool is not None else probe_pool(seed, per_source), what="probe pool")
    name = getattr(model, "describe", lambda: "model")()
    calls = 0

    def ask(images: torch.Tensor) -> np.ndarray:
        nonlocal calls
        calls += int(images.shape[0])
        return check_probabilities(model.predict_proba(images), int(images.shape[0]), k, source=name)

    probs = ask(x)
    anchor_idx = probs.argmax(axis=0)  # first maximum: deterministic tie-break
    anchors = x[torch.as_tensor(anchor_idx)]
    pairs = np.array([(i, j) for i in range(k) for j in range(i + 1, k)], dtype=np.int64)
    t = boundary_fractions(ask, anchors, probs[anchor_idx], pairs, steps)
    boundary_images = _blend(anchors[pairs[:, 0]], anchors[pairs[:, 1]], t)
    pool_feats = _pool_features(fx, x, None if pool is not None else (seed, per_source))
    return Signature(anchors=class_anchor_features(probs, pool_feats, top), boundary=fx.embed(boundary_images),
                     pairs=pairs, num_classes=k, calls=calls, extractor=fx.id, seed=seed)


def class_anchor_features(probs: np.ndarray, pool_feats: np.ndarray, top: int = ANCHOR_TOP) -> np.ndarray:
    """Row c: the mean feature of the `top` pool images the model gives the highest probability of class c
    (stable order: ties by pool position). A mean over several images is the model's own class prototype in
    feature space, far less noisy than one image for briefly trained models that are confident off-task."""
    top = max(1, min(int(top), probs.shape[0]))
    order = np.argsort(-probs, axis=0, kind="stable")[:top]  # [top, K]
    return np.ascontiguousarray(pool_feats[order].mean(axis=0), dtype=np.float32)


_POOL_FEATURES: dict = {}


def _pool_features(fx, x, key) -> np.ndarray:
    """Features of the probe pool; the shared pool's are computed once per extractor (every model reuses them)."""
    if key is None:
        return fx.embed(x)
    full = (fx.id, *key)
    if full not in _POOL_FEATURES:
        _POOL_FEATURES[full] = fx.embed(x)
    return _POOL_FEATURES[full]


def boundary_fractions(ask, anchors, anchor_probs: np.ndarray, pairs: np.ndarray, steps: int) -> "torch.Tensor":
    """Per pair (i, j): the fraction t in (0, 1) along anchor_i -> anchor_j where the model's preference between
    classes i and j flips, by `steps` rounds of bisection, all pairs batched (P calls per round).

    `ask(images) -> probabilities`; `anchor_probs[c]` = the model's answer on anchor c (already paid for).
    Returns the midpoint of the final bracket: within 2**-(steps+1) of a crossing when the ends disagree.
    """
    import torch

    rows = np.arange(len(pairs))
    # Which of p_i, p_j wins at each end is known from the pool pass (no call). Only paths whose ends disagree
    # cross the boundary; the others get t = 1/2, a choice that does not depend on which end is called i.
    start_side = _prefers_i(anchor_probs[pairs[:, 0]], pairs, rows)
    crossing = start_side != _prefers_i(anchor_probs[pairs[:, 1]], pairs, rows)
    t = torch.full((len(pairs),), 0.5, dtype=torch.float32)
    live = np.flatnonzero(crossing)
    if len(live) == 0:
        return t
    a, b = anchors[pairs[live, 0]], anchors[pairs[live, 1]]
    sub, side0 = pairs[live], start_side[live]
    sub_rows = np.arange(len(live))
    lo = torch.zeros(len(live), dtype=torch.float32)
    hi = torch.ones(len(live), dtype=torch.float32)
    for _ in range(int(steps)):
        mid = (lo + hi) / 2
        same = torch.from_numpy(_prefers_i(ask(_blend(a, b, mid)), sub, sub_rows) == side0)
        lo = torch.where(same, mid, lo)
        hi = torch.where(same, hi, mid)
    t[torch.as_tensor(live)] = (lo + hi) / 2
    return t


def _prefers_i(p: np.ndarray, pairs: np.ndarray, rows: np.ndarray) -> np.ndarray:
    return p[rows, pairs[:, 0]] >= p[rows, pairs[:, 1]]

