"""Load on the model-zoo query service: queries per second and latency at several concurrencies, on a
10k-model index, while registrations run beside the queries.

What it measures, honestly stated:
- The index holds --models RANDOM unit vectors (Gaussian, L2-normalised, seed 0) with random metadata, not
  encoded zoo models: search cost depends on the count and dimension, not on where the vectors came from.
- Queries are vector queries (JSON, k=10; every fourth with a metadata filter); sample queries add the
  encoder's cost, which benchmarks/retrieval.py reports.
- One writer thread registers new vectors without pause during each level (the "registrations" column);
  each concurrency also runs once without it (registrations = 0), so the cost of concurrent writes shows.
- Loopback only: a `proxylab serve` subprocess on 127.0.0.1, the load from Python threads (httpx) in this
  process. Client and server share the machine's cores, so absolute numbers are a lower bound; load_avg
  records how busy the machine was, and server_cpu_ms_per_request (CPU time of the server process per
  request, from /proc) is the cost that other load on the machine does not inflate.
- Bounded: each level stops at --requests queries or --max-seconds, whichever comes first.

    nice .venv/bin/python benchmarks/service_load.py [--models 10000] [--requests 1000] [--max-seconds 60]
writes benchmarks/results/service_load.csv (exit 1 if any request failed)
"""
from __future__ import annotations

import argparse
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from _results import write_csv

OUT = Path(__file__).resolve().parent / "results" / "service_load.csv"
COLUMNS = ["concurrency", "requests", "qps", "p50_ms", "p99_ms", "errors", "registrations", "registration_errors",
           "registrations_per_s", "registration_p50_ms", "registration_p99_ms", "server_search_p50_ms", "server_cpu_ms_per_request", "index_models_after", "dim", "seconds", "load_avg",
           "machine", "note"]
TOKEN = "bench-write-token-0123456789"
TASKS = ("digits", "mnist5k", "animal", "shapes", "shapes-color")
FAMILIES = ("resnet", "mobilenet", "vgg", "convnext")


def build_index(folder: Path, n: int, dim: int, seed: int) -> None:
    from proxylab.retrieval.index import ModelIndex

    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    metas = [{"name": f"random-{i}", "task": TASKS[i % len(TASKS)], "family": FAMILIES[i % len(FAMILIES)],
              "params": int(rng.integers(10_000, 10_000_000)), "num_classes": int(2 + i % 9)} for i in range(n)]
    index = ModelIndex.create(folder, dim=dim)
    for start in range(0, n, 2000):  # a few transactions, not one per model
        index.add_many(vectors[start:start + 2000], metas[start:start + 2000])
    index.save()
    index.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc): a cost that the machine's load does not inflate."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(index: Path, tokens: Path, port: int, log: Path) -> subprocess.Popen:
    import httpx

    cmd = [sys.executable, "-m", "proxylab.cli", "serve", "--index", str(index), "--port", str(port),
           "--tokens", str(tokens), "--log-level", "warning"]
    # the server as a user starts it: no thread-count environment tweaks (the service sets FAISS's own)
    proc = subprocess.Popen(cmd, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("server did not start in 120 s")


def run_level(url: str, concurrency: int, requests: int, max_seconds: float, dim: int, level_seed: int,
              reg_counter: dict) -> dict:
    import httpx

    latencies, search_ms, errors = [], [], []
    lock = threading.Lock()
    issued = {"n": 0}
    deadline = time.monotonic() + max_seconds

    def take() -> bool:
        with lock:
            if issued["n"] >= requests or time.monotonic() > deadline:
                return False
            issued["n"] += 1
            return True

    def worker(w: int) -> None:
        rng = np.random.default_rng((level_seed, w))
        with httpx.Client(base_url=url, timeout=30) as http:
            while take():
                body = {"vector": rng.normal(size=dim).tolist(), "k": 10}
                if rng.random() < 0.25:
                    body["filters"] = {"task": TASKS[int(rng.integers(len(TASKS)))], "params_max": 5_000_000}
                t0 = time.perf_counter()
                try:
                    r = http.post("/v1/query", json=body)
                    ok = r.status_code == 200 and len(r.json()["results"]) > 0
                except httpx.HTTPError as e:
                    r, ok = e, False
                dt = time.perf_counter() - t0
                with lock:
                    if ok:
                        latencies.append(dt)
                        search_ms.append(r.json()["timing_ms"]["search"])
                    else:
                        errors.append(str(getattr(r, "text", r))[:200])

    before, reg_before = reg_counter["ok"], len(reg_counter["latencies"])
    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(w,)) for w in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - t0
    registrations = reg_counter["ok"] - before
    reg_lat = np.array(reg_counter["latencies"][reg_before:] or [np.nan]) * 1e3
    lat = np.array(latencies) * 1e3
    if errors:
        print(f"  first error: {errors[0]}", file=sys.stderr)
    return {"concurrency": concurrency, "requests": len(latencies) + len(errors),
            "qps": round(len(latencies) / seconds, 1), "p50_ms": round(float(np.percentile(lat, 50)), 2),
            "p99_ms": round(float(np.percentile(lat, 99)), 2), "errors": len(errors), "registrations": registrations,
            "registrations_per_s": round(registrations / seconds, 1),
            "registration_p50_ms": round(float(np.percentile(reg_lat, 50)), 2),
            "registration_p99_ms": round(float(np.percentile(reg_lat, 99)), 2),
            "server_search_p50_ms": round(float(np.median(search_ms)), 3), "seconds": round(seconds, 2)}


def register_forever(url: str, dim: int, stop: threading.Event, writing: threading.Event, counter: dict) -> None:
    import httpx

    rng = np.random.default_rng(12345)
    i = 0
    with httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        while not stop.is_set():
            if not writing.wait(0.1):
                continue
            body = {"vector": rng.normal(size=dim).tolist(),
                    "metadata": {"name": f"live-{i}", "task": TASKS[i % len(TASKS)], "params": 1000 + i}}
            t0 = time.perf_counter()
            try:
                r = http.post("/v1/models", json=body)
                ok = r.status_code == 201
            except httpx.HTTPError:
                ok = False
            counter["ok" if ok else "err"] += 1
            if ok:
                counter["latencies"].append(time.perf_counter() - t0)
            i += 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=128, help="vector dimension (the shipped encoders' is 128)")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--requests", type=int, default=1000, help="queries per level at most")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="seconds per level at most")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-baseline", dest="baseline", action="store_false",
                        help="skip the levels without concurrent registrations (kept for comparison by default)")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]

    with tempfile.TemporaryDirectory(prefix="proxylab-load-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        build_index(tmp / "index", args.models, args.dim, args.seed)
        print(f"built a {args.models}-vector index in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        (tmp / "tokens").write_text(f"{TOKEN} write\n")
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = start_server(tmp / "index", tmp / "tokens", port, tmp / "server.log")
        counter = {"ok": 0, "err": 0, "latencies": []}
        stop, writing = threading.Event(), threading.Event()
        writer = threading.Thread(target=register_forever, args=(url, args.dim, stop, writing, counter))
        rows = []
        try:
            import httpx

            writer.start()
            plan = [(c, w) for c in levels for w in ((False, True) if args.baseline else (True,))]
            for n, (c, with_writer) in enumerate(plan):
                (writing.set if with_writer else writing.clear)()
                time.sleep(0.2)  # let a registration in flight finish before a baseline level starts
                errs_before, cpu_before, reg_before = counter["err"], cpu_seconds(proc.pid), counter["ok"]
                row = run_level(url, c, args.requests, args.max_seconds, args.dim, args.seed * 100 + n, counter)
                # server CPU per request served, registrations included (they are requests too)
                served = row["requests"] + counter["ok"] - reg_before
                row["server_cpu_ms_per_request"] = round(1e3 * (cpu_seconds(proc.pid) - cpu_before) / served, 2)
                row["registration_errors"] = counter["err"] - errs_before
                row["index_models_after"] = httpx.get(url + "/v1/health").json()["models"]
                row.update(dim=args.dim, load_avg=round(os.getloadavg()[0], 2), machine=platform.machine(),
                           note=(f"random unit vectors; {args.models} at start; loopback; vector queries k=10; "
                                 + ("one writer registering throughout" if with_writer else "baseline: no writer")))
                rows.append(row)
                print({k: row[k] for k in ("concurrency", "requests", "qps", "p50_ms", "p99_ms", "errors",
                                           "registrations")}, file=sys.stderr)
        finally:
            stop.set()
            writer.join(30)
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    out = write_csv(args.out, rows, COLUMNS)
    print(f"wrote {out}", file=sys.stderr)
    failed = sum(r["errors"] + r["registration_errors"] for r in rows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
