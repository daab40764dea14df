"""Per-layer network statistics (weights, activations, gradients, Fisher, Hessian summaries, quantization
error) computed once per (model, calibration batch) and cached on disk; every proxy reads them."""
from proxylab.stats.compute import compute_stats, default_cache_dir, stats_for_table
from proxylab.stats.network_stats import SCALAR_KEYS, TENSOR_KEYS, NetworkStats

__all__ = ["compute_stats", "stats_for_table", "default_cache_dir", "NetworkStats", "TENSOR_KEYS", "SCALAR_KEYS"]
