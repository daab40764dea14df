"""A network that switches between mixed-precision bit configurations in place, cheaply.

Building an MQ-Bench table means scoring hundreds of configurations of one network. Everything that does
not depend on the configuration is done once here: activation ranges are calibrated, and every layer's
weight (and, for bias correction, bias) is quantized at every bit choice ahead of time. ``apply`` is then a
``copy_`` of precomputed tensors into the layers whose bits changed: no deepcopy, no re-quantization.
"""
from __future__ import annotations

import copy
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from proxylab.errors import ProxylabError
from proxylab.quant.buffers import BufferPool
from proxylab.quant.cost import bitops as _bitops
from proxylab.quant.cost import size_mb as _size_mb
from proxylab.quant.fold import fold_batchnorms
from proxylab.quant.layers import LayerInfo, layer_info
from proxylab.quant.protocols import Protocol, get_protocol
from proxylab.quant.quantizers import ActQuantizer, check_bits, quantize_weight

FLOAT_BITS = 32  # what BitOps counts for activations left in float (act_bits=None)


def _preview(names: Sequence[str], k: int = 24) -> str:
    return ", ".join(names) if len(names) <= k else ", ".join(names[:k]) + f", ... {names[-1]}"


class QuantizedNetwork:
    """A private copy of ``model`` whose layers can be set to any per-layer weight bit configuration.

    Args:
        model: the float network (left untouched: a copy is quantized).
        calib_x: calibration images; the first ``calib_size`` (256) set the activation ranges and, for
            bias correction, each layer's mean input.
        bit_choices: weight bit-widths quantized ahead of time; other bits in 1..16 are quantized on first use.
        act_bits: bits of every quantizable layer's input (per-tensor min-max); None keeps activations float.
        protocol: a name from ``PROTOCOLS`` ("rtn", "mse", "bias_correction") or a ``Protocol``.
        per_channel: per-output-channel weight scales (default) or one scale per tensor.
        channels_last: run convolutions in channels-last memory format (default: when the network has a
            Conv2d and runs on the CPU; ResNet-20 at 28px measured 1.3x faster end to end).
        fold_bn: fold each BatchNorm into the conv before it (default), so the weights quantized are the
            deployed ones; per-channel quantization commutes with the fold, and the folded network runs faster.
    ``params``/``macs`` count the network as given (BN parameters included in their conv's count).
    Inference (no autograd) writes each quantized layer input into a pooled tensor reused from pass to pass
    (``proxylab.quant.buffers``): a few layer inputs' worth of memory is kept per batch shape in use.
    One QuantizedNetwork serves one thread at a time (``apply`` changes it in place anyway).
    """

    def __init__(
        self,
        model: nn.Module,
        calib_x: torch.Tensor,
        bit_choices: Sequence[int] = (2, 3, 4),
        act_bits: Optional[int] = 8,
        protocol: Union[str, Protocol] = "rtn",
        per_channel: bool = True,
        calib_size: int = 256,
        device: str = "cpu",
        channels_last: Optional[bool] = None,
        calib_batch_size: int = 64,
        fold_bn: bool = True,
    ):
        self.protocol = get_protocol(protocol)
        self.bit_choices = tuple(check_bits(b, "bit choice") for b in bit_choices)
        self.act_bits = None if act_bits is None else check_bits(act_bits, "act_bits")
        self.per_channel = bool(per_channel)
        self.device = torch.device(device)
        if not isinstance(calib_x, torch.Tensor) or calib_x.dim() < 2 or len(calib_x) == 0:
            raise ProxylabError("calib_x must be a non-empty tensor of calibration inputs [N, ...]")
        if int(calib_size) < 1:
            raise ProxylabError(f"calib_size must be >= 1 image, got {calib_size}")
        calib_x = calib_x[:calib_size].to(self.device)

        self.model = copy.deepcopy(model).to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.info: List[LayerInfo] = layer_info(self.model, calib_x[:1])
        modules = dict(self.model.named_modules())
        self.layer_names: List[str] = [i.name for i in self.info]
        self.layers: List[nn.Module] = [modules[n] for n in self.layer_names]
        self.params = np.array([i.params for i in self.info], dtype=np.int64)
        self.macs = np.array([i.macs for i in self.info], dtype=np.int64)
        self.folded_bn: List[str] = fold_batchnorms(self.model, self.info, calib_x[:16]) if fold_bn else []
        if channels_last is None:
            channels_last = self.device.type == "cpu" and any(isinstance(m, nn.Conv2d) for m in self.layers)
        self.channels_last = bool(channels_last)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

        if self.protocol.bias_correction:
            for m in self.layers:  # a bias-free layer gets a zero bias to carry the correction
                if m.bias is None:
                    m.bias = nn.Parameter(torch.zeros(m.weight.shape[0], device=self.device), requires_grad=False)
        self._float_w = [m.weight.detach().clone() for m in self.layers]
        self._float_b = [None if m.bias is None else m.bias.detach().clone() for m in self.layers]
        self._act_q: List[Optional[ActQuantizer]] = [None] * len(self.layers)
        self._mean_in: List[Optional[torch.Tensor]] = [None] * len(self.layers)
        self._calibrate(calib_x, calib_batch_size)

        self._levels: List[Dict[int, Tuple[torch.Tensor, Optional[torch.Tensor]]]] = [{} for _ in self.layers]
        for i in range(len(self.layers)):
            for b in self.bit_choices:
                self._level(i, b)
        self._act_on = False
        self._current: List[Optional[int]] = [None] * len(self.layers)  # None = float weights in place
        # Layers that read the same tensor (a block's first conv and its downsample conv) were calibrated on
        # the same values, so they share one quantized copy per forward pass instead of quantizing twice.
        self._shared: Dict[int, Tuple[torch.Tensor, Tuple[float, int, int], torch.Tensor, int]] = {}
        # Quantized inputs are written into pooled tensors (no page faults per pass, see buffers.py). A layer's
        # buffer goes back to the pool once the layer has run ("lent"), unless another layer reuses it in the
        # same pass ("held" until the pass ends). _producers: the layers whose quantized input another layer
        # reused on the probe batch; None while unknown (then every shared copy is held).
        self._pool = BufferPool()
        self._lent: List[torch.Tensor] = []
        self._held: List[torch.Tensor] = []
        self._producers: Optional[set] = None
        self._reused: set = set()
        self._hooks = [self.model.register_forward_pre_hook(lambda *_: self._end_pass(trim=False)),
                       self.model.register_forward_hook(lambda *_: self._end_pass(trim=True))]
        self._hooks += [m.register_forward_pre_hook(self._act_hook(i)) for i, m in enumerate(self.layers)]
        self._hooks += [m.register_forward_hook(self._release_lent) for m in self.layers]
        self._share = self.act_bits is not None and self._sharing_is_exact(calib_x[:16])

    # ---- calibration and precomputation -------------------------------------------------------------
    def _calibrate(self, calib_x: torch.Tensor, batch_size: int) -> None:
        sums = [None] * len(self.layers)
        counts = [0] * len(self.layers)
        if self.act_bits is not None:
            self._act_q = [ActQuantizer(self.act_bits) for _ in self.layers]
        need_mean = self.protocol.bias_correction

        def observe(i):
            def hook(module, inputs):
                x = inputs[0]
                if self.act_bits is not None:
                    self._act_q[i].observe(x)
                if need_mean:
                    # Batch (and token) mean of the input: a linear layer's mean output is the layer applied
                    # to it, so the bias shift of every bit choice later costs one small forward call.
                    flat = x.reshape(-1, x.shape[-1]) if isinstance(module, nn.Linear) else x
                    s = flat.sum(dim=0, dtype=torch.float64)
                    sums[i] = s if sums[i] is None else sums[i] + s
                    counts[i] += flat.shape[0]

            return hook

        handles = [m.register_forward_pre_hook(observe(i)) for i, m in enumerate(self.layers)]
        try:
            with torch.inference_mode():
                for start in range(0, len(calib_x), batch_size):
                    self.model(self._prep(calib_x[start : start + batch_size]))
        finally:
            for h in handles:
                h.remove()
        if need_mean:
            self._mean_in = [(s / c).float() for s, c in zip(sums, counts)]

    def _level(self, i: int, bits: int) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Layer i's (weight, bias) at ``bits``, computed on first request and kept."""
        cached = self._levels[i].get(bits)
        if cached is not None:
            return cached
        w = self._float_w[i]
        qw = quantize_weight(w, bits, per_channel=self.per_channel, clip=self.protocol.clip)
        qw = torch.empty_like(w).copy_(qw)  # same memory format as the live parameter: copy_ stays a memcpy
        qb = self._float_b[i]
        if self.protocol.bias_correction:
            qb = qb - self._output_shift(i, qw - w)
        self._levels[i][bits] = (qw, qb)
        return qw, qb

    def _output_shift(self, i: int, delta_w: torch.Tensor) -> torch.Tensor:
        """E[(Q(W) - W) x] per output channel over the calibration inputs (float upstream layers)."""
        m, mean_x = self.layers[i], self._mean_in[i]
        with torch.inference_mode():
            if isinstance(m, nn.Linear):
                return torch.nn.functional.linear(mean_x, delta_w)
            # The conv is linear in its input, so the mean over images and positions of conv(x, dW) is the
            # spatial mean of conv(mean image, dW), with the layer's own padding, stride, groups, dilation.
            out = m._conv_forward(mean_x.unsqueeze(0), delta_w.contiguous(), None)
            return out.mean(dim=(0, 2, 3))

    def _act_hook(self, i: int):
        def hook(module, inputs):
            q = self._act_q[i]
            if not self._act_on or q is None:
                return None
            x, key = inputs[0], (q.scale, q.zero_point, q.bits)
            seen = self._shared.get(id(x)) if self._share else None
            if seen is not None and seen[0] is x and seen[1] == key:
                self._reused.add(seen[3])
                return (seen[2],) + tuple(inputs[1:])
            # Autograd keeps a layer's input for the backward pass: reuse buffers only when it records nothing.
            buf = None if torch.is_grad_enabled() or x.device.type != "cpu" else self._pool.take(x)
            out = q(x, out=buf)
            if self._share and (self._producers is None or i in self._producers):
                self._shared[id(x)] = (x, key, out, i)  # holding x keeps its id from being reused in this pass
                if buf is not None:
                    self._held.append(buf)
            elif buf is not None:
                self._lent.append(buf)
            return (out,) + tuple(inputs[1:])

        return hook

    def _release_lent(self, *_) -> None:
        """After a layer ran: its quantized input is read by nobody else, so the buffer can serve the next."""
        for buf in self._lent:
            self._pool.give(buf)
        self._lent.clear()

    def _end_pass(self, trim: bool) -> None:
        """At both ends of a forward pass (the start too, in case the last pass raised midway)."""
        self._shared.clear()
        self._release_lent()
        for buf in self._held:
            self._pool.give(buf)
        self._held.clear()
        if trim:
            self._pool.end_pass()

    def _sharing_is_exact(self, probe: torch.Tensor) -> bool:
        """A network that changed a tensor in place between two of its readers would make the shared copy
        stale: keep sharing only if it leaves the output bit-identical on a probe batch. The shared pass also
        records which layers' copies are reused, so only those are held for the rest of a pass."""
        self._act_on = True
        try:
            self._share = False
            alone = self.predict(probe)
            self._share, self._producers = True, None
            self._reused.clear()
            exact = torch.equal(self.predict(probe), alone)
            self._producers = set(self._reused)
            return exact
        finally:
            self._act_on = False

    # ---- configurations ----------------------------------------------------------------------------
    def check_config(self, bits: Sequence[int]) -> List[int]:
        """Validate one configuration: one integer in 1..16 per layer, in ``layer_names`` order."""
        arr = np.asarray(bits.tolist() if isinstance(bits, torch.Tensor) else bits, dtype=object)
        if arr.ndim != 1 or len(arr) != len(self.layers):
            got = f"{len(arr)}" if arr.ndim == 1 else f"shape {arr.shape}"
            raise ProxylabError(
                f"expected {len(self.layers)} bit-widths, one per quantizable layer in execution order "
                f"({_preview(self.layer_names)}); got {got}"
            )
        return [check_bits(b, f"bit-width of layer {n}") for b, n in zip(arr.tolist(), self.layer_names)]

    def apply(self, bits: Sequence[int]) -> None:
        """Quantize the network to ``bits`` (one weight bit-width per layer) in place; activations at act_bits."""
        cfg = self.check_config(bits)
        with torch.no_grad():
            for i, b in enumerate(cfg):
                if self._current[i] != b:
                    qw, qb = self._level(i, b)
                    self._set(i, qw, qb)
                    self._current[i] = b
        self._act_on = self.act_bits is not None

    def restore_float(self) -> None:
        """Float weights and float activations: the original network's function."""
        with torch.no_grad():
            for i in range(len(self.layers)):
                if self._current[i] is not None:
                    self._set(i, self._float_w[i], self._float_b[i])
                    self._current[i] = None
        self._act_on = False

    def _set(self, i: int, w: torch.Tensor, b: Optional[torch.Tensor]) -> None:
        m = self.layers[i]
        m.weight.copy_(w)
        if b is not None:
            m.bias.copy_(b)

    @property
    def current_bits(self) -> Optional[Tuple[int, ...]]:
        """The applied configuration, or None while float weights are in place."""
        return None if any(b is None for b in self._current) else tuple(self._current)

    # ---- inference ----------------------------------------------------------------------------------
    def _prep(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def predict(self, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
        """Logits of the network as currently configured, on the CPU."""
        outs = []
        with torch.inference_mode():
            for start in range(0, len(x), batch_size):
                outs.append(self.model(self._prep(x[start : start + batch_size])).float().cpu())
        return torch.cat(outs)

    def evaluate(self, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> float:
        """Top-1 accuracy in [0, 1] of the network as currently configured."""
        if len(x) != len(y) or len(x) == 0:
            raise ProxylabError(f"evaluate needs as many labels as inputs (> 0), got {len(x)} and {len(y)}")
        correct = 0
        y = y.to(self.device)
        with torch.inference_mode():
            for start in range(0, len(x), batch_size):
                logits = self.model(self._prep(x[start : start + batch_size]))
                correct += int((logits.argmax(dim=1) == y[start : start + batch_size]).sum())
        return correct / len(x)

    # ---- cost ---------------------------------------------------------------------------------------
    def size_mb(self, bits) -> Union[float, np.ndarray]:
        """Weight size in MiB of one configuration [L] or many [N, L] (see ``proxylab.quant.size_mb``)."""
        return _size_mb(self.params, bits)

    def bitops(self, bits) -> Union[float, np.ndarray]:
        """sum MACs * w_bits * a_bits (a_bits = act_bits, or 32 with float activations)."""
        return _bitops(self.macs, bits, FLOAT_BITS if self.act_bits is None else self.act_bits)

    def layer_table(self, bits: Optional[Sequence[int]] = None) -> List[dict]:
        """One row per layer: name, kind, params, MACs, weight shape and (if given) its bits."""
        cfg = self.check_config(bits) if bits is not None else None
        rows = []
        for i, inf in enumerate(self.info):
            row = {"layer": inf.name, "kind": inf.kind, "params": inf.params, "macs": inf.macs,
                   "weight_shape": "x".join(map(str, inf.weight_shape))}
            if cfg is not None:
                row["bits"] = cfg[i]
            rows.append(row)
        return rows

    def __len__(self) -> int:
        return len(self.layers)

    def __repr__(self) -> str:
        return (f"QuantizedNetwork({len(self.layers)} layers, protocol={self.protocol.name}, "
                f"bit_choices={self.bit_choices}, act_bits={self.act_bits}, per_channel={self.per_channel})")
