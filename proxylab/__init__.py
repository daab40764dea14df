"""proxylab: training-free proxies for AutoML (mixed-precision quantization proxy search, black-box model retrieval)."""
__version__ = "0.1.0"

__all__ = ["__version__"]
