"""Bounded outbound HTTP: the only way the service calls a URL a client gave it (model servers).

A URL registration probes the client's model server, and re-ranking calls registered model servers, so a
write-token holder decides where the service connects. Every such call here is bounded:

- scheme: only http and https; redirects are refused, not followed (a 30x could point anywhere, file:// or an
  internal address the client could not name directly);
- time: one ``FetchBudget`` per service request (a registration or a query) caps the total seconds spent
  waiting on model servers, across all the calls that request makes. Each call gets the budget left as a hard
  deadline covering every step: name resolution (waited for at most the budget left), each resolved address's
  TCP connect and the TLS handshake (each socket joins the watchdog before it connects, and gets the budget
  left as its timeout), and every read (a watchdog shuts the socket at the deadline, so a server trickling
  one byte at a time cannot hold a worker longer than the budget);
- size: an answer is read in chunks and abandoned as soon as it passes ``max_bytes`` (a declared
  Content-Length over the cap is refused before reading); an npz answer's unpacked size is checked against the
  same cap before anything is decompressed.

Failures raise ``FetchError`` (a ProxylabError) naming the URL and the limit, so the app answers 422 and a
re-ranked result says why it was not re-scored. A message never quotes what a server sent (its body, a
malformed status line, JSON values, npz member names): the URL is the caller's choice, so an echo would let a
write-token holder read any address this service reaches (say http://intranet/secret.json#, whose '/info'
lands on the secret). Messages say what was wrong instead: a status code, a size, a missing key, a wrong type.
"""
from __future__ import annotations

import http.client
import ipaddress
import json
import math
import socket
import ssl
import threading
import time
from typing import Optional
from urllib.parse import urlsplit

import numpy as np

from proxylab.errors import ProxylabError
from proxylab.retrieval.blackbox import HTTPBlackBox
from proxylab.utils import npz_bytes

DEFAULT_FETCH_SECONDS = 30.0
DEFAULT_FETCH_MAX_BYTES = 8 << 20  # 256 images x 8192 classes of float32 probabilities
CHUNK = 64 << 10
# sane upper limits for the operator's settings: a longer wait holds a worker for hours, and past ~3e9 s the
# watchdog's timer itself fails (OverflowError in its thread, leaving the deadline unenforced)
MAX_FETCH_SECONDS = 3600.0
MAX_FETCH_BYTES = 4 << 30


class FetchError(ProxylabError):
    """An outbound call failed or broke a limit; the message names the URL and what to do."""


def check_fetch_seconds(seconds, what: str = "fetch_seconds") -> float:
    """A finite number of seconds in (0, MAX_FETCH_SECONDS]; ProxylabError otherwise (NaN and inf included)."""
    ok = isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and math.isfinite(seconds)
    if not (ok and 0 < seconds <= MAX_FETCH_SECONDS):
        raise ProxylabError(f"{what} must be a positive, finite number of seconds of at most {MAX_FETCH_SECONDS:g}, "
                            f"got {seconds!r}")
    return float(seconds)


def check_fetch_max_bytes(value, what: str = "fetch_max_bytes") -> int:
    if not (isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_FETCH_BYTES):
        raise ProxylabError(f"{what} must be a positive integer of at most {MAX_FETCH_BYTES} bytes, got {value!r}")
    return value


class FetchBudget:
    """Seconds a service request may spend waiting on model servers, shared by all of its outbound calls."""

    def __init__(self, seconds: float):
        check_fetch_seconds(seconds, "the outbound time budget")
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
    """Unblock a connect or read stuck in another thread. The plain socket's shutdown, even for TLS:
    SSLSocket.shutdown would also drop the TLS state under the reading thread's feet."""
    if sock is not None:
        try:
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        except OSError:
            pass  # already closed, detached by the TLS wrapper, or not connected yet (its timeout bounds it)


class _Watchdog:
    """Shuts every socket of one call at the call's deadline, sockets registered after it fired included."""

    def __init__(self, seconds: float):
        self.fired = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list = []
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        with self._lock:
            self.fired.set()
            sockets = list(self._sockets)
        for sock in sockets:
            _shut(sock)

    def add(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            late = self.fired.is_set()
        if late:
            _shut(sock)

    def cancel(self) -> None:
        self._timer.cancel()


def _left(deadline: float) -> float:
    """Seconds to the deadline; TimeoutError once it has passed (never a zero timeout, which means non-blocking)."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the deadline passed")
    return left


def _resolve(host: str, port: int, deadline: float) -> list:
    """getaddrinfo, waited for until the deadline at most. The resolver cannot be interrupted, so a slow lookup
    finishes in its own thread after we have given up on it (bounded by the system resolver's timeouts)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:  # an IP literal: the numeric lookup never blocks, so no thread is needed
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    result: dict = {}

    def work() -> None:
        try:
            result["infos"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except Exception as e:  # noqa: BLE001 - handed to the waiting thread
            result["error"] = e

    thread = threading.Thread(target=work, name="proxylab-resolve", daemon=True)
    thread.start()
    thread.join(_left(deadline))
    if thread.is_alive():
        raise TimeoutError(f"resolving {host} took too long")
    if "error" in result:
        raise result["error"]
    return result["infos"]


def _open_socket(host: str, port: int, watch: _Watchdog, deadline: float) -> socket.socket:
    """A connected TCP socket to the first resolved address that accepts, all within the deadline.

    socket.create_connection would give every address the full timeout (n addresses, n budgets) and hand the
    socket over only once connected, out of the watchdog's reach; here each socket joins the watchdog before it
    connects and gets only the time left."""
    infos = _resolve(host, port, deadline)
    last: Optional[OSError] = None
    for family, kind, proto, _, address in infos:
        left = _left(deadline)  # TimeoutError once spent: no more addresses are tried
        sock = socket.socket(family, kind, proto)
        watch.add(sock)
        try:
            sock.settimeout(left)
            sock.connect(address)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        except OSError as e:  # refused, unreachable, timed out: the next address gets what time is left
            sock.close()
            last = e
    raise last if last is not None else OSError(f"{host} resolved to no address")


_tls_context: Optional[ssl.SSLContext] = None
_tls_lock = threading.Lock()


def _tls() -> ssl.SSLContext:
    """One verifying client context (loading the CA store per call would cost milliseconds each time)."""
    global _tls_context
    with _tls_lock:
        if _tls_context is None:
            context = ssl.create_default_context()
            context.set_alpn_protocols(["http/1.1"])
            _tls_context = context
        return _tls_context


class _Connection(http.client.HTTPConnection):
    """HTTP(S) connection whose connect (resolution, each address, TLS handshake) keeps to the call's deadline."""

    def __init__(self, host: str, port: int, tls: bool, watch: _Watchdog, deadline: float):
        super().__init__(host, port)  # no socket timeout here: connect() below keeps to the deadline
        self.default_port = 443 if tls else 80  # the Host header names the port only when it is not the scheme's
        self._tls, self._watch, self._deadline = tls, watch, deadline

    def connect(self) -> None:
        sock = _open_socket(self.host, self.port, self._watch, self._deadline)
        if self._tls:
            # wrapped without a handshake first, so the TLS socket joins the watchdog before the handshake reads
            try:
                sock = _tls().wrap_socket(sock, server_hostname=self.host, do_handshake_on_connect=False)
            except BaseException:
                sock.close()  # not yet conn.sock: close() of the connection would not reach it
                raise
            self._watch.add(sock)
            try:
                sock.settimeout(_left(self._deadline))
                sock.do_handshake()
            except BaseException:
                sock.close()
                raise
        self.sock = sock


def _split(url: str) -> tuple[str, int, bool, str]:
    """(host, port, tls, request target) of a model-server URL; FetchError for anything but a plain http(s) URL.

    A query, fragment or user:password@ is refused (check_url refuses them at registration already): appended
    paths such as '/info' would otherwise land somewhere the URL's path does not say."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FetchError(f"refusing to call '{url}': only http:// and https:// URLs of a host are called")
    if "@" in parts.netloc or "?" in url or "#" in url:
        raise FetchError(f"refusing to call '{url}': a model-server URL may not hold credentials (user@), a query "
                         "(?) or a fragment (#)")
    try:
        port = parts.port
        parts.hostname.encode("idna")
    except ValueError:  # UnicodeError is a ValueError
        raise FetchError(f"'{url}' has an invalid port or host name") from None
    tls = parts.scheme == "https"
    return parts.hostname, port or (443 if tls else 80), tls, parts.path or "/"


def _why(e: BaseException) -> str:
    """What went wrong, without a byte of what the server sent: http.client quotes a malformed status line
    (BadStatusLine), a chunk size (ValueError) or a protocol name in its messages, so only the class is named."""
    if isinstance(e, ssl.SSLError):  # first: SSLCertVerificationError is a ValueError too
        return f"the TLS connection failed ({getattr(e, 'reason', None) or type(e).__name__})"
    if isinstance(e, http.client.RemoteDisconnected):
        return "it closed the connection without answering"
    if isinstance(e, (http.client.HTTPException, ValueError)):
        return f"its answer is not valid HTTP ({type(e).__name__})"
    return f"{type(e).__name__}: {e.strerror or e}" if isinstance(e, OSError) else type(e).__name__


def fetch(url: str, data: Optional[bytes], budget: FetchBudget, max_bytes: int) -> bytes:
    """GET (data None) or POST ``url``; the answer's body for a 2xx, else FetchError. Bounded as described above.

    A non-2xx answer raises FetchError naming its status and size, never its content."""
    seconds = budget.remaining()
    if seconds <= 0:
        raise FetchError(f"not calling {url}: {budget.exhausted_message()}")
    host, port, tls, target = _split(url)
    start = time.monotonic()
    deadline = start + seconds
    watch = _Watchdog(seconds)
    try:
        conn = _Connection(host, port, tls, watch, deadline)
    except BaseException:
        watch.cancel()  # its timer thread would otherwise live out the whole budget
        raise

    def timed_out() -> FetchError:
        return FetchError(f"{url} did not answer within {seconds:.3g} s: {budget.exhausted_message()}")

    try:
        status, body = _exchange(conn, target, data, deadline, max_bytes, url)
    except FetchError:
        if watch.fired.is_set():
            raise timed_out() from None
        raise
    except (OSError, http.client.HTTPException, ValueError) as e:
        if watch.fired.is_set() or isinstance(e, TimeoutError) or time.monotonic() >= deadline:
            raise timed_out() from None
        if isinstance(e, (http.client.HTTPException, ValueError)) and not isinstance(e, OSError):
            raise FetchError(f"the model server at {url} gave a broken answer: {_why(e)}; check that it is a "
                             "proxylab model server (`proxylab zoo serve-model`)") from None
        raise FetchError(f"cannot reach the model server at {url} ({_why(e)}); is it running, and can this "
                         "service reach it?") from None
    finally:
        watch.cancel()
        conn.close()
        budget.charge(time.monotonic() - start)
    if watch.fired.is_set():  # the answer was complete, but only just: the deadline still holds
        raise timed_out()
    if 300 <= status < 400:
        raise FetchError(f"{url} answered a redirect (HTTP {status}); redirects are not followed: give the model "
                         "server's final http(s) URL")
    if not 200 <= status < 300:
        raise FetchError(f"model server {url} answered HTTP {status} with a body of {len(body)} bytes (not shown); "
                         "check that the URL is the model server's base URL, such as http://host:8001")
    return body


def _exchange(conn, target, data, deadline, max_bytes, url) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/octet-stream"} if data is not None else {}
    conn.connect()  # every step bounded by the deadline, and the sockets already known to the watchdog
    sock = conn.sock  # kept apart: a response without a length takes the socket over from the connection
    conn.request("POST" if data is not None else "GET", target, body=data, headers=headers)
    sock.settimeout(_left(deadline))
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
            sock.settimeout(_left(deadline))
            chunk = response.read1(CHUNK)
            if not chunk:
                break
            size += len(chunk)
            if size > max_bytes:
                raise FetchError(f"{url} sent more than this service's limit of {max_bytes} bytes per model-server "
                                 "answer; it stopped reading there")
            chunks.append(chunk)
        return response.status, b"".join(chunks)


def _json_type(value) -> str:
    for cls, name in ((bool, "boolean"), (dict, "object"), (list, "array"), (str, "string"), (int, "number"),
                      (float, "number")):
        if isinstance(value, cls):
            return name
    return "null"


class BoundedHTTPBlackBox(HTTPBlackBox):
    """HTTPBlackBox (same npz protocol) whose every call goes through ``fetch`` under one shared budget, and
    whose errors never quote the server's answers (HTTPBlackBox's do: fine for a user's own model server, a read
    leak for a service calling URLs its clients chose). Its name is the given one or the URL, never what /info
    sent (``_info`` returns only num_classes), since describe() puts it in error messages."""

    quotes_answers = False

    def __init__(self, url: str, budget: FetchBudget, max_bytes: int = DEFAULT_FETCH_MAX_BYTES, **kwargs):
        # set before the base __init__, which already calls GET /info through _request
        self._budget, self._max_bytes = budget, int(max_bytes)
        super().__init__(url, **kwargs)

    def _request(self, path: str, data: Optional[bytes] = None) -> bytes:
        return fetch(self.url + path, data, self._budget, self._max_bytes)

    def _info(self) -> dict:
        """{"num_classes": K} checked here, so the base class never quotes the answer in its errors."""
        from proxylab.retrieval.signature import MAX_SIGNATURE_CLASSES

        where = f"{self.url}/info"
        body = self._request("/info")
        try:
            info = json.loads(body.decode("utf-8"))
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            raise FetchError(f"{where} did not answer JSON (it sent {len(body)} bytes, not shown); a model server "
                             "answers {\"num_classes\": K, \"name\": ...}") from None
        if not isinstance(info, dict):
            raise FetchError(f"{where} answered a JSON {_json_type(info)}, not an object with an integer "
                             "'num_classes'")
        if "num_classes" not in info:
            raise FetchError(f"{where} answered a JSON object without the key 'num_classes'")
        k = info["num_classes"]
        integral = (isinstance(k, int) and not isinstance(k, bool)) or (isinstance(k, float) and k.is_integer())
        if not integral:
            raise FetchError(f"{where}: 'num_classes' must be an integer, got a JSON {_json_type(k)}")
        if not 2 <= k <= MAX_SIGNATURE_CLASSES:
            raise FetchError(f"{where}: 'num_classes' must lie in [2, {MAX_SIGNATURE_CLASSES}] (the classes a "
                             "proxylab signature supports); the value sent is not shown")
        return {"num_classes": int(k)}

    def _predict(self, x) -> np.ndarray:
        where = f"{self.url}/predict"
        arrays = _remote_npz(self._request("/predict", npz_bytes(images=x.numpy().astype(np.float32, copy=False))),
                             where, self._max_bytes)
        if "probs" not in arrays:
            raise FetchError(f"{where} answered an npz without a 'probs' array")
        return arrays["probs"]  # checked by predict_proba, quoting no value (quotes_answers)


def _remote_npz(body: bytes, where: str, max_bytes: int) -> dict:
    """The arrays of a model server's npz answer; the unpacked size bounded before anything is decompressed
    (a small compressed answer must not unpack to gigabytes). Parse errors are not passed on: zipfile and numpy
    quote member names and .npy headers, which are the server's bytes."""
    from proxylab.service.payloads import npz_unpacked_size
    from proxylab.utils import read_npz

    try:
        total = npz_unpacked_size(body)
    except Exception:  # noqa: BLE001 - any failure to read the bytes sent is the server's
        raise FetchError(f"{where} did not answer an .npz file (it sent {len(body)} bytes, not shown)") from None
    if total > max_bytes:
        raise FetchError(f"{where} answered an npz that unpacks to {total} bytes, over this service's limit of "
                         f"{max_bytes} bytes per model-server answer")
    try:
        return read_npz(body, where)
    except ProxylabError:
        raise FetchError(f"{where} answered a damaged or non-numeric .npz (details not shown); it must hold a "
                         "float32 'probs' array") from None

