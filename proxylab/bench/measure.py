"""Measuring one configuration: quantize the reference network, classify the whole test split.

A ``MeasureSpec`` is everything needed to rebuild the measured network from nothing (network recipe, weight
bytes, data set name, PTQ settings), small enough to ship to a Dask worker once. Each process keeps the
``QuantizedNetwork`` it built per spec key, so a worker pays for calibration and level precomputation once
and every later configuration is a cheap ``apply`` + forward pass. The local builder goes through the very
same path, which is why a table built on a cluster equals the local one row for row.
"""
from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

Result = Tuple[int, float, float, float]  # cfg_id, acc, acc_half_a, acc_half_b


@dataclass(frozen=True)
class MeasureSpec:
    network: Dict[str, Any]
    weights: bytes = field(repr=False)
    data: str
    data_seed: int
    bit_choices: Tuple[int, ...]
    act_bits: int
    protocol: str
    per_channel: bool
    calib_size: int
    halves_seed: int
    batch_size: int = 500

    @property
    def key(self) -> str:
        recipe = {k: v for k, v in self.__dict__.items() if k not in ("weights", "batch_size")}
        h = hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode())
        h.update(self.weights)
        return h.hexdigest()


def half_mask(n: int, seed: int) -> np.ndarray:
    """True for the test images of half A: a seeded random half, so the halves do not split by class order."""
    mask = np.zeros(n, dtype=bool)
    mask[np.random.default_rng(seed).permutation(n)[: n // 2]] = True
    return mask


class Measurer:
    """``split``: the images accuracies are measured on; "test" builds tables, "calib" lets the search validate
    allocations without ever touching a test image (PTQ reads calib images but never their labels)."""

    def __init__(self, spec: MeasureSpec, split: str = "test"):
        if split not in ("test", "calib"):  # before the network and the data set are built
            from proxylab.errors import ProxylabError

            raise ProxylabError(f"a Measurer measures on the 'test' or 'calib' split, got {split!r}")
        import torch

        from proxylab.bench.weights import build_network, load_weights_into
        from proxylab.data import get_dataset
        from proxylab.quant import QuantizedNetwork

        model = build_network(spec.network)
        load_weights_into(model, "weights.pt", data=spec.weights)
        model.eval()
        ds = get_dataset(spec.data, seed=spec.data_seed)
        self.spec = spec
        self.model = model
        self.qn = QuantizedNetwork(model, ds.calib.x, bit_choices=spec.bit_choices, act_bits=spec.act_bits,
                                   protocol=spec.protocol, per_channel=spec.per_channel, calib_size=spec.calib_size)
        measured = ds.test if split == "test" else ds.calib
        self.x, self.y = measured.x, measured.y
        self.mask_a = torch.from_numpy(half_mask(len(self.y), spec.halves_seed))
        # apply() changes the network in place: a worker with several threads must not interleave two configs
        self._lock = threading.Lock()

    def measure(self, bits: Sequence[int]) -> Tuple[float, float, float]:
        with self._lock:
            self.qn.apply([int(b) for b in bits])
            correct = self.qn.predict(self.x, batch_size=self.spec.batch_size).argmax(dim=1) == self.y
        n_a = int(self.mask_a.sum())
        hits_a = int(correct[self.mask_a].sum())
        hits = int(correct.sum())
        return hits / len(correct), hits_a / n_a, (hits - hits_a) / (len(correct) - n_a)

    def float_accuracy(self) -> float:
        with self._lock:
            self.qn.restore_float()
            return self.qn.evaluate(self.x, self.y, batch_size=self.spec.batch_size)


_CACHE: "OrderedDict[str, Measurer]" = OrderedDict()
_CACHE_SIZE = 2
_CACHE_LOCK = threading.Lock()


def measurer_for(spec: MeasureSpec) -> Measurer:
    key = spec.key
    with _CACHE_LOCK:  # threads of one worker build the network once, not once each
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
        m = Measurer(spec)
        _CACHE[key] = m
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
        return m


def measure_batch(spec: MeasureSpec, jobs: List[Tuple[int, Tuple[int, ...]]]) -> List[Result]:
    """The unit of work a Dask worker runs: a few configurations against its cached network."""
    m = measurer_for(spec)
    return [(cfg_id, *m.measure(bits)) for cfg_id, bits in jobs]


def spec_from_table(table, batch_size: int = 500) -> MeasureSpec:
    """The MeasureSpec that built ``table`` (its weights' sha256 checked), to re-measure any of its rows."""
    from proxylab.bench import format as fmt

    meta = table.meta
    if not meta.get("weights") or table.folder is None:
        from proxylab.errors import ProxylabError

        raise ProxylabError(f"table '{table.name}' ships no network weights, so its rows cannot be re-measured")
    fmt.verify_sha256(table.folder, meta, [meta["weights"]])
    return MeasureSpec(network=meta["network"], weights=(table.folder / meta["weights"]).read_bytes(),
                       data=meta["dataset"]["name"], data_seed=int(meta["dataset"].get("seed", 0)),
                       bit_choices=tuple(meta["bit_choices"]), act_bits=int(meta["act_bits"]),
                       protocol=meta["protocol"]["name"], per_channel=bool(meta["protocol"]["per_channel"]),
                       calib_size=int(meta["protocol"]["calib_size"]), halves_seed=int(meta["halves"]["seed"]),
                       batch_size=batch_size)
