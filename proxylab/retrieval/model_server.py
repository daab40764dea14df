"""Serve a model over HTTP with the npz protocol ``HTTPBlackBox`` speaks (stdlib only, no FastAPI).

GET /info -> JSON {"num_classes", "name", "image_shape", "calls"}; POST /predict with npz bytes
{"images": float32 [N,3,32,32]} -> npz bytes {"probs": float32 [N,K]}. Bad requests get a 4xx JSON
{"error": ...}; the server never unpickles (np.load(allow_pickle=False)).
"""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from proxylab.errors import ProxylabError
from proxylab.utils import npz_bytes, read_npz
from proxylab.retrieval.canonical import IMAGE_SHAPE
from proxylab.retrieval.blackbox import ModelForwardError

# 4096 canonical images in float32 are 48 MiB; a bigger body is refused before it is read.
MAX_BODY_BYTES = 64 * 1024 * 1024


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"
    protocol_version = "HTTP/1.1"
    timeout = 60  # seconds a client may stall mid-request before its connection is dropped

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests and CLIs own stderr
        pass

    def _send(self, code: int, body: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, code: int, obj: Any) -> None:
        self._send(code, json.dumps(obj).encode("utf-8"), "application/json")

    def do_GET(self) -> None:
        if self.path.rstrip("/") != "/info":
            self._json(404, {"error": f"unknown path {self.path}; use GET /info or POST /predict"})
            return
        m = self.server.model
        self._json(200, {"num_classes": int(m.num_classes), "name": m.name, "image_shape": list(IMAGE_SHAPE),
                         "calls": int(m.calls)})

    def do_POST(self) -> None:
        if self.path.rstrip("/") != "/predict":
            self._json(404, {"error": f"unknown path {self.path}; use POST /predict"})
            return
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            self._json(411, {"error": "a valid Content-Length header is required"})
            return
        if length > MAX_BODY_BYTES:
            self.close_connection = True  # the unread body must not be parsed as the next request
            self._json(413, {"error": f"body of {length} bytes exceeds {MAX_BODY_BYTES}; send fewer images per request"})
            return
        body = self.rfile.read(length)
        try:
            arrays = read_npz(body, "the request body")
            if "images" not in arrays:
                raise ProxylabError(f"the npz body must hold an 'images' array, it holds {sorted(arrays)}")
            images = arrays["images"]
        except ProxylabError as e:
            self._json(400, {"error": str(e)})
            return
        try:
            probs = self.server.model.predict_proba(images)
        except ModelForwardError as e:  # valid images, the model's own pass failed: a server error
            self._json(500, {"error": f"the model failed: {e}"})
            return
        except ProxylabError as e:
            self._json(400, {"error": str(e)})
            return
        except Exception as e:  # the model itself failed: a server error, not the client's
            self._json(500, {"error": f"the model failed: {type(e).__name__}: {e}"})
            return
        self._send(200, npz_bytes(probs=probs.astype(np.float32)), "application/octet-stream")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    model: Any


class ModelServer:
    """A running server: ``.url``, ``.model``, ``.shutdown()``, ``.wait()``; also a context manager."""

    def __init__(self, model, host: str, port: int):
        self._httpd = _Server((host, port), _Handler)
        self._httpd.model = model
        self.model = model
        host_, port_ = self._httpd.server_address[:2]
        self.url = f"http://{host_}:{port_}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="proxylab-model-server", daemon=True)
        self._thread.start()

    def wait(self) -> None:
        """Block until shutdown() (or Ctrl-C): for a CLI that only serves."""
        try:
            while self._thread.is_alive():
                self._thread.join(0.5)
        except KeyboardInterrupt:
            self.shutdown()

    def shutdown(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)

    def __enter__(self) -> "ModelServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()


def serve_model(model, host: str = "127.0.0.1", port: int = 0) -> ModelServer:
    """Serve a BlackBoxModel (or an nn.Module mapping canonical images to logits) in a background thread."""
    from proxylab.retrieval.blackbox import BlackBoxModel

    if not isinstance(model, BlackBoxModel):
        import torch.nn as nn

        if not isinstance(model, nn.Module):
            raise ProxylabError(f"serve_model needs a BlackBoxModel or torch.nn.Module, got {type(model).__name__}")
        from proxylab.retrieval.blackbox import TorchBlackBox

        model = TorchBlackBox(model)
    try:
        return ModelServer(model, host, int(port))
    except OSError as e:
        raise ProxylabError(f"cannot listen on {host}:{port} ({e}); pick another port (0 = any free one)") from None
