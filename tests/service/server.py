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
