"""The passes that produce per-layer statistics: activations + loss gradients, empirical Fisher, virtual
gradients (SynFlow-style), and Hessian summaries. Each function reads the model and never changes it.

All passes run the network in eval mode: the statistics describe the trained network as it will be
quantized and evaluated (BatchNorm on running statistics), and in eval mode each image's output is
independent of the rest of the batch, which is what makes per-sample gradients and the activation
subsample well defined.
"""
from __future__ import annotations

import copy
import math
from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from proxylab.stats.hessian import block_hvp, hutchinson_trace, power_iteration, rademacher

NamedLayers = Sequence[Tuple[str, nn.Module]]


@contextmanager
def eval_with_weight_grads(model: nn.Module, layers: NamedLayers) -> Iterator[None]:
    """Eval mode and requires_grad on the layer weights for the duration; the caller's flags come back."""
    was_training = model.training
    flags = [(m.weight, m.weight.requires_grad) for _, m in layers]
    model.eval()
    try:
        for w, _ in flags:
            w.requires_grad_(True)
        yield
    finally:
        for w, flag in flags:
            w.requires_grad_(flag)
        model.train(was_training)


def images_to_keep(per_image: int, act_images: int, act_max_elements: int) -> int:
    """How many leading images of a layer's output to keep: at most act_images, at most act_max_elements
    values in all, and always at least one image."""
    return max(1, min(act_images, act_max_elements // max(per_image, 1)))


def activations_and_grads(
    model: nn.Module, layers: NamedLayers, x: torch.Tensor, y: torch.Tensor, act_images: int, act_max_elements: int
) -> Tuple[List[torch.Tensor], List[torch.Tensor], float]:
    """One forward/backward of the mean cross-entropy; returns (acts, grads, loss).

    A layer called several times in one forward (shared module) keeps its first call's output.
    """
    acts: Dict[str, torch.Tensor] = {}

    def hook_for(name: str):
        def hook(_module, _inputs, output):
            if name not in acts and isinstance(output, torch.Tensor):
                keep = images_to_keep(output[0].numel(), act_images, act_max_elements)
                acts[name] = output[:keep].detach().to(torch.float32).clone()

        return hook

    handles = [m.register_forward_hook(hook_for(name)) for name, m in layers]
    try:
        with eval_with_weight_grads(model, layers):
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            weights = [m.weight for _, m in layers]
            grads = torch.autograd.grad(loss, weights, allow_unused=True)
    finally:
        for h in handles:
            h.remove()
    missing = [name for name, _ in layers if name not in acts]
    if missing:
        raise RuntimeError(f"layers {missing} were not called in the forward pass")
    out_grads = [torch.zeros_like(w) if g is None else g.detach().clone() for w, g in zip(weights, grads)]
    return [acts[name] for name, _ in layers], out_grads, float(loss.detach())


def empirical_fisher(
    model: nn.Module, layers: NamedLayers, x: torch.Tensor, y: torch.Tensor, chunk: int
) -> Tuple[List[torch.Tensor], str]:
    """sum_i (dL_i/dW)^2 over the samples i, L_i the cross-entropy of sample i alone; returns (fisher, method).

    Per-sample gradients come from torch.func (vmap over grad), ``chunk`` samples at a time so memory stays
    at chunk x (number of weights). Models torch.func cannot trace fall back to one backward per sample.
    """
    weight_names = [f"{name}.weight" for name, _ in layers]
    with eval_with_weight_grads(model, layers):
        try:
            return _fisher_vmap(model, weight_names, x, y, chunk), "vmap"
        except (RuntimeError, NotImplementedError):  # e.g. data-dependent control flow in forward
            return _fisher_loop(model, layers, x, y), "loop"


def _fisher_vmap(model: nn.Module, weight_names: List[str], x, y, chunk: int) -> List[torch.Tensor]:
    from torch.func import functional_call, grad, vmap

    state = {n: t.detach() for n, t in model.named_parameters()}
    state.update({n: t for n, t in model.named_buffers()})
    weights = {n: state[n] for n in weight_names}

    def sample_loss(ws, xi, yi):
        merged = dict(state)
        merged.update(ws)
        logits = functional_call(model, merged, (xi.unsqueeze(0),))
        return F.cross_entropy(logits, yi.unsqueeze(0))

    per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0))
    fisher = {n: torch.zeros_like(w) for n, w in weights.items()}
    for start in range(0, len(x), chunk):
        g = per_sample(weights, x[start:start + chunk], y[start:start + chunk])
        for n in weight_names:
            fisher[n] += g[n].pow(2).sum(0)
    return [fisher[n] for n in weight_names]


def _fisher_loop(model: nn.Module, layers: NamedLayers, x, y) -> List[torch.Tensor]:
    weights = [m.weight for _, m in layers]
    fisher = [torch.zeros_like(w) for w in weights]
    for i in range(len(x)):
        loss = F.cross_entropy(model(x[i:i + 1]), y[i:i + 1])
        grads = torch.autograd.grad(loss, weights, allow_unused=True)
        for f, g in zip(fisher, grads):
            if g is not None:
                f += g.detach().pow(2)
    return fisher


def _linearize_(model: nn.Module) -> None:
    """SynFlow's positive linearization: every affine map of the network gets its absolute value.

    Plain parameters become |p|. An eval-mode BatchNorm is the affine map s*x + t with
    s = gamma / sqrt(var + eps) and t = beta - s * mean; it becomes |s|*x + |t| (taking |gamma|, |beta|,
    |mean| separately would not make the map positive, because of the subtracted mean).
    """
    with torch.no_grad():
        for module in model.modules():
            if not isinstance(module, nn.modules.batchnorm._BatchNorm) or module.running_var is None:
                continue
            s = torch.rsqrt(module.running_var + module.eps)
            if module.weight is not None:
                s = s * module.weight
            t = -s * module.running_mean
            if module.bias is not None:
                t = t + module.bias
            if module.weight is not None and module.bias is not None:
                module.bias.copy_(t.abs())
                module.running_mean.zero_()
            else:  # no shift parameter: encode |t| in the mean, (x - m) * |s| = |s| x + |t|
                module.running_mean.copy_(-t.abs() / s.abs().clamp_min(1e-30))
        for p in model.parameters():
            p.abs_()


def _relu_for_bounded_(model: nn.Module) -> None:
    """ReLU6 / Hardtanh modules -> ReLU, in place (on the linearized copy only)."""
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Hardtanh):  # nn.ReLU6 is a Hardtanh(0, 6)
                setattr(module, child_name, nn.ReLU())


def has_bounded_activation(model: nn.Module) -> bool:
    """True when the network has a ReLU6/Hardtanh module, whose SynFlow gradient the ReLU substitution changes.

    Modules only: a functional F.relu6 inside a forward, or another saturating module (Hardsigmoid), is neither
    detected nor substituted, and its layers' SynFlow gradient can still vanish."""
    return any(isinstance(m, nn.Hardtanh) for m in model.modules())


def synflow_grads(
    model: nn.Module, layers: NamedLayers, input_shape: Sequence[int]
) -> Tuple[List[torch.Tensor], List[Optional[torch.Tensor]]]:
    """(|W| float64, dW float64 or None) of sum(logits) * batch for an all-ones input, SynFlow's way.

    On a float64 copy with positive-linearized weights (see _linearize_), so no path cancels another and the
    values measure how much signal flows through each weight. Bounded activations (MobileNetV2's ReLU6)
    become ReLUs: on the linearized network every pre-activation grows past 6, so a ReLU6 saturates and
    kills the gradient of every layer below it (measured: 52 of 53 MobileNetV2 layers exactly zero, even in
    float64), while SynFlow's linearization assumes ReLUs, the identity on that all-positive network.
    In eval mode every image of an all-ones batch is the same, so the batch gradient is exactly
    batch_size x the one-image gradient: one image is run and the result scaled.
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
    return [w.detach() for w in weights], [None if g is None else g.detach() for g in grads]


def virtual_grads(
    model: nn.Module, layers: NamedLayers, input_shape: Sequence[int], mode: str
) -> Tuple[List[torch.Tensor], int]:
    """dW of sum(logits) for an all-ones input of ``input_shape`` (the batch's shape).

    mode "synflow": see synflow_grads (float64, positive-linearized, bounded activations as ReLUs).
    mode "plain": on the float32 network as it is.

    Returns (grads, log2_scale). A linearized deep network's values grow with depth (1e23 for a ResNet-20
    at initialisation) and their squares would leave float32's range; above 2**60 every layer is divided by
    the same power of two 2**log2_scale (recorded in the stats' meta), which keeps the ratios between
    weights and layers exactly and changes no rank a scale-free proxy gives.
    """
    if mode == "synflow":
        weights, grads = synflow_grads(model, layers, input_shape)
    elif mode == "plain":
        batch = int(input_shape[0])
        one = (1,) + tuple(int(s) for s in input_shape[1:])
        with eval_with_weight_grads(model, layers):
            out = model(torch.ones(one, dtype=torch.float32))
            weights = [m.weight for _, m in layers]
            grads = torch.autograd.grad(out.sum() * batch, weights, allow_unused=True)
    else:
        raise ValueError(f"unknown virtual gradient mode {mode!r}")
    grads = [torch.zeros_like(w) if g is None else g.detach() for w, g in zip(weights, grads)]
    peak = max((float(g.abs().max()) for g in grads if g.numel()), default=0.0)
    log2_scale = 0
    if peak > 2.0**60:  # squares of what is kept stay inside float32's 2**128, so proxies may square or sum
        log2_scale = math.ceil(math.log2(peak)) - 60  # peak may exceed float32 (4e42 on MobileNetV2)
        grads = [torch.ldexp(g, torch.tensor(-log2_scale, dtype=torch.int64)) for g in grads]
    return [g.to(torch.float32) for g in grads], log2_scale


def hessian_scalars(
    model: nn.Module,
    layers: NamedLayers,
    x: torch.Tensor,
    y: torch.Tensor,
    probes: int,
    iters: int,
    tol: float,
    seed: int,
    trace_mode: str = "block",
) -> Tuple[List[float], List[float], List[float], List[int]]:
    """Per layer: Hutchinson estimate of tr(H_ll), its standard error, the dominant eigenvalue of H_ll and
    the number of power iterations it took,
    where H_ll is the block of the mean cross-entropy's Hessian for that layer's weight alone.

    One forward and one create_graph backward serve every product. Traces:
      "block" (default): each layer gets its own probes and products H_ll v_l (cost: layers x probes
        products, each a backward from that layer on).
      "joint": each probe is a Rademacher vector over all layers at once and one full product H v gives
        every layer's v_l . (H v)_l. Its mean is tr(H_ll) exactly (the cross-block terms v_l . H_lk v_k
        have mean zero) for one product per probe for the whole network, but those cross terms add
        variance that can swamp small blocks; the reported standard error includes it.
    The eigenvalue needs the block itself, so power iteration always runs layer by layer, its start
    vector drawn from a generator seeded per layer index.
    """
    traces: List[float] = []
    errors: List[float] = []
    eigs: List[float] = []
    used: List[int] = []
    with eval_with_weight_grads(model, layers):
        loss = F.cross_entropy(model(x), y)
        weights = [m.weight for _, m in layers]
        grads = [torch.zeros_like(w) if g is None else g
                 for w, g in zip(weights, torch.autograd.grad(loss, weights, create_graph=True, allow_unused=True))]
        if trace_mode == "joint":
            traces, errors = _joint_traces(grads, weights, probes, torch.Generator().manual_seed(seed))
        elif trace_mode != "block":
            raise ValueError(f"unknown trace mode {trace_mode!r}")
        for l, (w, g) in enumerate(zip(weights, grads)):
            hvp = block_hvp(g, w)
            gen = torch.Generator().manual_seed(seed * 1_000_003 + l)
            if trace_mode == "block":
                tr, err = hutchinson_trace(hvp, w.shape, probes, gen)
                traces.append(tr)
                errors.append(err)
            eig, steps = power_iteration(hvp, w.shape, iters, tol, gen)
            eigs.append(eig)
            used.append(steps)
        del grads, loss
    return traces, errors, eigs, used


def _joint_traces(grads, weights, probes: int, gen: torch.Generator) -> Tuple[List[float], List[float]]:
    live = [i for i, g in enumerate(grads) if g.requires_grad]
    samples = torch.zeros(probes, len(weights), dtype=torch.float64)
    for p in range(probes):
        vs = [rademacher(w.shape, gen) for w in weights]
        if live:
            hvs = torch.autograd.grad([grads[i] for i in live], [weights[i] for i in live],
                                      grad_outputs=[vs[i] for i in live], retain_graph=True, allow_unused=True)
            for i, hv in zip(live, hvs):
                if hv is not None:
                    samples[p, i] = float((vs[i] * hv).sum())
    means = samples.mean(0)
    stderr = samples.std(0, unbiased=True) / probes**0.5 if probes > 1 else torch.zeros(len(weights))
    return [float(m) for m in means], [float(e) for e in stderr]
