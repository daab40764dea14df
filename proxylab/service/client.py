"""Python client of the model-zoo query service (used by `proxylab zoo query --server URL` and the notebooks).

    from proxylab.service import Client
    with Client("http://127.0.0.1:8000", token="...") as zoo:
        zoo.register_signature("sig.npz", {"name": "my-net", "task": "digits", "arch": "resnet20"})
        hits = zoo.query(images, labels, k=5)["results"]      # [{rank, id, score, metadata}, ...]

Every 4xx/5xx answer raises ``ServiceError`` (a ProxylabError) carrying the server's message and ``status``.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional, Sequence

import numpy as np

from proxylab.errors import ProxylabError
from proxylab.utils import npz_bytes


class ServiceError(ProxylabError):
    """The service refused a request; ``status`` is the HTTP status, the message is the server's."""

    def __init__(self, status: int, message: str):
        super().__init__(f"the zoo service answered {status}: {message}")
        self.status = status
        self.server_message = message


def _as_array(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, without importing torch here
        x = x.detach().cpu().numpy()
    return np.asarray(x)


class Client:
    def __init__(self, url: str, token: Optional[str] = None, timeout: float = 120.0):
        import httpx

        if not str(url).lower().startswith(("http://", "https://")):
            raise ProxylabError(f"the service URL must start with http:// or https://, got {url!r} (e.g. "
                                "http://127.0.0.1:8000)")
        self.url = url.rstrip("/")
        self._token = token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    # --- plumbing -------------------------------------------------------------------------------------
    def _call(self, method: str, path: str, **kwargs) -> Any:
        import httpx

        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as e:
            raise ProxylabError(f"cannot reach the zoo service at {self.url} ({type(e).__name__}: {e}); is "
                                "`proxylab serve` running there?") from None
        if response.status_code >= 400:
            try:
                message = response.json().get("error") or response.text
            except (ValueError, AttributeError):
                message = response.text[:500] or response.reason_phrase
            if response.status_code == 401 and not self._token:  # the server cannot know how tokens are passed
                message = f"{message} (pass a token: --token or $PROXYLAB_TOKEN; Python: Client(url, token=...))"
            raise ServiceError(response.status_code, message)
        if response.headers.get("content-type", "").startswith("application/json"):
            return response.json()
        return response.text

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- reads ----------------------------------------------------------------------------------------
    def health(self) -> Dict[str, Any]:
        return self._call("GET", "/v1/health")

    def metrics(self) -> str:
        return self._call("GET", "/metrics")

    def list(self, filters: Optional[Dict[str, Any]] = None, limit: int = 100, offset: int = 0) -> Dict[str, Any]:
        """One page: {"models": [...], "total", "limit", "offset"}; filters as in ModelIndex.search."""
        params: list = [("limit", limit), ("offset", offset)]
        for key, value in (filters or {}).items():
            values = value if isinstance(value, (list, tuple)) else [value]
            params += [(key, v) for v in values]
        return self._call("GET", "/v1/models", params=params)

    def get(self, model_id: int, vector: bool = False) -> Dict[str, Any]:
        return self._call("GET", f"/v1/models/{int(model_id)}", params={"vector": "true"} if vector else None)

    def query(self, images: Any = None, labels: Any = None, *, vector: Optional[Sequence[float]] = None,
              k: int = 10, filters: Optional[Dict[str, Any]] = None, rerank: bool = False,
              method: str = "leep") -> Dict[str, Any]:
        """Rank the zoo for labelled samples (images [N,3,32,32] in [0,1], labels [N]) or for a query vector.

        Returns {"results": [{rank, id, score, metadata, rerank_score?}], "calls", "k", "filters", "timing_ms"}.
        """
        if vector is not None:
            if images is not None or labels is not None or rerank:
                raise ProxylabError("query with either images+labels or a vector, not both (re-ranking needs images)")
            body = {"vector": [float(v) for v in _as_array(vector).reshape(-1)], "k": k}
            if filters:
                body["filters"] = filters
            return self._call("POST", "/v1/query", json=body)
        if images is None or labels is None:
            raise ProxylabError("query needs images and labels (few labelled samples), or vector=...")
        payload = npz_bytes(images=_as_array(images), labels=_as_array(labels))
        data = {"k": str(k), "rerank": "true" if rerank else "false", "method": method}
        if filters:
            data["filters"] = json.dumps(filters)
        return self._call("POST", "/v1/query", files={"samples": ("samples.npz", payload)}, data=data)

    # --- writes ---------------------------------------------------------------------------------------
    def register_signature(self, signature: Any, metadata: Dict[str, Any]) -> Dict[str, Any]:
        """signature: a .npz path, its bytes, or a Signature object (anything with to_bytes())."""
        if hasattr(signature, "to_bytes"):
            data = signature.to_bytes()
        elif isinstance(signature, (bytes, bytearray)):
            data = bytes(signature)
        elif isinstance(signature, (str, os.PathLike)):
            try:
                with open(signature, "rb") as f:
                    data = f.read()
            except OSError as e:
                raise ProxylabError(f"cannot read the signature file '{signature}': {e}") from None
        else:
            raise ProxylabError("signature must be a path, bytes or a Signature (from `proxylab zoo signature`)")
        return self._call("POST", "/v1/models", files={"signature": ("signature.npz", data)},
                          data={"metadata": json.dumps(metadata)})

    def register_url(self, url: str, metadata: Dict[str, Any], seed: int = 0) -> Dict[str, Any]:
        """Ask the service to probe a model server itself (it must reach the URL); the URL is kept for re-ranking."""
        return self._call("POST", "/v1/models", json={"url": url, "metadata": metadata, "seed": seed})

    def register_vector(self, vector: Sequence[float], metadata: Dict[str, Any]) -> Dict[str, Any]:
        """Register a model vector computed with the same encoders the served index uses."""
        body = {"vector": [float(v) for v in _as_array(vector).reshape(-1)], "metadata": metadata}
        return self._call("POST", "/v1/models", json=body)

    def delete(self, model_id: int) -> Dict[str, Any]:
        return self._call("DELETE", f"/v1/models/{int(model_id)}")
