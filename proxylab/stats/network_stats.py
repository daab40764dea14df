"""NetworkStats: the per-layer tensors and scalars a proxy reads, computed once per (model, batch).

What each layer holds (all float32, CPU unless moved with ``to``):

- ``weight``        the layer's weight, as in the model.
- ``act``           the layer's output for the first few images of the calibration batch (see
                    ``compute_stats``: at most ``act_images`` images and about ``act_max_elements`` values).
- ``grad``          dL/dW of the mean cross-entropy over the batch.
- ``virtual_grad``  dW of sum(logits) for an all-ones input (SynFlow-style, see ``compute_stats``).
- ``fisher``        empirical Fisher diagonal: sum over the batch of the per-sample gradient squared.
- ``qerr(l, b)``    W - Q_b(W) with proxylab.quant.quantize_weight (per-channel RTN), made from ``weight``.
- scalars ``hessian_trace`` (Hutchinson) and ``hessian_eig`` (power iteration) of the layer's Hessian block.
- extras (``proxylab.stats.extras``, when computed): ``gram(l)`` the [n, n] Gram matrix of the layer's output
  over the whole batch (OMPQ) and ``synflow_log()`` per-layer log SynFlow saliencies (the synflow proxy).

Layers are indexed by position (forward order of proxylab.quant.quantizable_layers) or by module name.
"""
from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from proxylab.errors import ProxylabError

TENSOR_KEYS = ("weight", "act", "grad", "virtual_grad", "fisher")
SCALAR_KEYS = ("hessian_trace", "hessian_eig")
LayerRef = Union[int, str]


class NetworkStats:
    def __init__(
        self,
        layer_names: Sequence[str],
        bit_choices: Sequence[int],
        params: Sequence[int],
        macs: Sequence[int],
        tensors: Dict[str, List[torch.Tensor]],
        scalars: Dict[str, Sequence[float]],
        meta: Optional[Dict[str, Any]] = None,
        extras: Optional[Dict[str, Any]] = None,
    ):
        self.layer_names: List[str] = list(layer_names)
        self.bit_choices: Tuple[int, ...] = tuple(int(b) for b in bit_choices)
        self.params = np.asarray(params, dtype=np.int64)
        self.macs = np.asarray(macs, dtype=np.int64)
        n = len(self.layer_names)
        if len(self.params) != n or len(self.macs) != n:
            raise ValueError(f"params/macs have {len(self.params)}/{len(self.macs)} entries for {n} layers")
        missing = [k for k in TENSOR_KEYS if k not in tensors]
        if missing:
            raise ValueError(f"NetworkStats is missing tensors {missing}")
        for key in TENSOR_KEYS:
            if len(tensors[key]) != n:
                raise ValueError(f"tensor '{key}' has {len(tensors[key])} layers, expected {n}")
        self._tensors = {k: list(tensors[k]) for k in TENSOR_KEYS}
        self._scalars = {k: np.asarray(v, dtype=np.float64) for k, v in scalars.items()}
        self.meta: Dict[str, Any] = dict(meta or {})
        self._index = {name: i for i, name in enumerate(self.layer_names)}
        self._qerr: Dict[Tuple[int, int], torch.Tensor] = {}
        self.extras: Dict[str, Any] = dict(extras or {})
        for key in ("gram", "synflow_log"):
            if key in self.extras and len(self.extras[key]) != n:
                raise ValueError(f"extras '{key}' has {len(self.extras[key])} layers, expected {n}")

    # ----------------------------------------------------------------- lookup
    def __len__(self) -> int:
        return len(self.layer_names)

    @property
    def num_layers(self) -> int:
        return len(self.layer_names)

    @property
    def key(self) -> str:
        """The cache key these statistics were stored under ('' when computed without a key)."""
        return str(self.meta.get("key", ""))

    def layer_index(self, layer: LayerRef) -> int:
        if isinstance(layer, (int, np.integer)) and not isinstance(layer, bool):
            i = int(layer)
            if not -len(self) <= i < len(self):
                raise ProxylabError(
                    f"layer index {i} is out of range: these stats have {len(self)} layers (0..{len(self) - 1})"
                )
            return i % len(self)
        if isinstance(layer, str):
            if layer not in self._index:
                raise ProxylabError(
                    f"no quantizable layer named '{layer}'. Layers: {', '.join(self.layer_names)}"
                )
            return self._index[layer]
        raise ProxylabError(f"layer must be an index or a module name, got {type(layer).__name__} {layer!r}")

    def tensor(self, layer_idx: LayerRef, key: str) -> torch.Tensor:
        if key not in self._tensors:
            raise ProxylabError(f"unknown stats tensor '{key}'. Known: {', '.join(TENSOR_KEYS)}")
        return self._tensors[key][self.layer_index(layer_idx)]

    def qerr(self, layer_idx: LayerRef, bits: int) -> torch.Tensor:
        """W - Q_bits(W) (per-channel symmetric RTN); made on first use from ``weight`` and kept."""
        i = self.layer_index(layer_idx)
        if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)):
            raise ProxylabError(f"bits must be an integer such as {self.bit_choices[0]}, got {bits!r}")
        k = (i, int(bits))
        if k not in self._qerr:
            from proxylab.quant import quantize_weight

            w = self._tensors["weight"][i]
            self._qerr[k] = (w - quantize_weight(w, int(bits), per_channel=True)).to(torch.float32)
        return self._qerr[k]

    def scalar(self, layer_idx: LayerRef, key: str) -> float:
        i = self.layer_index(layer_idx)
        if key not in SCALAR_KEYS:
            raise ProxylabError(f"unknown stats scalar '{key}'. Known: {', '.join(SCALAR_KEYS)}")
        if key not in self._scalars:
            raise ProxylabError(
                f"'{key}' was not computed for these stats (hessian=False): recompute with hessian=True"
            )
        return float(self._scalars[key][i])

    def scalars(self, key: str) -> np.ndarray:
        """All layers' values of one scalar, as a float64 array [L]."""
        return np.array([self.scalar(i, key) for i in range(len(self))], dtype=np.float64)

    def _extra(self, key: str):
        if key not in self.extras:
            raise ProxylabError(
                f"these stats have no '{key}' (made by proxylab.stats.compute_stats since stats extras v1): "
                "recompute them with compute_stats / stats_for_table"
            )
        return self.extras[key]

    def gram(self, layer_idx: LayerRef) -> torch.Tensor:
        """X X^T [n, n] float64 of the layer's output flattened per image, over every image of the batch."""
        return self._extra("gram")[self.layer_index(layer_idx)]

    def synflow_log(self) -> np.ndarray:
        """log(params * mean|V * W|) per layer [L] float64, SynFlow's linearization with ReLUs (see extras)."""
        return np.asarray(self._extra("synflow_log"), dtype=np.float64)

    @property
    def has_hessian(self) -> bool:
        return all(k in self._scalars for k in SCALAR_KEYS)

    # ------------------------------------------------------------ bookkeeping
    def fill_qerr(self) -> "NetworkStats":
        """Make qerr for every (layer, bit choice) now, so scoring never pays for it mid-loop."""
        for i in range(len(self)):
            for b in self.bit_choices:
                self.qerr(i, b)
        return self

    def to(self, device: Union[str, torch.device]) -> "NetworkStats":
        """A copy whose tensors live on ``device`` (scalars and metadata are shared, qerr moves too)."""
        out = NetworkStats(
            self.layer_names,
            self.bit_choices,
            self.params,
            self.macs,
            {k: [t.to(device) for t in ts] for k, ts in self._tensors.items()},
            self._scalars,
            self.meta,
            {k: ([t.to(device) for t in v] if k == "gram" else v) for k, v in self.extras.items()},
        )
        out._qerr = {k: t.to(device) for k, t in self._qerr.items()}
        return out

    @property
    def nbytes(self) -> int:
        """Bytes held by the tensors (qerr included once made)."""
        total = sum(t.numel() * t.element_size() for ts in self._tensors.values() for t in ts)
        total += sum(t.numel() * t.element_size() for t in self._qerr.values())
        return int(total)

    def to_dict(self) -> Dict[str, Any]:
        """Plain containers and tensors only, so ``torch.load(weights_only=True)`` can read it back."""
        return {
            "layer_names": list(self.layer_names),
            "bit_choices": list(self.bit_choices),
            "params": [int(p) for p in self.params],
            "macs": [int(m) for m in self.macs],
            "tensors": {k: [t.detach().cpu().contiguous() for t in ts] for k, ts in self._tensors.items()},
            "scalars": {k: [float(x) for x in v] for k, v in self._scalars.items()},
            # through JSON so only plain types reach the file (weights_only loading refuses anything else)
            "meta": json.loads(json.dumps(self.meta, default=str)),
            **({"extras": dict(self.extras)} if self.extras else {}),
        }

    @classmethod
    def from_dict(cls, d: Dict[str, Any], bit_choices: Optional[Sequence[int]] = None) -> "NetworkStats":
        return cls(
            d["layer_names"],
            bit_choices if bit_choices is not None else d["bit_choices"],
            d["params"],
            d["macs"],
            d["tensors"],
            d["scalars"],
            d["meta"],
            d.get("extras"),
        )

    def __repr__(self) -> str:
        return (
            f"NetworkStats({len(self)} layers, bits={self.bit_choices}, hessian={self.has_hessian}, "
            f"{self.nbytes / 2**20:.1f} MiB)"
        )
