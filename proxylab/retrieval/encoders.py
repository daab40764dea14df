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
ENCODER_FORMAT = "proxylab-encoders-1"


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


class Encoders:
    """The pair of set encoders plus the id of the extractor whose features they were trained on."""

    def __init__(self, feature_dim: int = 128, width: int = 128, dim: int = 128, extractor_id: str = "",
                 state: Optional[dict] = None, extractor=None):
        SetEncoder = _modules()
        self.feature_dim, self.width, self.dim = int(feature_dim), int(width), int(dim)
        self.extractor_id = str(extractor_id)
        self.model_net = SetEncoder(self.feature_dim, 3 * self.feature_dim, self.width, self.dim)
        self.query_net = SetEncoder(self.feature_dim, 3 * self.feature_dim, self.width, self.dim)
        if state is not None:
            self.model_net.load_state_dict(state["model"])
            self.query_net.load_state_dict(state["query"])
        self.eval()
        self._extractor = extractor

    def eval(self) -> "Encoders":
        self.model_net.eval()
        self.query_net.eval()
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
        cls_tok, pair_tok = model_tokens(sig.anchors, sig.boundary, sig.pairs)
        with torch.no_grad():
            v = self.model_net(cls_tok[None], torch.ones(1, len(cls_tok), dtype=torch.bool),
                               pair_tok[None], torch.ones(1, len(pair_tok), dtype=torch.bool))
        return np.ascontiguousarray(v[0].numpy(), dtype=np.float32)

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
        cls_tok, pair_tok = query_tokens(f, y)
        with torch.no_grad():
            v = self.query_net(cls_tok[None], torch.ones(1, len(cls_tok), dtype=torch.bool),
                               pair_tok[None], torch.ones(1, len(pair_tok), dtype=torch.bool))
        return np.ascontiguousarray(v[0].numpy(), dtype=np.float32)

    # ---- persistence ----
    def to_bytes(self) -> bytes:
        torch = _torch()
        buf = io.BytesIO()
        torch.save({"format": ENCODER_FORMAT, "feature_dim": self.feature_dim, "width": self.width, "dim": self.dim,
                    "extractor_id": self.extractor_id,
                    "state": {"model": self.model_net.state_dict(), "query": self.query_net.state_dict()}}, buf)
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
            if blob.get("format") != ENCODER_FORMAT:
                raise ValueError(f"format {blob.get('format')!r}")
            return cls(blob["feature_dim"], blob["width"], blob["dim"], blob["extractor_id"], blob["state"],
                       extractor=extractor)
        except ProxylabError:
            raise
        except Exception as exc:
            raise ProxylabError(f"{path} is not a proxylab encoder file ({type(exc).__name__}: {exc})") from None

    @classmethod
    def default(cls) -> "Encoders":
        return _default_encoders()


@functools.lru_cache(maxsize=1)
def _default_encoders() -> Encoders:
    return Encoders.load(SHIPPED_ENCODERS)


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
        raise ProxylabError(f"a query needs at least 2 classes, got {len(classes)} ({list(classes)[:3]}); "
                            "add labelled images of another class")
    return inverse.astype(np.int64).reshape(-1)
