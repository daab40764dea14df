"""Bounded outbound HTTP: the only way the service calls a URL a client gave it (model servers).

A URL registration probes the client's model server, and re-ranking calls registered model servers, so a
write-token holder decides where the service connects. Every such call here is bounded:

- scheme: only http and https; redirects are refused, not followed (a 30x could point anywhere, file:// or an
  internal address the client could not name directly);
- time: one ``FetchBudget`` per service request (a registration or a query) caps the total seconds spent
  waiting on model servers, across all the calls that request makes. Each call gets the budget left as a hard
  deadline: socket timeouts bound each read, and a watchdog shuts the socket at the deadline, so a server
  trickling one byte at a time cannot hold a worker longer than the budget (DNS resolution is the one step
  left to the system resolver's own timeouts);
- size: an answer is read in chunks and abandoned as soon as it passes ``max_bytes`` (a declared
  Content-Length over the cap is refused before reading); an npz answer's unpacked size is checked against the
  same cap before anything is decompressed.

Failures raise ``FetchError`` (a ProxylabError) naming the URL and the limit, so the app answers 422 and a
re-ranked result says why it was not re-scored.
"""
from __future__ import annotations

import http.client
import io
import socket
import threading
import time
from typing import Optional
from urllib.parse import urlsplit

import numpy as np

from proxylab.errors import ProxylabError
from proxylab.retrieval.blackbox import HTTPBlackBox, _error_text

DEFAULT_FETCH_SECONDS = 30.0
DEFAULT_FETCH_MAX_BYTES = 8 << 20  # 256 images x 8192 classes of float32 probabilities
CHUNK = 64 << 10


class FetchError(ProxylabError):
    """An outbound call failed or broke a limit; the message names the URL and what to do."""


class FetchBudget:
    """Seconds a service request may spend waiting on model servers, shared by all of its outbound calls."""

    def __init__(self, seconds: float):
        if not seconds > 0:
            raise ProxylabError(f"the outbound time budget must be positive, got {seconds}")
        self.seconds = float(seconds)
        self.spent = 0.0
        self._lock = threading.Lock()

    def remaining(self) -> float:
        with self._lock:
            return self.seconds - self.spent

    def charge(self, seconds: float) -> None:
        with self._lock:
            self.spent += seconds

    def exhausted_message(self) -> str:
        return (f"the {self.seconds:g} s this request may spend waiting on model servers are used up (a limit "
                "the service's operator sets)")


def _shut(sock: Optional[socket.socket]) -> None:
    """Unblock a read stuck in another thread. The plain socket's shutdown, even for TLS: SSLSocket.shutdown
    would also drop the TLS state under the reading thread's feet."""
    if sock is not None:
        try:
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        except OSError:
            pass  # already closed


def _connection(url: str, seconds: float) -> tuple[http.client.HTTPConnection, str]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FetchError(f"refusing to call '{url}': only http:// and https:// URLs of a host are called")
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    try:
        port = parts.port
    except ValueError:
        raise FetchError(f"'{url}' has an invalid port") from None
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return cls(parts.hostname, port, timeout=seconds), target


def fetch(url: str, data: Optional[bytes], budget: FetchBudget, max_bytes: int) -> bytes:
    """GET (data None) or POST ``url``; the answer's body for a 2xx, else FetchError. Bounded as described above.

    A non-2xx answer raises FetchError quoting the first bytes of its body (read under the same limits)."""
    seconds = budget.remaining()
    if seconds <= 0:
        raise FetchError(f"not calling {url}: {budget.exhausted_message()}")
    start = time.monotonic()
    deadline = start + seconds
    conn, target = _connection(url, seconds)
    fired = threading.Event()
    sockets: list = []  # the connected socket; kept apart, since a response without a length takes it over

    def watchdog() -> None:
        fired.set()
        for sock in sockets:
            _shut(sock)

    timer = threading.Timer(seconds, watchdog)
    timer.daemon = True
    timer.start()
    try:
        status, body = _exchange(conn, sockets, target, data, deadline, max_bytes, url)
    except FetchError:
        if fired.is_set():
            raise FetchError(f"{url} did not answer within {seconds:.3g} s: {budget.exhausted_message()}") from None
        raise
    except (OSError, http.client.HTTPException, ValueError) as e:
        if fired.is_set() or time.monotonic() >= deadline:
            raise FetchError(f"{url} did not answer within {seconds:.3g} s: {budget.exhausted_message()}") from None
        reason = getattr(e, "reason", None) or e
        raise FetchError(f"cannot reach the model server at {url} ({type(e).__name__}: {reason}); is it running, "
                         "and can this service reach it?") from None
    finally:
        timer.cancel()
        conn.close()
        budget.charge(time.monotonic() - start)
    if fired.is_set():  # the answer was complete, but only just: the deadline still holds
        raise FetchError(f"{url} did not answer within {seconds:.3g} s: {budget.exhausted_message()}")
    if 300 <= status < 400:
        raise FetchError(f"{url} answered a redirect (HTTP {status}); redirects are not followed: give the model "
                         "server's final http(s) URL")
    if not 200 <= status < 300:
        raise FetchError(f"model server {url} answered HTTP {status}: {_error_text(body)[:300]}")
    return body


def _exchange(conn, sockets, target, data, deadline, max_bytes, url) -> tuple[int, bytes]:
    def left() -> float:
        return max(deadline - time.monotonic(), 1e-3)

    headers = {"Content-Type": "application/octet-stream"} if data is not None else {}
    conn.connect()  # bounded by the connection's timeout (the budget left)
    sock = conn.sock
    sockets.append(sock)
    if time.monotonic() >= deadline:  # the watchdog may have fired before there was a socket to shut
        raise OSError("deadline passed while connecting")
    conn.request("POST" if data is not None else "GET", target, body=data, headers=headers)
    sock.settimeout(left())
    response = conn.getresponse()
    # closed here, not left to the connection: without a length the response owns the socket, and an exception
    # holding this frame would keep it open (the server blocked on a full window) until garbage collection
    with response:
        declared = response.getheader("content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > max_bytes:
            raise FetchError(f"{url} announced an answer of {int(declared)} bytes, over this service's limit of "
                             f"{max_bytes} bytes per model-server answer; nothing was read")
        chunks, size = [], 0
        while True:
            sock.settimeout(left())
            chunk = response.read1(CHUNK)
            if not chunk:
                break
            size += len(chunk)
            if size > max_bytes:
                raise FetchError(f"{url} sent more than this service's limit of {max_bytes} bytes per model-server "
                                 "answer; it stopped reading there")
            chunks.append(chunk)
        return response.status, b"".join(chunks)


class BoundedHTTPBlackBox(HTTPBlackBox):
    """HTTPBlackBox (same npz protocol) whose every call goes through ``fetch`` under one shared budget."""

    def __init__(self, url: str, budget: FetchBudget, max_bytes: int = DEFAULT_FETCH_MAX_BYTES, **kwargs):
        # set before the base __init__, which already calls GET /info through _request
        self._budget, self._max_bytes = budget, int(max_bytes)
        super().__init__(url, timeout=budget.seconds, **kwargs)
        self.name = self.name[:200]  # it comes from the remote /info and ends up in error messages

    def _request(self, path: str, data: Optional[bytes] = None) -> bytes:
        return fetch(self.url + path, data, self._budget, self._max_bytes)

    def _predict(self, x) -> np.ndarray:
        from proxylab.service.payloads import load_npz

        buf = io.BytesIO()
        np.savez(buf, images=x.numpy().astype(np.float32, copy=False))
        # bounded like an upload: a small compressed answer must not unpack to gigabytes
        arrays = load_npz(self._request("/predict", buf.getvalue()), f"the answer of {self.url}/predict",
                          self._max_bytes)
        if "probs" not in arrays:
            raise FetchError(f"{self.url}/predict answered an npz without a 'probs' array")
        return arrays["probs"]
