"""Statistics added after the first stats format, for two known proxies that the original tensors serve badly.
They live in a side cache entry, so every existing entry, and every proxy computed from it, stays as it was.

- ``gram``: per layer, G_l = X_l X_l^T [n, n] float64, X_l the layer's output flattened per image, over ALL
  n images of the calibration batch. OMPQ compares layers through such Gram matrices. The ``act`` tensor keeps
  only a few images per layer to bound memory (two on ResNet-20's 28x28 first layers: too few for a
  similarity), whereas a Gram matrix is n x n whatever the layer's size.
- ``synflow_log``: per layer, log(params * mean |V * W|) in float64 (natural log; -inf for a zero saliency),
  V the SynFlow virtual gradient. The ``virtual_grad`` tensor is computed through the network's own
  activations; a bounded one (MobileNetV2's ReLU6) saturates on the positive-linearized network, whose
  pre-activations all grow past 6, and kills the gradient of every layer below it (measured: 52 of 53
  layers exactly zero, even in float64). SynFlow's linearization assumes ReLUs, which are the identity on
  that network, so here ReLU6/Hardtanh modules become ReLUs. Kept as a log, so a deep network's range
  (1e23 on ResNet-20) never overflows or underflows on its way to a proxy.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from proxylab.stats import cache as stats_cache
from proxylab.stats.collect import _linearize_, eval_with_weight_grads
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


def _relu_for_bounded_(model: nn.Module) -> None:
    """ReLU6 / Hardtanh modules -> ReLU, in place (on the linearized copy only)."""
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Hardtanh):  # nn.ReLU6 is a Hardtanh(0, 6)
                setattr(module, child_name, nn.ReLU())


def synflow_log_saliency(model: nn.Module, layers: NamedLayers, input_shape: Sequence[int],
                         params: Sequence[int]) -> List[float]:
    """log(params_l * mean |V_l * W_l|) per layer, float64, SynFlow's linearization with ReLUs (see module doc).

    V = dW of sum(logits) * batch for an all-ones input (one image run and scaled, as ``virtual_grads``).
    """
    batch = int(input_shape[0])
    one = (1,) + tuple(int(s) for s in input_shape[1:])
    work = copy.deepcopy(model).to(torch.float64)
    _linearize_(work)
    _relu_for_bounded_(work)
    names = dict(work.named_modules())
    work_layers = [(name, names[name]) for name, _ in layers]
    with eval_with_weight_grads(work, work_layers):
        out = work(torch.ones(one, dtype=torch.float64))
        weights = [m.weight for _, m in work_layers]
        grads = torch.autograd.grad(out.sum() * batch, weights, allow_unused=True)
    logs = []
    for w, g, p in zip(weights, grads, params):
        if g is None:
            logs.append(-math.inf)
            continue
        s = (g.detach().abs() * w.detach().abs()).mean()
        logs.append(math.log(float(s)) + math.log(int(p)) if float(s) > 0 and int(p) > 0 else -math.inf)
    return logs


def compute_extras(model: nn.Module, layers: NamedLayers, xb: torch.Tensor, params: Sequence[int]) -> Dict[str, Any]:
    return {"gram": output_grams(model, layers, xb),
            "synflow_log": torch.tensor(synflow_log_saliency(model, layers, tuple(xb.shape), params),
                                        dtype=torch.float64)}


def load_or_compute(model: nn.Module, layers: NamedLayers, xb: torch.Tensor, params: Sequence[int],
                    folder: Optional[Path], key: str) -> Dict[str, Any]:
    """The extras of the stats entry ``key``: from their own cache entry (``folder/extras/``) when present,
    else computed (and stored there). Cheap: one forward pass over the batch and one float64 pass of a single image."""
    extras_key = stats_cache.cache_key({"extras_of": key, "version": EXTRAS_VERSION})
    folder = None if folder is None else Path(folder) / "extras"  # the main folder keeps main entries only
    if folder is not None:
        hit = stats_cache.load_entry(folder, extras_key)
        if hit is not None and set(EXTRA_KEYS) <= set(hit.get("extras", {})):
            return dict(hit["extras"])
    extras = compute_extras(model, layers, xb, params)
    if folder is not None:
        stats_cache.save_entry(folder, extras_key, {"layer_names": [n for n, _ in layers],
                                                    "meta": {"key": extras_key, "extras_of": key},
                                                    "extras": extras})
    return extras
