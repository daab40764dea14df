"""Model and query encoders: sets of extractor features -> L2-normalised vectors in one space.

Both encoders are set functions (a token per class or class pair, one self-attention block without any
position information, attention + mean pooling), so permuting a model's classes or a query's labels does
not change the vector, unlike Know2Vec's LSTM over class order. There is no randomness at inference
(eval mode, no dropout, no sampled states): the same signature gives the same vector byte for byte.

- Model tokens: each anchor a_c; each class pair (i, j) as [boundary b_ij, a_i + a_j, |a_i - a_j|]
  (symmetric in i and j).
- Query tokens: each class prototype p_c (mean feature of its few shots); each class pair as
  [p_i + p_j, |p_i - p_j|, spread_i + spread_j] where spread is the mean distance of shots to their prototype.
Features are L2-normalised per image first, so the extractor's activation scale does not matter.

A model's vector depends on that model only: adding or removing a model never re-encodes the others.
Training lives in ``train_encoders.py``; ``Encoders.default()`` loads the shipped weights.

Kernel part (``KernelMap``, training-free; on in the shipped encoders). A learned encoder trained on ~95 models
varies a lot between runs and identified the source task of held-out models poorly, so the vector is led by a
fixed kernel mean embedding (MMD-style set match):
- model: the mean of random Fourier features phi (RBF kernel, width sigma_class, on L2-normalised features)
  over the model's anchors, plus (weight pair_weight) the mean of phi' (width sigma_pair) over the directions
  +-unit(a_i - a_j) between its anchors (the directions along which the model separates its classes: this is
  what tells apart tasks that label the same images differently, e.g. shapes by colour or by size);
- query: the same map on the query's class prototypes (mean raw feature per class, like the anchors).
Each term is L2-normalised, so q . m approximates a normalised set-kernel similarity between "the classes
the model knows" and "the classes the query has". Means over classes and +- over pair directions make it
invariant to class order; the frequencies are drawn from a fixed seed by Box-Muller on PCG64 uniforms and
checked against a stored digest on load. With ``learned_weight`` w > 0 the final vector is
unit([kernel vector, w * learned vector]) (w chosen on validation, see ``evaluate.validate_encoders``).

Ensemble of learned encoders (format 3). The learned part's quality varies a lot with its training seed, so
the encoders may hold n independently trained (model, query) encoder pairs ("members"); the learned vector is
then [l_1, ..., l_n] / sqrt(n) (each l_s unit length), so q . m = kernel similarity + w^2 * the MEAN of the
members' similarities: averaging removes much of the seed-to-seed noise (validation, ``train_encoders``).
With one member every vector, and the id, are exactly what a format-2 file gives.
"""
from __future__ import annotations

import functools
import io
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np

from proxylab.errors import ProxylabError
from proxylab.utils import PathLike, atomic_write_bytes

SHIPPED_ENCODERS = Path(__file__).resolve().parent / "shipped" / "encoders.pt"
# 2: + the kernel part; 3: + several learned members (format 1 and 2 files still load: one member)
ENCODER_FORMAT = "proxylab-encoders-3"
_READABLE_FORMATS = ("proxylab-encoders-1", "proxylab-encoders-2", ENCODER_FORMAT)


def _torch():
    import torch

    return torch


def _modules():
    """Module classes are built lazily so importing this file does not import torch."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class MLP(nn.Module):
        def __init__(self, din: int, dout: int, hidden: int):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(din, hidden), nn.GELU(), nn.Linear(hidden, dout))

        def forward(self, x):
            return self.net(x)

    class SetBlock(nn.Module):
        """Self-attention over a padded set (no positions: permutation-equivariant) + a feed-forward."""

        def __init__(self, dim: int, heads: int = 4):
            super().__init__()
            self.heads = heads
            self.qkv = nn.Linear(dim, 3 * dim)
            self.out = nn.Linear(dim, dim)
            self.norm1 = nn.LayerNorm(dim)
            self.norm2 = nn.LayerNorm(dim)
            self.ff = MLP(dim, dim, 2 * dim)

        def forward(self, x, mask):  # x [B, T, dim], mask [B, T] True = real token
            b, t, d = x.shape
            h = self.norm1(x)
            q, k, v = self.qkv(h).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
            att = (q @ k.transpose(-1, -2)) / (d // self.heads) ** 0.5
            att = att.masked_fill(~mask[:, None, None, :], float("-inf")).softmax(-1)
            x = x + self.out((att @ v).transpose(1, 2).reshape(b, t, d))
            return x + self.ff(self.norm2(x))

    class SetPool(nn.Module):
        """Attention pooling with `heads` learned scorers plus a masked mean -> one vector per set."""

        def __init__(self, dim: int, out: int, heads: int = 4):
            super().__init__()
            self.score = nn.Linear(dim, heads)
            self.norm = nn.LayerNorm(dim)
            self.proj = MLP((heads + 1) * dim, out, 2 * dim)

        def forward(self, x, mask):
            x = self.norm(x)
            w = self.score(x).masked_fill(~mask[..., None], float("-inf")).softmax(1)  # [B, T, H]
            pooled = torch.einsum("bth,btd->bhd", w, x).flatten(1)
            m = mask[..., None].float()
            mean = (x * m).sum(1) / m.sum(1)
            return self.proj(torch.cat([pooled, mean], 1))

    class SetEncoder(nn.Module):
        """Two token kinds (per class, per class pair) -> shared width -> SetBlock -> SetPool -> unit vector."""

        def __init__(self, d_class: int, d_pair: int, width: int, out: int):
            super().__init__()
            self.class_in = MLP(d_class, width, width)
            self.pair_in = MLP(d_pair, width, width)
            self.kind = nn.Parameter(torch.zeros(2, width))  # which kind of token (class or pair)
            self.block = SetBlock(width)
            self.pool = SetPool(width, out)

        def forward(self, cls_tok, cls_mask, pair_tok, pair_mask):
            x = torch.cat([self.class_in(cls_tok) + self.kind[0], self.pair_in(pair_tok) + self.kind[1]], 1)
            mask = torch.cat([cls_mask, pair_mask], 1)
            return F.normalize(self.pool(self.block(x, mask), mask), dim=-1)

    return SetEncoder


def _unit_rows(x):
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-8)


def model_tokens(anchors, boundary, pairs):
    """Class and pair tokens of one signature as torch tensors ([K, D], [P, 3D])."""
    torch = _torch()
    a = _unit_rows(torch.as_tensor(anchors, dtype=torch.float32))
    b = _unit_rows(torch.as_tensor(boundary, dtype=torch.float32))
    p = torch.as_tensor(pairs, dtype=torch.long)
    ai, aj = a[p[:, 0]], a[p[:, 1]]
    return a, torch.cat([b, ai + aj, (ai - aj).abs()], 1)


def query_tokens(features, labels):
    """Class and pair tokens of a few-shot query given its per-image features and labels 0..C-1."""
    torch = _torch()
    f = _unit_rows(torch.as_tensor(features, dtype=torch.float32))
    y = torch.as_tensor(labels, dtype=torch.long)
    c = int(y.max()) + 1
    onehot = torch.nn.functional.one_hot(y, c).float()
    counts = onehot.sum(0)
    protos = (onehot.t() @ f) / counts[:, None]
    # Mean distance of shots to their prototype broadcast over D: how tight each class is.
    dist = (f - protos[y]).norm(dim=1)
    spread = ((onehot.t() @ dist) / counts)[:, None].expand(-1, f.shape[1])
    i, j = torch.triu_indices(c, c, offset=1)
    pi, pj = protos[i], protos[j]
    return protos, torch.cat([pi + pj, (pi - pj).abs(), spread[i] + spread[j]], 1)


def pad_sets(token_sets: Sequence) -> Tuple:
    """Stack variable-length token sets into [B, T, d] with a [B, T] mask (padding is masked everywhere)."""
    torch = _torch()
    t = max(max(len(s) for s in token_sets), 1)
    d = token_sets[0].shape[1]
    out = torch.zeros(len(token_sets), t, d)
    mask = torch.zeros(len(token_sets), t, dtype=torch.bool)
    for n, s in enumerate(token_sets):
        out[n, :len(s)] = s
        mask[n, :len(s)] = True
    return out, mask


class KernelMap:
    """Training-free set embedding: random Fourier features of an RBF kernel, averaged over a set (module doc).

    Deterministic: the frequencies come from Box-Muller on PCG64 uniforms of `seed` (a bit stream NumPy keeps
    stable), computed in float64; ``digest`` fingerprints them so a file made elsewhere is checked on load.
    """

    def __init__(self, feature_dim: int = 128, n_features: int = 2048, sigma_class: float = 0.15,
                 sigma_pair: float = 0.5, pair_weight: float = 1.0, seed: int = 0):
        if n_features < 1 or sigma_class <= 0 or sigma_pair <= 0 or pair_weight < 0:
            raise ProxylabError(f"kernel map needs n_features >= 1, sigmas > 0 and pair_weight >= 0; got "
                                f"{n_features}, {sigma_class}, {sigma_pair}, {pair_weight}")
        self.feature_dim, self.n_features, self.seed = int(feature_dim), int(n_features), int(seed)
        self.sigma_class, self.sigma_pair, self.pair_weight = float(sigma_class), float(sigma_pair), float(pair_weight)
        self._w_class, self._b_class = self._frequencies(self.seed, self.sigma_class)
        self._w_pair, self._b_pair = self._frequencies(self.seed + 1, self.sigma_pair)

    def _frequencies(self, seed: int, sigma: float):
        u = np.random.Generator(np.random.PCG64([seed, 0x4B4D45])).random((3, self.feature_dim, self.n_features))
        # Box-Muller by hand: Generator.standard_normal's algorithm may change between NumPy versions.
        w = np.sqrt(-2.0 * np.log1p(-u[0])) * np.cos(2.0 * np.pi * u[1]) / sigma
        return w, 2.0 * np.pi * u[2, 0]

    @property
    def dim(self) -> int:
        return 2 * self.n_features

    @functools.cached_property
    def digest(self) -> str:
        """Hash of the random features (fixed once drawn): hashed once, not on every Encoders.id."""
        import hashlib

        h = hashlib.sha256()
        for a in (self._w_class, self._b_class, self._w_pair, self._b_pair):
            h.update(np.ascontiguousarray(a, dtype="<f8").tobytes())
        return h.hexdigest()[:16]

    def config(self) -> dict:
        return {"feature_dim": self.feature_dim, "n_features": self.n_features, "sigma_class": self.sigma_class,
                "sigma_pair": self.sigma_pair, "pair_weight": self.pair_weight, "seed": self.seed,
                "digest": self.digest}

    @staticmethod
    def _mean_phi(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Unit-norm mean feature map of a set of rows (rows L2-normalised first; an empty set maps to 0)."""
        if len(x) == 0:
            return np.zeros(w.shape[1])
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        m = np.cos(x @ w + b).mean(0)
        return m / max(float(np.linalg.norm(m)), 1e-12)

    def embed(self, protos) -> np.ndarray:
        """float64 [dim] unit vector of a set of class prototypes [C, D] (model anchors or query prototypes)."""
        p = np.asarray(protos, dtype=np.float64)
        p = p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12)
        i, j = np.triu_indices(len(p), 1)
        d = p[i] - p[j]
        d = d[np.linalg.norm(d, axis=1) > 1e-12]  # two identical prototypes give no direction
        v = np.concatenate([self._mean_phi(p, self._w_class, self._b_class),
                            self.pair_weight * self._mean_phi(np.concatenate([d, -d]), self._w_pair, self._b_pair)])
        return v / max(float(np.linalg.norm(v)), 1e-12)


def class_prototypes(features, labels) -> np.ndarray:
    """Mean RAW feature per class 0..C-1 (the kernel part's query side; anchors are means of raw features too)."""
    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    return np.stack([f[y == c].mean(0) for c in range(int(y.max()) + 1)])


class Encoders:
    """Pairs of set encoders (one or more "members"), an optional training-free KernelMap, and the id of the
    extractor they belong to.

    Vector = unit([kernel vector, learned_weight * learned vector]) with a kernel map; the learned vector alone
    without one (format-1 behaviour). learned_weight 0 drops the learned part (a purely training-free vector).
    The learned vector of n members is [l_1, ..., l_n] / sqrt(n) (module doc). `state`: {"model", "query"}
    state dicts (one member) or {"members": [{"model", "query"}, ...]}. ``model_net`` / ``query_net`` are the
    first member's (what training fits).
    """

    def __init__(self, feature_dim: int = 128, width: int = 128, dim: int = 128, extractor_id: str = "",
                 state: Optional[dict] = None, extractor=None, kernel: Optional[KernelMap] = None,
                 learned_weight: float = 1.0):
        SetEncoder = _modules()
        self.feature_dim, self.width, self.learned_dim = int(feature_dim), int(width), int(dim)
        self.extractor_id = str(extractor_id)
        if kernel is not None and kernel.feature_dim != self.feature_dim:
            raise ProxylabError(f"the kernel map expects {kernel.feature_dim}-d features, the encoders {self.feature_dim}")
        if not (learned_weight >= 0 and np.isfinite(learned_weight)) or (kernel is None and learned_weight == 0):
            raise ProxylabError(f"learned_weight must be >= 0 (and > 0 without a kernel map), got {learned_weight}")
        self.kernel, self.learned_weight = kernel, float(learned_weight)
        states = [None] if state is None else list(state["members"]) if "members" in state else [state]
        if not states:
            raise ProxylabError("encoders need at least one learned member")
        self.members = []
        for st in states:
            model_net = SetEncoder(self.feature_dim, 3 * self.feature_dim, self.width, self.learned_dim)
            query_net = SetEncoder(self.feature_dim, 3 * self.feature_dim, self.width, self.learned_dim)
            if st is not None:
                model_net.load_state_dict(st["model"])
                query_net.load_state_dict(st["query"])
            self.members.append((model_net, query_net))
        self.eval()
        self._extractor = extractor

    @property
    def model_net(self):
        return self.members[0][0]

    @property
    def query_net(self):
        return self.members[0][1]

    @classmethod
    def ensemble(cls, learned: Sequence["Encoders"], kernel: Optional[KernelMap] = None,
                 learned_weight: float = 1.0, extractor=None) -> "Encoders":
        """One Encoders whose members are those of `learned` (same shapes and extractor), in that order."""
        if not learned:
            raise ProxylabError("an ensemble needs at least one learned encoder")
        first = learned[0]
        for e in learned[1:]:
            if (e.feature_dim, e.width, e.learned_dim, e.extractor_id) != (first.feature_dim, first.width,
                                                                              first.learned_dim, first.extractor_id):
                raise ProxylabError("ensemble members must share feature dim, width, dim and extractor id")
        members = [{"model": m.state_dict(), "query": q.state_dict()} for e in learned for m, q in e.members]
        return cls(first.feature_dim, first.width, first.learned_dim, first.extractor_id, {"members": members},
                   extractor=extractor if extractor is not None else first._extractor, kernel=kernel,
                   learned_weight=learned_weight)

    @property
    def uses_learned(self) -> bool:
        return self.kernel is None or self.learned_weight > 0

    @property
    def dim(self) -> int:
        """Length of the vectors (model and query): kernel part + learned part."""
        learned = self.learned_dim * len(self.members) if self.uses_learned else 0
        return (self.kernel.dim if self.kernel is not None else 0) + learned

    @property
    def id(self) -> str:
        """Fingerprint of everything that shapes a vector (weights, kernel map, weight, extractor): vectors made
        under another id are stale."""
        import hashlib

        # "proxylab-encoders-2" in the hash: one-member encoders keep the id they had before format 3
        h = hashlib.sha256(f"proxylab-encoders-2|{self.extractor_id}|{self.learned_weight!r}|".encode())
        h.update((self.kernel.digest if self.kernel is not None else "-").encode())
        if self.uses_learned:
            if len(self.members) > 1:
                h.update(f"members={len(self.members)}|".encode())
            for model_net, query_net in self.members:
                for net in (model_net, query_net):
                    for name, t in sorted(net.state_dict().items()):
                        h.update(name.encode())
                        h.update(t.detach().cpu().numpy().astype("<f4").tobytes())
        return "enc-" + h.hexdigest()[:16]

    def _combine(self, kernel_vec: Optional[np.ndarray], learned) -> np.ndarray:
        """`learned`: one unit tensor per member (None without a learned part)."""
        if self.kernel is None and len(learned) == 1:
            return np.ascontiguousarray(learned[0].numpy(), dtype=np.float32)
        n = len(learned) if learned is not None else 0
        # w / sqrt(n) per member; with one member exactly w (sqrt(1) == 1), so format-2 vectors are unchanged
        scale = (self.learned_weight if self.kernel is not None else 1.0) / (np.sqrt(n) if n > 1 else 1.0)
        parts = [kernel_vec] if self.kernel is not None else []
        if self.uses_learned:
            parts += [scale * t.numpy().astype(np.float64) for t in learned]
        v = np.concatenate(parts)
        return np.ascontiguousarray(v / max(float(np.linalg.norm(v)), 1e-12), dtype=np.float32)

    def eval(self) -> "Encoders":
        for model_net, query_net in self.members:
            model_net.eval()
            query_net.eval()
        return self

    @property
    def extractor(self):
        if self._extractor is None:
            from proxylab.retrieval.features import FeatureExtractor

            self._extractor = FeatureExtractor.default()
        if self.extractor_id and self._extractor.id != self.extractor_id:
            raise ProxylabError(f"these encoders were trained on extractor {self.extractor_id}, but the extractor "
                                f"in use is {self._extractor.id}; retrain the encoders or use the shipped extractor")
        return self._extractor

    # ---- encoding ----
    def encode_signature(self, sig) -> np.ndarray:
        """One model's vector (float32 [dim], unit norm) from its Signature; depends on that model only."""
        torch = _torch()
        if self.extractor_id and sig.extractor != self.extractor_id:
            raise ProxylabError(f"the signature was captured with extractor {sig.extractor}, but these encoders "
                                f"expect {self.extractor_id}; recapture it with `proxylab zoo signature`")
        if sig.anchors.shape[1] != self.feature_dim:
            raise ProxylabError(f"signature features have dimension {sig.anchors.shape[1]}, the encoders expect "
                                f"{self.feature_dim}")
        learned = None
        if self.uses_learned:
            cls_tok, pair_tok = model_tokens(sig.anchors, sig.boundary, sig.pairs)
            cm, pm = torch.ones(1, len(cls_tok), dtype=torch.bool), torch.ones(1, len(pair_tok), dtype=torch.bool)
            with torch.no_grad():
                learned = [net(cls_tok[None], cm, pair_tok[None], pm)[0] for net, _ in self.members]
        return self._combine(self.kernel.embed(sig.anchors) if self.kernel is not None else None, learned)

    def encode_query(self, images, labels) -> np.ndarray:
        """A few-shot query's vector (float32 [dim], unit norm) from canonical images and their labels."""
        from proxylab.retrieval.canonical import check_images

        x = check_images(images, what="query images")
        y = check_query_labels(labels, int(x.shape[0]))
        return self.encode_query_features(self.extractor.embed(x), y)

    def encode_query_features(self, features, labels) -> np.ndarray:
        """As encode_query, from extractor features [N, D] (labels validated and relabelled 0..C-1)."""
        torch = _torch()
        f = np.asarray(features, dtype=np.float32)
        if f.ndim != 2 or f.shape[1] != self.feature_dim:
            raise ProxylabError(f"query features must be [N, {self.feature_dim}], got {list(f.shape)}")
        y = check_query_labels(labels, f.shape[0])
        learned = None
        if self.uses_learned:
            cls_tok, pair_tok = query_tokens(f, y)
            cm, pm = torch.ones(1, len(cls_tok), dtype=torch.bool), torch.ones(1, len(pair_tok), dtype=torch.bool)
            with torch.no_grad():
                learned = [net(cls_tok[None], cm, pair_tok[None], pm)[0] for _, net in self.members]
        kernel_vec = self.kernel.embed(class_prototypes(f, y)) if self.kernel is not None else None
        return self._combine(kernel_vec, learned)

    # ---- persistence ----
    def to_bytes(self) -> bytes:
        torch = _torch()
        buf = io.BytesIO()
        torch.save({"format": ENCODER_FORMAT, "feature_dim": self.feature_dim, "width": self.width,
                    "dim": self.learned_dim, "extractor_id": self.extractor_id, "learned_weight": self.learned_weight,
                    "kernel": self.kernel.config() if self.kernel is not None else None,
                    "state": {"members": [{"model": m.state_dict(), "query": q.state_dict()}
                                          for m, q in self.members]}}, buf)
        return buf.getvalue()

    def save(self, path: PathLike) -> None:
        atomic_write_bytes(path, self.to_bytes())

    @classmethod
    def load(cls, path: PathLike, extractor=None) -> "Encoders":
        torch = _torch()
        path = Path(path)
        if not path.is_file():
            raise ProxylabError(f"encoder file {path} does not exist; rebuild the shipped one with "
                                "`python -m proxylab.retrieval.train_encoders --zoo ZOO_DIR --ship`")
        try:
            blob = torch.load(io.BytesIO(path.read_bytes()), map_location="cpu", weights_only=True)
            if blob.get("format") not in _READABLE_FORMATS:
                raise ValueError(f"format {blob.get('format')!r}")
            kernel = None
            if blob.get("kernel") is not None:
                cfg = dict(blob["kernel"])
                digest = cfg.pop("digest")
                kernel = KernelMap(**cfg)
                if kernel.digest != digest:
                    raise ProxylabError(f"{path}: the kernel map's random features differ from the ones the file was "
                                        f"made with (digest {kernel.digest} != {digest}); vectors would not match "
                                        "the index: rebuild with `python -m proxylab.retrieval.train_encoders`")
            return cls(blob["feature_dim"], blob["width"], blob["dim"], blob["extractor_id"], blob["state"],
                       extractor=extractor, kernel=kernel, learned_weight=float(blob.get("learned_weight", 1.0)))
        except ProxylabError:
            raise
        except Exception as exc:
            raise ProxylabError(f"{path} is not a proxylab encoder file ({type(exc).__name__}: {exc})") from None

    @classmethod
    @functools.lru_cache(maxsize=1)
    def default(cls) -> "Encoders":
        """The shipped encoders, loaded once per process (``Encoders.default.cache_clear()`` after rebuilding)."""
        return cls.load(SHIPPED_ENCODERS)


MAX_QUERY_CLASSES = 64  # ~0.25 GB for the pair attention at 64 classes; the zoo's tasks have at most 10


def check_query_labels(labels, n: int) -> np.ndarray:
    """Labels of a few-shot query -> int64 0..C-1 (sorted unique values); ProxylabError when unusable."""
    if labels is None:
        raise ProxylabError("a query needs labels: give one class label per image (unlabelled images cannot "
                            "describe a task)")
    y = np.asarray(labels.cpu() if hasattr(labels, "cpu") else labels)
    if y.ndim != 1 or y.shape[0] != n:
        raise ProxylabError(f"query labels must be one label per image ({n}), got shape {list(y.shape)}")
    if y.dtype.kind not in "iu" and not (y.dtype.kind in "US" or y.dtype == object):
        if y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
            y = y.astype(np.int64)
        else:
            raise ProxylabError(f"query labels must be integers or strings, got dtype {y.dtype}")
    classes, inverse = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise ProxylabError(f"a query needs at least 2 classes, got {len(classes)} ({classes[:3].tolist()}); "
                            "add labelled images of another class")
    if len(classes) > MAX_QUERY_CLASSES:
        # the encoders attend over class pairs: memory grows with C^4, and a service must not be felled by one query
        raise ProxylabError(f"a query may hold at most {MAX_QUERY_CLASSES} classes, got {len(classes)}; split the "
                            "task into several queries")
    return inverse.astype(np.int64).reshape(-1)
