"""Restart answers exactly as before; SIGKILL mid-stream keeps every acknowledged registration and no half one;
queries keep flowing while models register; a second service cannot write the same index."""
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest

from tests.service.conftest import ENC_DIM, make_signature, samples
from tests.service.server import WRITE, Server


def answers(http, queries, images=None, labels=None):
    """Everything a client can observe, minus timings: the listing, vector queries, optionally a sample query."""
    out = {"list": http.get("/v1/models", params={"limit": 1000}).json()}
    for i, q in enumerate(queries):
        r = http.post("/v1/query", json={"vector": q.tolist(), "k": 7}).json()
        out[f"q{i}"] = r["results"]
    if images is not None:
        import io

        buf = io.BytesIO()
        np.savez(buf, images=images, labels=labels)
        r = http.post("/v1/query", files={"samples": ("s.npz", buf.getvalue())}, data={"k": "5"})
        assert r.status_code == 200, r.text
        out["samples"] = r.json()["results"]
    return out


def fill(http, rng, n=20):
    for i in range(n):
        md = {"name": f"m{i}", "task": "t", "params": i}
        assert http.post("/v1/models", json={"vector": rng.normal(size=ENC_DIM).tolist(), "metadata": md},
                         headers=WRITE).status_code == 201
    assert http.delete("/v1/models/4", headers=WRITE).status_code == 200


def test_restart_answers_exactly_as_before(tmp_path, tokens_file):
    from proxylab.retrieval.index import ModelIndex

    srv = Server(tmp_path / "zoo", tokens_file, ["--dim", str(ENC_DIM)]).start()
    rng = np.random.default_rng(1)
    queries = rng.normal(size=(3, ENC_DIM))
    with httpx.Client(base_url=srv.url, timeout=60) as http:
        fill(http, rng)
        before = answers(http, queries)
    assert srv.stop() == 0

    reopened = ModelIndex.open(tmp_path / "zoo")  # the graceful stop saved a FAISS cache that matches SQLite
    assert not reopened.rebuilt_on_open and len(reopened) == 19
    reopened.close()

    srv.start()
    with httpx.Client(base_url=srv.url, timeout=60) as http:
        assert answers(http, queries) == before
        # after a crash (no save at all) the FAISS cache is stale: rebuilt from SQLite, to the same answers
        assert http.post("/v1/models", json={"vector": [1.0] * ENC_DIM, "metadata": {"name": "late"}},
                         headers=WRITE).status_code == 201
        before = answers(http, queries)
    srv.kill()
    srv.start()
    with httpx.Client(base_url=srv.url, timeout=60) as http:
        assert answers(http, queries) == before
    assert srv.stop() == 0


@pytest.mark.slow
def test_restart_answers_sample_queries_and_signatures_exactly(tmp_path, tokens_file, encoder_files, encoders):
    extra = ["--encoders", str(encoder_files["encoders"]), "--extractor", str(encoder_files["extractor"])]
    srv = Server(tmp_path / "zoo", tokens_file, extra).start()
    rng = np.random.default_rng(1)
    queries = rng.normal(size=(3, ENC_DIM))
    images, labels = samples(seed=3)
    with httpx.Client(base_url=srv.url, timeout=60) as http:
        fill(http, rng)
        sig = make_signature(encoders, 3, seed=5).to_bytes()
        assert http.post("/v1/models", files={"signature": ("s.npz", sig)}, data={"metadata": '{"name": "sig"}'},
                         headers=WRITE).status_code == 201
        before = answers(http, queries, images, labels)
    srv.kill()
    srv.start()
    with httpx.Client(base_url=srv.url, timeout=60) as http:
        assert answers(http, queries, images, labels) == before
    assert srv.stop() == 0


def test_sigkill_during_registrations_keeps_exactly_the_acknowledged(tmp_path, tokens_file):
    """Four clients register, two query, a second service tries the same index; then SIGKILL and restart."""
    srv = Server(tmp_path / "zoo", tokens_file, ["--dim", str(ENC_DIM)]).start()
    sent, acked, lock = {}, {}, threading.Lock()
    stop = threading.Event()
    query_errors, seen = [], []

    def register(worker: int):
        rng = np.random.default_rng(worker)
        with httpx.Client(base_url=srv.url, timeout=30) as http:
            for i in range(10_000):
                if stop.is_set():
                    return
                name = f"w{worker}-{i}"
                body = {"vector": rng.normal(size=ENC_DIM).tolist(),
                        "metadata": {"name": name, "task": f"t{worker}", "params": i, "extra": {"n": [i, worker]}}}
                with lock:
                    sent[name] = body
                try:
                    r = http.post("/v1/models", json=body, headers=WRITE)
                except httpx.HTTPError:
                    return  # the server died mid-request: this one was never acknowledged
                if r.status_code == 201:
                    with lock:
                        acked[name] = r.json()["id"]

    def query():
        with httpx.Client(base_url=srv.url, timeout=30) as http:
            while not stop.is_set():
                try:
                    r = http.post("/v1/query", json={"vector": [1.0] * ENC_DIM, "k": 1000})
                except httpx.HTTPError:
                    return  # killed
                if r.status_code != 200:
                    query_errors.append(r.text)
                else:
                    seen.append(len(r.json()["results"]))

    threads = [threading.Thread(target=register, args=(w,)) for w in range(4)]
    threads += [threading.Thread(target=query) for _ in range(2)]
    for t in threads:
        t.start()
    second = subprocess.run([sys.executable, "-m", "proxylab.cli", "serve", "--index", str(tmp_path / "zoo"),
                             "--port", "1"], capture_output=True, text=True, timeout=60)
    deadline = time.monotonic() + 60
    while len(acked) < 60 and time.monotonic() < deadline:
        time.sleep(0.02)
    srv.kill()  # SIGKILL while four clients are mid-registration
    stop.set()
    for t in threads:
        t.join(30)
    # one writer per index: the second service refused to start, naming the reason
    assert second.returncode == 2 and "already serving" in second.stderr
    # queries were answered throughout the registrations, and saw the zoo grow
    assert not query_errors and len(seen) >= 5 and len(set(seen)) > 2
    assert len(acked) >= 60

    srv.start()  # the directory lock died with the killed process
    with httpx.Client(base_url=srv.url, timeout=60) as http:
        listed = http.get("/v1/models", params={"limit": 1000}).json()
        assert listed["total"] == len(listed["models"]) == http.get("/v1/health").json()["models"]
        present = {m["name"]: m for m in listed["models"]}
        assert set(acked) <= set(present), "an acknowledged registration was lost"
        assert set(present) <= set(sent), "a model nobody registered appeared"
        assert len(present) - len(acked) <= 4  # at most the requests in flight at the kill
        for name, row in present.items():  # complete rows only: every field and the exact vector
            body = sent[name]
            assert {k: row[k] for k in body["metadata"]} == body["metadata"]
            if name in acked:
                assert row["id"] == acked[name]
            got = np.array(http.get(f"/v1/models/{row['id']}", params={"vector": "true"}).json()["vector"])
            v = np.array(body["vector"])
            np.testing.assert_allclose(got, v / np.linalg.norm(v), atol=1e-6)
        top = http.post("/v1/query", json={"vector": sent[next(iter(acked))]["vector"], "k": 1}).json()["results"]
        assert top[0]["id"] == acked[next(iter(acked))]
    assert srv.stop() == 0


def test_a_folder_that_is_not_an_index_is_refused(tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "readme.txt").write_text("my notes")
    out = subprocess.run([sys.executable, "-m", "proxylab.cli", "serve", "--index", str(folder), "--dim", "4",
                          "--port", "1"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "no model index" in out.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["readme.txt"]  # nothing written into it
