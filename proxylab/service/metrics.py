"""Prometheus text-format metrics, written by hand (no client library needed).

Request counts by (method, route template, status), a latency histogram per route, and gauges the app
sets (index size). Routes are labelled by their template ("/v1/models/{model_id}"), never by the raw path,
so a client probing random URLs cannot grow the label set without bound.
"""
from __future__ import annotations

import bisect
import threading
import time
from collections import defaultdict
from typing import Callable, Dict, List, Tuple

# seconds; spans a vector search (~1 ms) to a probe of a remote model server (tens of seconds)
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: Dict[Tuple[str, str, int], int] = defaultdict(int)
        self._hist: Dict[str, List[int]] = {}
        self._sum: Dict[str, float] = defaultdict(float)
        self._counters: Dict[str, float] = defaultdict(float)
        self._gauges: Dict[str, Callable[[], float]] = {}
        self._help: Dict[str, str] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self._requests[(method, route, status)] += 1
            counts = self._hist.setdefault(route, [0] * (len(BUCKETS) + 1))
            counts[bisect.bisect_left(BUCKETS, seconds)] += 1
            self._sum[route] += seconds

    def inc(self, name: str, amount: float = 1.0, help: str = "") -> None:
        with self._lock:
            self._counters[name] += amount
            if help:
                self._help[name] = help

    def gauge(self, name: str, read: Callable[[], float], help: str) -> None:
        self._gauges[name] = read
        self._help[name] = help

    def render(self) -> str:
        with self._lock:
            requests = dict(self._requests)
            hist = {r: list(c) for r, c in self._hist.items()}
            sums = dict(self._sum)
            counters = dict(self._counters)
        out = ["# HELP proxylab_http_requests_total HTTP requests answered, by method, route and status.",
               "# TYPE proxylab_http_requests_total counter"]
        for (method, route, status), n in sorted(requests.items()):
            out.append(f'proxylab_http_requests_total{{method="{_escape(method)}",route="{_escape(route)}",'
                       f'status="{status}"}} {n}')
        out += ["# HELP proxylab_http_request_duration_seconds Time to answer a request, by route.",
                "# TYPE proxylab_http_request_duration_seconds histogram"]
        for route, counts in sorted(hist.items()):
            label = f'route="{_escape(route)}"'
            running = 0
            for bound, c in zip(BUCKETS, counts):
                running += c
                out.append(f'proxylab_http_request_duration_seconds_bucket{{{label},le="{bound}"}} {running}')
            running += counts[-1]
            out.append(f'proxylab_http_request_duration_seconds_bucket{{{label},le="+Inf"}} {running}')
            out.append(f"proxylab_http_request_duration_seconds_sum{{{label}}} {sums[route]:.6f}")
            out.append(f"proxylab_http_request_duration_seconds_count{{{label}}} {running}")
        for name, value in sorted(counters.items()):
            out += [f"# HELP {name} {self._help.get(name, name)}", f"# TYPE {name} counter", f"{name} {value:g}"]
        for name, read in sorted(self._gauges.items()):
            try:
                value = float(read())
            except Exception:  # noqa: BLE001 - a metrics scrape must never fail because one gauge did
                value = float("nan")
            out += [f"# HELP {name} {self._help[name]}", f"# TYPE {name} gauge", f"{name} {value:g}"]
        return "\n".join(out) + "\n"


class MetricsMiddleware:
    """Pure ASGI middleware (no BaseHTTPMiddleware: it buffers streaming bodies and breaks cancellation)."""

    def __init__(self, app, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.observe(scope.get("method", ""), template, status["code"], time.perf_counter() - start)
