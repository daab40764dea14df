"""Which layers get quantized, in what order, and what each one costs (parameters, MACs).

The order is the order in which the layers *run* on one forward pass, found with hooks, not the order in
which they were registered: a network whose ``__init__`` declares its head before its stem still reports the
stem first, and a bit list maps to layers by that order (and by name, never by zipping two lists of
different lengths: the pitfall of the EMQ code).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
from torch import nn

from proxylab.errors import ProxylabError, network_errors
from proxylab.nets.hooks import measuring

QUANTIZABLE_TYPES = (nn.Conv2d, nn.Linear)


@dataclass(frozen=True)
class LayerInfo:
    """One quantizable layer.

    ``params`` follows MQ-Bench / EMQ's per-layer counts: the layer's weight and bias elements plus the affine
    parameters (weight and bias) of a BatchNorm that consumes the layer's output directly, i.e. the BN that a
    deployment folds into the layer. Examples from ResNet-18: stem conv 9408 + BN 128 = 9536; fc 512000 + bias
    1000 = 513000. ``weight_params`` is the weight alone. ``macs`` are multiply-accumulates per sample:
    output elements per sample times fan-in (conv: out_h*out_w*C_out*(C_in/groups)*kh*kw; linear: in*out,
    times tokens when applied per token), summed over calls if a layer runs more than once.
    """

    name: str
    kind: str  # "conv" or "linear"
    params: int
    macs: int
    weight_shape: Tuple[int, ...]
    weight_params: int = 0
    folded_bn: Optional[str] = None


def _trace(model: nn.Module, example_input: torch.Tensor):
    """One hooked forward pass (eval mode, no grad): execution order, MACs per sample and BN followers."""
    if not isinstance(example_input, torch.Tensor) or example_input.dim() < 1 or example_input.shape[0] < 1:
        raise ProxylabError("example_input must be a tensor with a batch dimension, e.g. calib_x[:1]")
    batch = example_input.shape[0]
    order: List[str] = []
    macs = {}
    produced_by = {}  # id(output tensor) -> layer name, to recognise the BN that reads a layer's output
    outputs_alive = []  # keep outputs referenced so their ids are not reused during the pass
    bn_of = {}
    modules = dict(model.named_modules())
    handles = []

    def layer_hook(name):
        def hook(module, inputs, output):
            if name not in macs:
                order.append(name)
                macs[name] = 0
            fan_in = module.weight[0].numel()
            macs[name] += (output.numel() // batch) * fan_in
            produced_by[id(output)] = name
            outputs_alive.append(output)

        return hook

    def bn_hook(bn_name):
        def hook(module, inputs):
            src = produced_by.get(id(inputs[0]))
            if src is not None and src not in bn_of and module.affine:
                bn_of[src] = bn_name

        return hook

    for name, m in modules.items():
        if isinstance(m, QUANTIZABLE_TYPES):
            handles.append(m.register_forward_hook(layer_hook(name)))
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            handles.append(m.register_forward_pre_hook(bn_hook(name)))
    # The first forward pass on a user's data: images the network cannot take (1-channel data for a 3-channel
    # net, another size) fail here, as one clear error instead of torch's traceback.
    explain = (lambda cause: f"{type(model).__name__} failed on the data's images of shape "
               f"{list(example_input.shape[1:])} ({cause}): give it data of the channels and size it was trained on "
               "(for a bench table, the data set `proxylab bench show NAME` names)")
    with measuring(model, handles), network_errors(explain):
        model(example_input)
    if not order:
        raise ProxylabError(
            "the network has no Conv2d or Linear layer that runs on a forward pass: nothing to quantize"
        )
    return order, macs, bn_of, modules


def quantizable_layers(model: nn.Module, example_input: torch.Tensor) -> List[Tuple[str, nn.Module]]:
    """Conv2d and Linear modules as (module name, module) in execution order (layers never run are left out)."""
    order, _, _, modules = _trace(model, example_input)
    return [(name, modules[name]) for name in order]


def layer_info(model: nn.Module, example_input: torch.Tensor) -> List[LayerInfo]:
    """Per-layer parameter counts, MACs per sample and weight shapes, in execution order."""
    order, macs, bn_of, modules = _trace(model, example_input)
    out = []
    for name in order:
        m = modules[name]
        weight_params = m.weight.numel()
        params = weight_params + (m.bias.numel() if m.bias is not None else 0)
        bn = bn_of.get(name)
        if bn is not None:
            params += modules[bn].weight.numel() + modules[bn].bias.numel()
        out.append(
            LayerInfo(
                name=name,
                kind="conv" if isinstance(m, nn.Conv2d) else "linear",
                params=int(params),
                macs=int(macs[name]),
                weight_shape=tuple(m.weight.shape),
                weight_params=int(weight_params),
                folded_bn=bn,
            )
        )
    return out
