"""A real `proxylab serve` process on 127.0.0.1 for the service tests (start, wait until healthy, stop, kill)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

import httpx

WRITE_TOKEN = "write-token-0123456789abcdef"
READ_TOKEN = "read-token-0123456789abcdef"
WRITE = {"Authorization": f"Bearer {WRITE_TOKEN}"}
READ = {"Authorization": f"Bearer {READ_TOKEN}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_tokens(path: Path) -> Path:
    path.write_text(f"# test tokens\n{WRITE_TOKEN} write\n{READ_TOKEN}:read\n")
    return path


class Server:
    def __init__(self, index: Path, tokens: Path, extra: Optional[List[str]] = None, log: Optional[Path] = None,
                 serve_index: bool = True, env: Optional[dict] = None):
        """serve_index=False starts `proxylab serve` without --index (the shipped zoo); index then only names the log."""
        self.index, self.tokens, self.extra = Path(index), Path(tokens), list(extra or [])
        self.serve_index, self.env = serve_index, dict(env or {})
        self.log = Path(log) if log else self.index.parent / f"{self.index.name}.log"
        self.proc: Optional[subprocess.Popen] = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 180.0) -> "Server":
        self.port = free_port()
        where = ["--index", str(self.index)] if self.serve_index else []
        cmd = [sys.executable, "-m", "proxylab.cli", "serve", *where, "--port", str(self.port),
               "--tokens", str(self.tokens), "--log-level", "warning", *self.extra]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **self.env}
        self._logf = open(self.log, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self._logf, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/v1/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"server did not become healthy in {timeout} s:\n{self.log.read_text()[-3000:]}")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM: uvicorn's graceful shutdown (the service saves its FAISS cache and unlocks).

        Returns 0 for a clean stop: uvicorn re-raises the signal after its shutdown, so -SIGTERM counts as 0."""
        if self.proc is None:
            return 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.proc = None
        self._logf.close()
        return 0 if code == -signal.SIGTERM else code

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs at all."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
            self._logf.close()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


class InProcessServer:
    """The service app (create_app with any keyword, e.g. tight outbound limits the CLI does not expose) on a
    real uvicorn server in a thread of this process. ``with InProcessServer(index, ...) as srv: srv.url``."""

    def __init__(self, index: Path, **app_kwargs):
        from proxylab.service.app import create_app

        self.app = create_app(index, **app_kwargs)
        self.port = 0
        self.server = None
        self.thread = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "InProcessServer":
        import threading

        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the in-process uvicorn server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.app.state.store.close()  # idempotent; the lifespan normally did it


def raw_request(url: str, head: str, body: bytes = b"", read_timeout: float = 10.0):
    """Send an HTTP/1.1 request head (lines ending in newlines) and the first bytes of a body on a plain socket.

    Returns (status code, headers, answer body, seconds to the answer, whether the server then closed the
    connection). The body may be far shorter than the Content-Length the head declares: that is the point, a
    server that waited for the rest would make this time out."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=read_timeout) as sock:
        start = time.monotonic()
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"the server hung up without answering; got {data[:200]!r}")
            data += chunk
        elapsed = time.monotonic() - start
        head_bytes, _, answer = data.partition(b"\r\n\r\n")
        status_line, *lines = head_bytes.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
        while len(answer) < int(headers.get("content-length", 0)):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        sock.settimeout(1.0)  # a deliberate hang-up is immediate; uvicorn's idle keep-alive lasts 5 s
        try:
            closed = sock.recv(65536) == b""
        except ConnectionResetError:
            closed = True
        except socket.timeout:
            closed = False
        return int(status_line.split()[1]), headers, answer, elapsed, closed
