"""InvalidProxy: a formula that yields NaN/inf (or cannot combine its tensors) on some layer."""
from __future__ import annotations

from proxylab.errors import ProxylabError


class InvalidProxy(ProxylabError):
    """Raised at the first layer where the proxy breaks; carries the layer name, the op and the reason."""

    def __init__(self, layer: str, op: str, reason: str):
        super().__init__(f"proxy is invalid: {reason} at op '{op}' on layer '{layer}'")
        self.layer = layer
        self.op = op
        self.reason = reason

    def __reduce__(self):  # keep the three fields across pickling (process pools, dask)
        return (InvalidProxy, (self.layer, self.op, self.reason))
