"""Statistics added after the first stats format, for two known proxies that the original tensors serve badly.
They live in a side cache entry, so every existing entry, and every proxy computed from it, stays as it was.

- ``gram``: per layer, G_l = X_l X_l^T [n, n] float64, X_l the layer's output flattened per image, over ALL
  n images of the calibration batch. OMPQ compares layers through such Gram matrices. The ``act`` tensor keeps
  only a few images per layer to bound memory (two on ResNet-20's 28x28 first layers: too few for a
  similarity), whereas a Gram matrix is n x n whatever the layer's size.
- ``synflow_log``: per layer, log(params * mean |V * W|) in float64 (natural log; -inf for a zero saliency),
  V the SynFlow virtual gradient (collect.synflow_grads: bounded activations such as ReLU6 count as ReLUs).
  Kept as a log, so a deep network's range (1e23 on ResNet-20) never overflows or underflows on its way to
  a proxy, where the ``virtual_grad`` tensor is rounded to float32 and rescaled.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from proxylab.stats import cache as stats_cache
from proxylab.stats.collect import synflow_grads
from proxylab.nets.hooks import measuring

# Bump when what an extras entry holds changes.
EXTRAS_VERSION = 1
EXTRA_KEYS = ("gram", "synflow_log")
NamedLayers = Sequence[Tuple[str, nn.Module]]


def output_grams(model: nn.Module, layers: NamedLayers, x: torch.Tensor) -> List[torch.Tensor]:
    """G_l = X_l X_l^T (float64) over every image of x: one forward pass, eval mode, no grad; each layer's
    output is reduced to its n x n Gram matrix inside the hook, so no output outlives its layer.

    A layer called several times in one forward keeps its first call's output (as ``act`` does).
    """
    grams: Dict[int, torch.Tensor] = {}

    def hook_for(i: int):
        def hook(_module, _inputs, output):
            if i not in grams and isinstance(output, torch.Tensor):
                flat = output.detach().reshape(output.shape[0], -1).to(torch.float64)
                grams[i] = flat @ flat.T

        return hook

    with measuring(model, [m.register_forward_hook(hook_for(i)) for i, (_, m) in enumerate(layers)]):
        model(x)
    missing = [name for i, (name, _) in enumerate(layers) if i not in grams]
    if missing:
        raise RuntimeError(f"layers {missing} were not called in the forward pass")
    return [grams[i] for i in range(len(layers))]


def synflow_log_saliency(model: nn.Module, layers: NamedLayers, input_shape: Sequence[int],
                         params: Sequence[int]) -> List[float]:
    """log(params_l * mean |V_l * W_l|) per layer, float64, from collect.synflow_grads (SynFlow's
    linearization, bounded activations as ReLUs) before any float32 rounding or rescaling."""
    weights, grads = synflow_grads(model, layers, input_shape)
    return synflow_logs_from(weights, grads, params)


def synflow_logs_from(weights, grads, params: Sequence[int]) -> List[float]:
    """log(params_l * mean |V_l * W_l|) per layer in float64 (-inf for a zero saliency or a missing V)."""
    logs = []
    for w, g, p in zip(weights, grads, params):
        s = 0.0 if g is None else float((g.to(torch.float64).abs() * w.to(torch.float64).abs()).mean())
        logs.append(math.log(s) + math.log(int(p)) if s > 0 and int(p) > 0 else -math.inf)
    return logs


def compute_extras(model: nn.Module, layers: NamedLayers, xb: torch.Tensor, params: Sequence[int]) -> Dict[str, Any]:
    return {"gram": output_grams(model, layers, xb),
            "synflow_log": torch.tensor(synflow_log_saliency(model, layers, tuple(xb.shape), params),
                                        dtype=torch.float64)}


def load_or_compute(model: nn.Module, trace_layers: Callable[[], NamedLayers], xb: torch.Tensor,
                    params: Sequence[int], folder: Optional[Path], key: str) -> Dict[str, Any]:
    """The extras of the stats entry ``key``: from their own cache entry (``folder/extras/``) when present,
    else computed (and stored there) on the layers ``trace_layers()`` returns, called only then. Cheap: one
    forward pass over the batch and one float64 pass of a single image."""
    extras_key = stats_cache.cache_key({"extras_of": key, "version": EXTRAS_VERSION})
    folder = None if folder is None else Path(folder) / "extras"  # the main folder keeps main entries only
    if folder is not None:
        hit = stats_cache.load_entry(folder, extras_key)
        if hit is not None and set(EXTRA_KEYS) <= set(hit.get("extras", {})):
            return dict(hit["extras"])
    layers = trace_layers()
    extras = compute_extras(model, layers, xb, params)
    if folder is not None:
        stats_cache.save_entry(folder, extras_key, {"layer_names": [n for n, _ in layers],
                                                    "meta": {"key": extras_key, "extras_of": key},
                                                    "extras": extras})
    return extras
