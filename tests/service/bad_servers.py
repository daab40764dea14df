"""Real HTTP servers that misbehave the ways a hostile or broken model server can (stdlib, one thread each).

The first path segment picks the behaviour, the rest is the model-server route (/info or /predict):

    /slow/...       headers at once, then the body one byte every 0.2 s (a slow-loris answer)
    /slowclose/...  the same without a Content-Length (the body ends when the connection does)
    /silent/...     accepts the connection and never answers
    /huge/...       declares a Content-Length of 1 GB
    /endless/...    streams bytes without a length until the client hangs up
    /redirect/...   302 to file:///etc/passwd
    /slowpredict/.. a good /info, then a slow-loris /predict
    /bomb/...       a good /info, then a /predict npz that is small on the wire and huge unpacked
    /counting/...   a good /info and /predict of a uniform 3-class model (for "was it called at all?")

Answers that carry SECRET (an internal document a hostile client wants the service to read back to it):

    /secret.json    200 JSON holding SECRET (what http://host/secret.json# would have fetched as '/info')
    /leakyinfo/info 200 JSON {"num_classes": SECRET, "name": SECRET}
    /arrayinfo/info 200 JSON [SECRET]
    /notjson/info   200 text SECRET
    /notfound/...   404 with SECRET as the body
    /banner/...     no HTTP at all: SECRET as the first line (a non-HTTP service's banner), then hang up
    /badchunk/...   chunked transfer with SECRET where the chunk size goes
    /leakynpz/..    a good /info (the name SECRET), then an npz whose 'probs.npy' header names the dtype SECRET

Every request's path is recorded in ``server.paths``; ``server.sent`` counts the body bytes it managed to write.
"""
from __future__ import annotations

import io
import json
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from proxylab.utils import npz_bytes

INFO = json.dumps({"num_classes": 3, "name": "bad"}).encode()
SECRET = "s3cret-7f1d0c9ae4b2-internal-only"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep the test output clean
        pass

    def _body(self, data: bytes, status: int = 200, ctype: str = "application/octet-stream") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self._write(data)

    def _write(self, data: bytes) -> None:
        self.wfile.write(data)
        self.wfile.flush()
        with self.server.lock:
            self.server.sent += len(data)

    def _images(self) -> int:
        length = int(self.headers.get("Content-Length", 0))
        data = self.rfile.read(length)
        with np.load(io.BytesIO(data)) as z:
            return int(z["images"].shape[0])

    def _serve(self) -> None:
        with self.server.lock:
            self.server.paths.append(self.path)
        mode, _, route = self.path.lstrip("/").partition("/")
        try:
            if mode in ("slow", "slowclose") or (mode == "slowpredict" and route == "predict"):
                self.send_response(200)
                if mode == "slowclose":
                    self.close_connection = True
                else:
                    self.send_header("Content-Length", "100000")
                self.end_headers()
                for _ in range(1000):
                    self._write(b"x")
                    time.sleep(0.2)
            elif mode == "silent":
                time.sleep(30)
            elif mode == "huge":
                self.send_response(200)
                self.send_header("Content-Length", str(10**9))
                self.end_headers()
                for _ in range(10**9 // 65536):
                    self._write(b"\0" * 65536)
            elif mode == "endless":
                self.send_response(200)
                self.end_headers()  # no length: the body ends when the connection does
                self.close_connection = True
                while True:
                    self._write(b"\0" * 65536)
            elif mode == "redirect":
                self.send_response(302)
                self.send_header("Location", "file:///etc/passwd")
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif self.path == "/secret.json":
                self._body(json.dumps({"api_key": SECRET}).encode(), ctype="application/json")
            elif mode == "leakyinfo":
                self._body(json.dumps({"num_classes": SECRET, "name": SECRET}).encode(), ctype="application/json")
            elif mode == "arrayinfo":
                self._body(json.dumps([SECRET]).encode(), ctype="application/json")
            elif mode == "notjson":
                self._body(SECRET.encode(), ctype="text/plain")
            elif mode == "notfound":
                self._body(json.dumps({"error": SECRET}).encode(), 404, "application/json")
            elif mode == "banner":
                self.close_connection = True
                self._write(f"{SECRET}\r\n".encode())
            elif mode == "badchunk":
                self.close_connection = True
                self._write(f"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{SECRET}\r\n".encode())
            elif mode == "leakynpz" and route == "info":
                self._body(json.dumps({"num_classes": 3, "name": SECRET}).encode(), ctype="application/json")
            elif mode == "leakynpz":
                self._images()
                buf = io.BytesIO()
                # an .npy header whose dtype is SECRET: numpy's error message quotes the header
                header = f"{{'descr': '{SECRET}', 'fortran_order': False, 'shape': (2, 3), }}\n".encode()
                with zipfile.ZipFile(buf, "w") as zf:
                    zf.writestr("probs.npy", b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header)
                self._body(buf.getvalue())
            elif route == "info":
                self._body(INFO, ctype="application/json")
            elif mode == "bomb":
                n = self._images()
                self._body(npz_bytes(True, probs=np.zeros((n, 3), np.float32),  # True: compressed, so it is small
                                     pad=np.zeros(50_000_000, np.uint8)))                # and inflates to 50 MB
            elif mode == "counting":
                n = self._images()
                self._body(npz_bytes(True, probs=np.full((n, 3), 1 / 3, np.float32)))  # True: compressed
            else:
                self._body(b'{"error": "no such route"}', 404, "application/json")
        except (BrokenPipeError, ConnectionResetError):
            with self.server.lock:
                self.server.hung_up += 1

    do_GET = do_POST = _serve


class BadServer:
    def __init__(self):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.paths, self.httpd.sent, self.httpd.hung_up = [], 0, 0
        self.httpd.lock = threading.Lock()
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "BadServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def url(self, mode: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{mode}"

    @property
    def paths(self):
        with self.httpd.lock:
            return list(self.httpd.paths)

    @property
    def sent(self) -> int:
        with self.httpd.lock:
            return self.httpd.sent
