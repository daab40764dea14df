"""Black-box model retrieval: canonical images, black-box models, a FAISS model index, re-rankers.

Names are re-exported lazily (PEP 562) so importing this package loads neither torch nor faiss.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "IMAGE_SHAPE": "proxylab.retrieval.canonical", "to_canonical": "proxylab.retrieval.canonical",
    "check_images": "proxylab.retrieval.canonical",
    "BlackBoxModel": "proxylab.retrieval.blackbox", "TorchBlackBox": "proxylab.retrieval.blackbox",
    "CheckpointBlackBox": "proxylab.retrieval.blackbox", "HTTPBlackBox": "proxylab.retrieval.blackbox",
    "check_probabilities": "proxylab.retrieval.blackbox",
    "serve_model": "proxylab.retrieval.model_server",
    "ModelIndex": "proxylab.retrieval.index", "Hit": "proxylab.retrieval.index",
    "INDEX_KINDS": "proxylab.retrieval.index", "EncoderMismatchError": "proxylab.retrieval.index",
    "LegacyIndexError": "proxylab.retrieval.index", "adopt_if_vectors_match": "proxylab.retrieval.legacy",
    "leep": "proxylab.retrieval.rerank", "nce": "proxylab.retrieval.rerank", "logme": "proxylab.retrieval.rerank",
    "hscore": "proxylab.retrieval.rerank", "rerank": "proxylab.retrieval.rerank",
    "Task": "proxylab.retrieval.tasks", "QuerySpec": "proxylab.retrieval.tasks",
    "SOURCE_TASKS": "proxylab.retrieval.tasks", "NEW_TASKS": "proxylab.retrieval.tasks",
    "SUBSET_TASKS": "proxylab.retrieval.tasks",
    "get_task": "proxylab.retrieval.tasks", "list_tasks": "proxylab.retrieval.tasks",
    "default_queries": "proxylab.retrieval.tasks",
    "Zoo": "proxylab.retrieval.zoo", "build_zoo": "proxylab.retrieval.zoo", "load_zoo": "proxylab.retrieval.zoo",
    "build_signatures": "proxylab.retrieval.zoo", "build_index": "proxylab.retrieval.zoo",
    "compute_oracle": "proxylab.retrieval.oracle", "load_oracle": "proxylab.retrieval.oracle",
    "probe_accuracy": "proxylab.retrieval.oracle", "calibration_accuracy": "proxylab.retrieval.oracle",
    "penultimate_features": "proxylab.retrieval.blackbox",
    "FeatureExtractor": "proxylab.retrieval.features",
    "Signature": "proxylab.retrieval.signature", "capture_signature": "proxylab.retrieval.signature",
    "probe_pool": "proxylab.retrieval.signature",
    "Encoders": "proxylab.retrieval.encoders",
    "evaluate_zoo": "proxylab.retrieval.evaluate",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'proxylab.retrieval' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)
