"""Post-training quantization protocols, picked by name (``PROTOCOLS.get("rtn")``).

A protocol decides how each layer's weight (and bias) is quantized at each bit-width, from the float layer
and calibration statistics of that layer alone. Keeping every protocol per (layer, bit) is what lets
``QuantizedNetwork`` precompute all levels once and turn applying a configuration into tensor copies.
"""
from __future__ import annotations

from dataclasses import dataclass

from proxylab.registry import Registry


@dataclass(frozen=True)
class Protocol:
    name: str
    clip: str  # weight clip method for quantize_weight: "max" or "mse"
    bias_correction: bool  # subtract the expected output shift E[(Q(W) - W) x] from the layer's bias
    description: str


PROTOCOLS = Registry("quantization protocol")

for _p in (
    Protocol(
        "rtn",
        clip="max",
        bias_correction=False,
        description="round-to-nearest, symmetric per-channel weights scaled by max |w|",
    ),
    Protocol(
        "mse",
        clip="mse",
        bias_correction=False,
        description="round-to-nearest with each channel's clip range searched to minimise the squared error",
    ),
    Protocol(
        "bias_correction",
        clip="mse",
        bias_correction=True,
        description="mse clipping plus empirical bias correction of each layer's mean output on calibration data",
    ),
):
    PROTOCOLS.add(_p.name, _p, help=_p.description)


def get_protocol(protocol) -> Protocol:
    return protocol if isinstance(protocol, Protocol) else PROTOCOLS.get(protocol)
