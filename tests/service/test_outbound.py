"""The service's own calls to user-given URLs (URL registration, re-ranking) are bounded in scheme, time and size.

Against real misbehaving HTTP servers (tests/service/bad_servers.py), a real model server
(proxylab.retrieval.model_server) and the real app on uvicorn over a real FAISS+SQLite index.
"""
import json
import time

import httpx
import numpy as np
import pytest

from proxylab.errors import ProxylabError
from proxylab.utils import npz_bytes
from proxylab.service.fetch import BoundedHTTPBlackBox, FetchBudget, FetchError, fetch
from tests.service.bad_servers import BadServer
from tests.service.conftest import ENC_DIM, linear_model, samples
from tests.service.server import WRITE, InProcessServer, write_tokens

LIMIT = 1 << 20
GOOD_SEEDS = {"good-a": 2, "good-b": 21}


@pytest.fixture(scope="module")
def bad():
    with BadServer() as server:
        yield server


def timed(fn, *args, **kwargs):
    start = time.monotonic()
    with pytest.raises(FetchError) as err:
        fn(*args, **kwargs)
    return str(err.value), time.monotonic() - start


# --- fetch on its own ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["slow", "slowclose", "silent"])
def test_a_slow_or_silent_server_is_cut_at_the_deadline(bad, mode):
    message, seconds = timed(fetch, bad.url(mode) + "/info", None, FetchBudget(0.6), LIMIT)
    assert "within 0.6 s" in message and mode in message
    assert 0.5 < seconds < 2.0, seconds  # a per-read socket timeout alone would let the trickle run 200 s


def test_the_budget_is_shared_by_all_calls_of_a_request(bad):
    budget = FetchBudget(1.0)
    _, first = timed(fetch, bad.url("slow") + "/info", None, budget, LIMIT)
    assert budget.remaining() <= 0 and 0.9 < first < 2.0  # the one call used the whole second
    before = len(bad.paths)
    message, seconds = timed(fetch, bad.url("counting") + "/info", None, budget, LIMIT)
    assert "used up" in message and seconds < 0.1 and len(bad.paths) == before  # not even connected


def test_a_declared_oversized_answer_is_refused_unread(bad):
    message, seconds = timed(fetch, bad.url("huge") + "/info", None, FetchBudget(5), LIMIT)
    assert "1000000000 bytes" in message and str(LIMIT) in message and seconds < 1.0


def test_an_endless_answer_is_cut_at_the_size_limit(bad):
    time.sleep(0.5)  # let earlier tests' server threads notice their clients left
    hung_up, sent = bad.httpd.hung_up, bad.sent
    message, _ = timed(fetch, bad.url("endless") + "/info", None, FetchBudget(20), LIMIT)
    assert f"more than this service's limit of {LIMIT} bytes" in message
    deadline = time.monotonic() + 10
    while bad.httpd.hung_up == hung_up and time.monotonic() < deadline:
        time.sleep(0.05)
    # the sender was cut off soon after the reader stopped: it wrote the limit plus socket buffers, not forever
    assert bad.httpd.hung_up > hung_up and bad.sent - sent < 64 * LIMIT


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/x", "gopher://127.0.0.1:70/", "http://"])
def test_only_http_and_https_urls_are_called(url):
    message, _ = timed(fetch, url, None, FetchBudget(5), LIMIT)
    assert "only http:// and https://" in message


def test_redirects_are_refused_not_followed(bad):
    message, _ = timed(fetch, bad.url("redirect") + "/info", None, FetchBudget(5), LIMIT)
    assert "redirect" in message and "302" in message


def test_a_compressed_bomb_answer_is_refused_before_unpacking(bad):
    model = BoundedHTTPBlackBox(bad.url("bomb"), FetchBudget(10), max_bytes=LIMIT)
    with pytest.raises(ProxylabError, match="unpacks to"):
        model.predict_proba(np.zeros((2, 3, 32, 32), np.float32))


def test_a_good_model_server_answers_like_the_model_itself():
    from proxylab.retrieval.model_server import serve_model

    local = linear_model(4, seed=5)
    server = serve_model(local)
    try:
        images, _ = samples(n_per_class=3, classes=2, seed=1)
        remote = BoundedHTTPBlackBox(server.url, FetchBudget(30))
        np.testing.assert_allclose(remote.predict_proba(images), local.predict_proba(images), atol=1e-6)
        assert remote.num_classes == 4 and remote.calls == len(images)
    finally:
        server.shutdown()


# --- through the service ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def service(tmp_path_factory, encoder_files, encoders, bad):
    """A served index whose rows point at: two real model servers, a slow one, and (legacy) unverified URLs."""
    from proxylab.retrieval.index import ModelIndex
    from proxylab.retrieval.model_server import serve_model

    folder = tmp_path_factory.mktemp("outbound")
    goods = {name: serve_model(linear_model(3, seed=seed)) for name, seed in GOOD_SEEDS.items()}
    rng = np.random.default_rng(0)
    # the query's own vector, then ever farther ones: re-ranking meets good-a, good-b, slow first, in that order
    q = encoders.encode_query(*samples(n_per_class=4, classes=3, seed=3))
    vectors = {name: q + scale * rng.normal(size=ENC_DIM) / np.sqrt(ENC_DIM)
               for name, scale in (("good-a", 0.0), ("good-b", 0.1), ("slow", 0.3))}
    index = ModelIndex.create(str(folder / "index"), dim=ENC_DIM)
    rows = {**{name: {"source": "url", "url": server.url.rstrip("/")} for name, server in goods.items()},
            "slow": {"source": "url", "url": bad.url("slowpredict")},
            "legacy-vector": {"source": "vector", "url": bad.url("counting")},  # written before url was refused
            "legacy-signature": {"source": "signature", "url": bad.url("counting")},
            "plain": {"source": "vector"}}
    for name, extra in rows.items():
        v = vectors.get(name, rng.normal(size=ENC_DIM)).astype(np.float32)
        index.add(v / np.linalg.norm(v), {"name": name, "num_classes": 3, **extra})
    index.save()
    index.close()

    def load():
        from proxylab.retrieval.encoders import Encoders
        from proxylab.retrieval.features import FeatureExtractor

        return Encoders.load(encoder_files["encoders"], extractor=FeatureExtractor.load(encoder_files["extractor"]))

    tokens = write_tokens(folder / "tokens.txt")
    from proxylab.service.auth import load_tokens

    with InProcessServer(folder / "index", tokens=load_tokens(str(tokens)), encoders=load, fetch_seconds=1.5,
                         fetch_max_bytes=LIMIT) as srv:
        with httpx.Client(base_url=srv.url, timeout=60) as http:
            yield srv, http
    for server in goods.values():
        server.shutdown()


def test_health_reports_the_outbound_limits(service):
    _, http = service
    health = http.get("/v1/health").json()
    assert health["fetch_seconds"] == 1.5 and health["fetch_max_bytes"] == LIMIT


@pytest.mark.parametrize("mode, words", [("slow", "within 1.5 s"), ("silent", "within 1.5 s"),
                                         ("huge", f"limit of {LIMIT} bytes"), ("endless", f"limit of {LIMIT} bytes"),
                                         ("redirect", "redirects are not followed")])
def test_url_registration_of_a_misbehaving_server_is_a_fast_422(service, bad, mode, words):
    _, http = service
    total = http.get("/v1/models").json()["total"]
    start = time.monotonic()
    r = http.post("/v1/models", json={"url": bad.url(mode), "metadata": {"name": f"bad-{mode}"}}, headers=WRITE)
    seconds = time.monotonic() - start
    assert r.status_code == 422 and words in r.json()["error"] and "probing the model server" in r.json()["error"]
    assert seconds < 5, seconds
    assert http.get("/v1/models").json()["total"] == total  # nothing registered


def test_a_url_beside_a_vector_or_signature_is_refused(service, encoders):
    from tests.service.conftest import make_signature

    _, http = service
    r = http.post("/v1/models", json={"vector": [1.0] * ENC_DIM, "metadata": {"name": "v", "url": "http://10.0.0.1"}},
                  headers=WRITE)
    assert r.status_code == 422 and "metadata.url is not accepted" in r.json()["error"]
    sig = make_signature(encoders, 3, seed=4).to_bytes()
    r = http.post("/v1/models", files={"signature": ("s.npz", sig)},
                  data={"metadata": json.dumps({"name": "s", "url": "http://10.0.0.1"})}, headers=WRITE)
    assert r.status_code == 422 and "register it by URL" in r.json()["error"]
    r = http.post("/v1/models", files={"signature": ("s.npz", sig)}, data={"metadata": json.dumps({"name": "s"})},
                  headers=WRITE)
    assert r.status_code == 201 and "url" not in r.json()  # the same upload without the url is fine


def test_reranking_calls_only_probed_urls_within_the_budget(service, bad):
    from proxylab.retrieval.rerank import leep

    _, http = service
    images, labels = samples(n_per_class=4, classes=3, seed=3)
    before = [p for p in bad.paths if p.startswith("/counting")]
    start = time.monotonic()
    r = http.post("/v1/query", files={"samples": ("q.npz", npz_bytes(images=images, labels=labels))},
                  data={"k": "10", "rerank": "true"})
    seconds = time.monotonic() - start
    assert r.status_code == 200, r.text
    results = {row["metadata"]["name"]: row for row in r.json()["results"]}
    # the real model servers are re-scored exactly as LEEP on their probabilities computed here, best first
    expect = {name: leep(linear_model(3, seed=seed).predict_proba(images), labels) for name, seed in GOOD_SEEDS.items()}
    for name, value in expect.items():
        assert results[name]["rerank"] == "leep" and results[name]["rerank_score"] == pytest.approx(value, abs=1e-5)
    assert [row["metadata"]["name"] for row in r.json()["results"][:3]] == [*sorted(expect, key=lambda n: -expect[n]),
                                                                            "slow"]
    assert results["slow"]["rerank"].startswith("failed") and "within" in results["slow"]["rerank"]
    for name in ("legacy-vector", "legacy-signature"):
        assert "never called" in results[name]["rerank"]
    assert "without a URL" in results["plain"]["rerank"]
    assert [p for p in bad.paths if p.startswith("/counting")] == before  # unverified URLs got no request at all
    assert seconds < 1.5 + 4, seconds  # the slow server cost at most the budget
    assert r.json()["calls"] == 3 * len(images)  # images sent: to the good servers and to the slow one
