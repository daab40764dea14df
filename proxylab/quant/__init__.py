"""Mixed-precision fake quantization: layers in execution order, weight/activation quantizers, PTQ protocols,
and ``QuantizedNetwork``, which switches a network between bit configurations with tensor copies."""
from proxylab.quant.cost import bitops, size_mb
from proxylab.quant.layers import LayerInfo, layer_info, quantizable_layers
from proxylab.quant.network import QuantizedNetwork
from proxylab.quant.protocols import PROTOCOLS, Protocol, get_protocol
from proxylab.quant.quantizers import ActQuantizer, check_bits, quantize_weight, weight_scale

__all__ = [
    "ActQuantizer",
    "LayerInfo",
    "PROTOCOLS",
    "Protocol",
    "QuantizedNetwork",
    "bitops",
    "check_bits",
    "get_protocol",
    "layer_info",
    "quantizable_layers",
    "quantize_weight",
    "size_mb",
    "weight_scale",
]
