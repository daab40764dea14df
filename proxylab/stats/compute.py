"""compute_stats: every per-layer statistic a proxy reads, for one model and one calibration batch, cached."""
from __future__ import annotations

import copy
import os
import time
import warnings
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn

from proxylab.errors import ProxylabError, require
from proxylab.stats import cache as stats_cache
from proxylab.stats import extras as stats_extras
from proxylab.stats.collect import (activations_and_grads, empirical_fisher, has_bounded_activation, hessian_scalars,
                                    virtual_grads)
from proxylab.stats.network_stats import NetworkStats
from proxylab.nets.hooks import measuring

VIRTUAL_MODES = ("synflow", "plain")
TRACE_MODES = ("joint", "block")
# Per-sample gradients are made at most this many bytes (chunk x weights x 4 bytes) and samples at a time:
# vmap over larger chunks is memory-bound on the CPU (ResNet-20: 64 samples at once 6x slower than 8).
FISHER_CHUNK_BYTES = 256 * 2**20
FISHER_MAX_CHUNK = 8
_DEFAULT = object()


def default_cache_dir() -> Path:
    """$PROXYLAB_CACHE/stats, or ~/.cache/proxylab/stats when the variable is unset."""
    from proxylab.utils import cache_root

    return cache_root() / "stats"


def _validate_bits(bit_choices: Sequence[int]) -> tuple:
    try:
        bits = tuple(int(b) for b in bit_choices)
    except (TypeError, ValueError):
        raise ProxylabError(f"bit_choices must be integers such as (2, 3, 4), got {bit_choices!r}") from None
    require(len(bits) > 0, "bit_choices is empty: give the weight bit-widths to score, e.g. (2, 3, 4)")
    bad = [b for b in bits if not 1 <= b <= 16]
    require(not bad, f"bit_choices {bad} are outside 1..16: use bit-widths such as (2, 3, 4)")
    require(len(set(bits)) == len(bits), f"bit_choices {bits} repeat a value: list each bit-width once")
    return bits


def _positive_int(name: str, value: Any) -> int:
    require(isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1,
            f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _calibration_batch(x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int):
    """A seeded random subset of batch_size samples (all of them when fewer exist), in draw order."""
    require(isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor),
            f"x and y must be torch tensors, got {type(x).__name__} and {type(y).__name__}")
    require(x.dim() >= 2, f"x must be a batch [N, ...] of inputs, got shape {tuple(x.shape)}")
    require(y.dim() == 1 and len(y) == len(x),
            f"y must be [N] labels matching x's {len(x)} samples, got shape {tuple(y.shape)}")
    require(len(x) > 0, "x is empty: give at least one calibration sample")
    require(x.is_floating_point(), f"x must hold floating-point inputs, got {x.dtype}")
    require(not y.is_floating_point() and not y.is_complex(), f"y must hold integer class labels, got {y.dtype}")
    gen = torch.Generator().manual_seed(int(seed))
    idx = torch.randperm(len(x), generator=gen)[: min(batch_size, len(x))]
    return x[idx].detach().to("cpu", torch.float32).contiguous(), y[idx].detach().to("cpu", torch.long)


def _float32_cpu(model: nn.Module) -> nn.Module:
    """The model itself when already float32 on the CPU, else a float32 CPU copy (the caller's stays put)."""
    tensors = list(model.parameters()) + list(model.buffers())
    if all(t.device.type == "cpu" and (t.dtype == torch.float32 or not t.is_floating_point()) for t in tensors):
        return model
    return copy.deepcopy(model).to("cpu", torch.float32)


def compute_stats(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    bit_choices: Sequence[int] = (2, 3, 4),
    batch_size: int = 64,
    seed: int = 0,
    hessian: bool = True,
    cache_dir: Union[str, os.PathLike, None] = None,
    act_images: int = 8,
    *,
    act_max_elements: int = 32768,
    virtual: str = "synflow",
    hessian_probes: int = 8,
    hessian_iters: int = 20,
    hessian_tol: float = 1e-3,
    hessian_trace_mode: str = "block",
    hessian_batch: Optional[int] = None,
) -> NetworkStats:
    """Per-layer statistics of ``model`` on a calibration batch, in the forward order of
    proxylab.quant.quantizable_layers.

    The batch is ``batch_size`` samples of (x, y) drawn with ``seed`` (all of x when it has fewer). All
    passes run in eval mode, in float32 on the CPU (a model elsewhere is copied, never moved).

    What is kept, per layer:
      weight        the weight.
      act           the layer output for the first k images of the batch, k = min(act_images,
                    act_max_elements // values-per-image) and at least 1: bounded size whatever the network,
                    and the same images for every call with the same seed.
      grad          dL/dW, L = mean cross-entropy over the batch.
      virtual_grad  dW of sum(logits) for an all-ones input of the batch's shape. ``virtual="synflow"``
                    (default) computes it, like SynFlow, on a float64 copy whose affine maps are replaced by
                    their absolute values, with bounded activations (ReLU6) as ReLUs: without that, signs
                    cancel along paths (and a saturated ReLU6 zeroes every layer below it), and the virtual gradient
                    of a trained network mostly measures those cancellations rather than the signal each
                    weight carries. ``virtual="plain"`` uses the network as it is. Values beyond float32's
                    range are divided by a common power of two (meta["virtual_grad_log2_scale"]).
      fisher        empirical Fisher diagonal, sum_i (dL_i/dW)^2 over the per-sample losses L_i. Chosen over
                    the SNIP-like (grad*weight)^2, which proxies can already build from grad and weight.
      qerr(l, b)    W - quantize_weight(W, b) (per-channel RTN), for every b in bit_choices.
      hessian_trace Hutchinson estimate of tr(H_ll) (H_ll: Hessian of L w.r.t. this layer's weight alone),
                    ``hessian_probes`` Rademacher probes; standard errors in meta["hessian_trace_stderr"].
                    ``hessian_trace_mode="block"`` (default) gives every layer its own products H_ll v;
                    "joint" shares one product H v over all layers per probe (about layers/2 times cheaper,
                    but on a trained ResNet-20 the cross-layer terms made its standard error exceed the
                    trace itself on most layers at 16 probes, where "block" at 8 probes stays under 25%).
                    ``hessian_batch``: the Hessian of the loss on the first that many images of the batch
                    (None: the whole batch); its cost grows linearly with it.
      hessian_eig   dominant eigenvalue of H_ll (largest |lambda|, signed) by power iteration, at most
                    ``hessian_iters`` products, stopping at relative change < ``hessian_tol``.
    Probes and start vectors are seeded from ``seed``. ``hessian=False`` skips the last two (the costly part).
    Extras (proxylab.stats.extras, always made, cheap): ``gram(l)``, the [n, n] Gram matrix of each layer's
    output over every image of the batch (OMPQ), and ``synflow_log()``, float64 log SynFlow saliencies with
    bounded activations taken as ReLUs (the synflow proxy).

    With ``cache_dir`` the result is stored under a key made of the sha256 of the model's state_dict, the
    sha256 of the drawn batch, batch size, seed and every option above, and read back on the next call; the
    extras go to their own entry under ``cache_dir/extras/``, so entries written before them stay valid.
    The key holds the model's class name but not its code: a network edited in ``forward`` (or in a module with
    no weights, ReLU to GELU) with the same weights hits its old entry. Pass ``cache_dir=None``, or clear the
    cache, while editing a network's code.
    """
    require(isinstance(model, nn.Module), f"model must be a torch.nn.Module, got {type(model).__name__}")
    bits = _validate_bits(bit_choices)
    batch_size = _positive_int("batch_size", batch_size)
    act_images = _positive_int("act_images", act_images)
    act_max_elements = _positive_int("act_max_elements", act_max_elements)
    require(isinstance(seed, (int, np.integer)) and not isinstance(seed, bool),
            f"seed must be an integer, got {seed!r}")
    require(virtual in VIRTUAL_MODES, f"virtual must be one of {', '.join(VIRTUAL_MODES)}, got {virtual!r}")
    if hessian:
        hessian_probes = _positive_int("hessian_probes", hessian_probes)
        hessian_iters = _positive_int("hessian_iters", hessian_iters)
        require(isinstance(hessian_tol, (int, float, np.floating)) and not isinstance(hessian_tol, bool)
                and hessian_tol >= 0, f"hessian_tol must be a number >= 0, got {hessian_tol!r}")
        if hessian_batch is not None:
            hessian_batch = _positive_int("hessian_batch", hessian_batch)
        require(hessian_trace_mode in TRACE_MODES,
                f"hessian_trace_mode must be one of {', '.join(TRACE_MODES)}, got {hessian_trace_mode!r}")
    xb, yb = _calibration_batch(x, y, batch_size, int(seed))
    model = _float32_cpu(model)

    options = {"act_images": act_images, "act_max_elements": act_max_elements, "virtual": virtual,
               "hessian": bool(hessian)}
    if hessian:
        options.update(hessian_probes=hessian_probes, hessian_iters=hessian_iters, hessian_tol=float(hessian_tol),
                       hessian_trace_mode=hessian_trace_mode,
                       hessian_batch=min(hessian_batch or len(xb), len(xb)))
    key_parts = {
        "model": stats_cache.state_dict_sha256(model), "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
        "batch": stats_cache.tensors_sha256(xb, yb), "batch_size": batch_size, "seed": int(seed), **options,
    }
    if virtual == "synflow" and has_bounded_activation(model):
        # Entries from before bounded activations counted as ReLUs hold an all-zero virtual_grad below the
        # last ReLU6; only such networks' entries change, so only their key does.
        key_parts["synflow_bounded"] = "relu"
    key = stats_cache.cache_key(key_parts)
    folder = Path(cache_dir).expanduser() if cache_dir is not None else None
    st = None
    if folder is not None:
        hit = stats_cache.load_entry(folder, key)
        st = _stats_from_entry(hit, bits) if hit is not None else None
        if st is not None:
            st.meta["cache_hit"] = True
    if st is None:
        st = _compute(model, xb, yb, bits, int(seed), bool(hessian), options, key)
        if folder is not None:
            st.meta["cache_path"] = str(stats_cache.save_entry(folder, key, st.to_dict()))
        st.meta["cache_hit"] = False
    # Extras have their own cache entry (see extras.py), so entries written before them stay valid as they are.
    # The layers are traced only when the extras must be computed: a full cache hit runs no forward pass.
    from proxylab.quant import quantizable_layers

    st.extras.update(stats_extras.load_or_compute(model, lambda: list(quantizable_layers(model, xb[:1])), xb,
                                                  st.params, folder, key))
    return st.fill_qerr()


def _stats_from_entry(entry: Dict[str, Any], bits: tuple) -> Optional[NetworkStats]:
    """A readable entry whose content does not fit NetworkStats (hand-edited, foreign) is a miss too."""
    try:
        return NetworkStats.from_dict(entry, bit_choices=bits)
    except (KeyError, TypeError, ValueError) as exc:
        warnings.warn(f"stats cache entry {entry.get('meta', {}).get('key', '?')} does not hold valid statistics "
                      f"({exc}); recomputing it", stacklevel=3)
        return None


def _compute(model, xb, yb, bits, seed, hessian, options, key) -> NetworkStats:
    from proxylab.quant import layer_info, quantizable_layers

    example = xb[:1]
    layers = list(quantizable_layers(model, example))
    require(len(layers) > 0, f"{type(model).__name__} has no quantizable layers (Conv2d/Linear): nothing to measure")
    infos = {info.name: info for info in layer_info(model, example)}
    names = [name for name, _ in layers]
    num_classes = _num_classes(model, example)
    bad = yb[(yb < 0) | (yb >= num_classes)]
    require(len(bad) == 0, f"labels {sorted(set(bad.tolist()))[:5]} are outside the model's {num_classes} classes "
                           f"(0..{num_classes - 1}): check that x/y belong to this model's data set")

    seconds: Dict[str, float] = {}
    t0 = time.perf_counter()
    acts, grads, loss = activations_and_grads(model, layers, xb, yb, options["act_images"], options["act_max_elements"])
    seconds["act_grad"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    n_weights = sum(m.weight.numel() for _, m in layers)
    chunk = max(1, min(len(xb), FISHER_MAX_CHUNK, FISHER_CHUNK_BYTES // (4 * n_weights)))
    fisher, fisher_method = empirical_fisher(model, layers, xb, yb, chunk)
    seconds["fisher"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    vgrads, log2_scale = virtual_grads(model, layers, tuple(xb.shape), options["virtual"])
    seconds["virtual_grad"] = time.perf_counter() - t0

    scalars: Dict[str, Any] = {}
    meta: Dict[str, Any] = {"key": key, "batch_size": len(xb), "seed": seed, "loss": loss,
                            "virtual_grad_log2_scale": log2_scale,
                            "fisher_method": fisher_method, "torch": str(torch.__version__), **options}
    if hessian:
        t0 = time.perf_counter()
        hb = options["hessian_batch"]
        traces, errors, eigs, used = hessian_scalars(
            model, layers, xb[:hb], yb[:hb], options["hessian_probes"], options["hessian_iters"],
            options["hessian_tol"], seed, trace_mode=options["hessian_trace_mode"])
        seconds["hessian"] = time.perf_counter() - t0
        scalars = {"hessian_trace": traces, "hessian_eig": eigs}
        meta["hessian_trace_stderr"] = errors
        meta["hessian_eig_iters"] = used
    meta["seconds"] = seconds

    weights = [m.weight.detach().to(torch.float32).clone() for _, m in layers]
    tensors = {"weight": weights, "act": acts, "grad": grads, "virtual_grad": vgrads, "fisher": fisher}
    return NetworkStats(
        names, bits,
        [int(infos[n].params) for n in names], [int(infos[n].macs) for n in names],
        tensors, scalars, meta,
    )


def _num_classes(model: nn.Module, example: torch.Tensor) -> int:
    with measuring(model):
        out = model(example)
    require(out.dim() == 2, f"the model must return logits [N, classes], got shape {tuple(out.shape)}")
    return int(out.shape[1])


def stats_for_table(table, cache_dir: Union[str, os.PathLike, None, object] = _DEFAULT, **kw) -> NetworkStats:
    """compute_stats for a bench table's reference network on its data set's calib split.

    ``table`` is a BenchTable or a table name/folder for proxylab.bench.load_table. bit_choices default to
    the table's. ``cache_dir`` defaults to default_cache_dir(); pass None to skip the cache.
    """
    if isinstance(table, (str, os.PathLike)):
        from proxylab.bench import load_table

        table = load_table(table)
    model, dataset, _config = table.load_network()
    kw.setdefault("bit_choices", tuple(table.bit_choices))
    folder = default_cache_dir() if cache_dir is _DEFAULT else cache_dir
    st = compute_stats(model, dataset.calib.x, dataset.calib.y, cache_dir=folder, **kw)
    expected = list(table.layer_names)
    if st.layer_names != expected:
        raise ProxylabError(
            f"the table's layers ({len(expected)}) differ from the network's quantizable layers "
            f"({len(st.layer_names)}): the table was built for another network or another proxylab version; "
            "rebuild the table"
        )
    st.meta["table"] = str(table.meta.get("name", "")) if hasattr(table, "meta") else ""
    return st
