"""proxylab: training-free proxies for AutoML (mixed-precision quantization proxy search, black-box model retrieval).

The names notebooks use are re-exported here and imported lazily (PEP 562), so `import proxylab` and
`proxylab --help` stay fast: torch is loaded only when one of them is first touched.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    # data and networks
    "get_dataset": "proxylab.data", "list_datasets": "proxylab.data",
    "create_net": "proxylab.nets", "list_nets": "proxylab.nets", "train_net": "proxylab.nets",
    "evaluate": "proxylab.nets", "save_checkpoint": "proxylab.nets", "load_checkpoint": "proxylab.nets",
    "load_user_network": "proxylab.nets",
    # quantization
    "QuantizedNetwork": "proxylab.quant", "quantize_weight": "proxylab.quant", "layer_info": "proxylab.quant",
    "size_mb": "proxylab.quant", "bitops": "proxylab.quant",
    # tables, statistics, proxies
    "BenchTable": "proxylab.bench", "load_table": "proxylab.bench", "list_tables": "proxylab.bench",
    "compute_stats": "proxylab.stats", "stats_for_table": "proxylab.stats", "NetworkStats": "proxylab.stats",
    "Proxy": "proxylab.proxy", "parse_proxy": "proxylab.proxy", "score_configs": "proxylab.proxy",
    "KNOWN_PROXIES": "proxylab.proxy", "InvalidProxy": "proxylab.proxy",
    "rank_metrics": "proxylab.metrics",
    # search and allocation
    "ProxySearch": "proxylab.search", "load_space": "proxylab.search",
    # `allocate` itself stays under proxylab.allocate: the name is also the subpackage's
    "ALLOCATORS": "proxylab.allocate", "parse_budget": "proxylab.allocate",
    # model retrieval and the query service
    "ModelIndex": "proxylab.retrieval", "Encoders": "proxylab.retrieval", "Signature": "proxylab.retrieval",
    "capture_signature": "proxylab.retrieval", "TorchBlackBox": "proxylab.retrieval",
    "HTTPBlackBox": "proxylab.retrieval", "serve_model": "proxylab.retrieval", "load_zoo": "proxylab.retrieval",
    "build_zoo": "proxylab.retrieval", "leep": "proxylab.retrieval", "nce": "proxylab.retrieval",
    "logme": "proxylab.retrieval", "Client": "proxylab.service",
    "ProxylabError": "proxylab.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'proxylab' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__():
    return sorted(__all__)
