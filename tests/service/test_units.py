"""Tokens, payload checks and the metrics text, without a server (fast, with plain-Python oracles)."""
import math
import re

import numpy as np
import pytest

from proxylab.errors import ProxylabError
from proxylab.utils import npz_bytes
from proxylab.service.auth import AuthError, TokenChecker, parse_tokens
from proxylab.service.metrics import BUCKETS, Metrics
from proxylab.service.payloads import (check_json_value, check_samples, check_vector, load_npz, loads_json,
                                       parse_filters, parse_metadata)

W, R = "w" * 20, "r" * 20


def test_token_file_syntax():
    text = f"# comment\n{W}\n{R} read  # trailing comment\n\nabcdefghijklmnopq:write\n"
    assert parse_tokens(text, "f") == {W: "write", R: "read", "abcdefghijklmnopq": "write"}
    assert parse_tokens(f"{W}:write,{R}:read", "PROXYLAB_TOKENS") == {W: "write", R: "read"}


@pytest.mark.parametrize("text, words", [("short", "16 characters"), (f"{W} admin", "read|write"),
                                         (f"{W} read\n{W} write", "twice"), ("bad token with spaces ok", "TOKEN")])
def test_bad_token_files_name_the_entry(text, words):
    with pytest.raises(ProxylabError, match=re.escape(words)):
        parse_tokens(text, "tokens.txt")


def status_of(checker, header, need):
    try:
        checker.require(header, need)
        return 200
    except AuthError as e:
        return e.status


@pytest.mark.parametrize("open_reads", [True, False])
def test_401_versus_403(open_reads):
    c = TokenChecker({W: "write", R: "read"}, open_reads=open_reads)
    table = {None: (200 if open_reads else 401, 401), f"Bearer {R}": (200, 403), f"Bearer {W}": (200, 200),
             "Bearer nope-nope-nope-nope": (401, 401), f"Basic {W}": (401, 401), "Bearer ": (401, 401)}
    for header, (read, write) in table.items():
        assert (status_of(c, header, "read"), status_of(c, header, "write")) == (read, write), header


def test_vector_is_normalised_like_numpy_even_at_extreme_scales():
    rng = np.random.default_rng(0)
    for scale in (1.0, 1e300, 1e-300):
        v = rng.normal(size=16) * scale
        got = check_vector(v.tolist(), 16)
        expect = (v / scale) / np.linalg.norm(v / scale)
        np.testing.assert_allclose(got, expect, rtol=1e-6)
        assert got.dtype == np.float32 and math.isclose(float(np.linalg.norm(got)), 1.0, rel_tol=1e-6)


@pytest.mark.parametrize("value, words", [([1.0] * 3, "has 3"), ([0.0] * 4, "zeros"), ([True] * 4, "numbers"),
                                          ([1, 2, 3, float("inf")], "non-finite"), ("1,2,3,4", "list")])
def test_bad_vectors(value, words):
    with pytest.raises(ProxylabError, match=words):
        check_vector(value, 4)


def test_json_refuses_nan_and_names_the_part():
    with pytest.raises(ProxylabError, match="metadata: NaN"):
        loads_json('{"x": NaN}', "metadata")
    with pytest.raises(ProxylabError, match="filters is not valid JSON"):
        loads_json("{", "filters")


@pytest.mark.parametrize("value, words", [({"a": "\ud800"}, "UTF-8"), ({"a": 2**64}, "64 bits"),
                                          ({"a": float("nan")}, "finite"), ({"a": {1, 2}}, "JSON types"),
                                          ({"a": [[[[[[[[[[1]]]]]]]]]]}, "nested")])
def test_json_values_that_would_break_storage_or_responses(value, words):
    with pytest.raises(ProxylabError, match=words):
        check_json_value(value, "metadata")


def test_metadata_and_filters():
    assert parse_metadata({"name": "m", "params": 3, "homepage": "http://h:1/"})["homepage"] == "http://h:1/"
    for bad in ({"name": ""}, {"name": "m", "num_classes": 1}, {"name": "m", "source": "x"}):
        with pytest.raises(ProxylabError):
            parse_metadata(bad)
    # a url beside a vector or signature is refused: only URLs probed at registration are ever called
    for url in ("http://h:1", "http://169.254.169.254/latest", 7):
        with pytest.raises(ProxylabError, match="metadata.url is not accepted.*register it by URL"):
            parse_metadata({"name": "m", "url": url})
    assert parse_filters({"family": ["a", "b"], "params_min": 1}) == {"family": ["a", "b"], "params_min": 1}
    with pytest.raises(ProxylabError, match="unknown filter"):
        parse_filters({"size": 1})


def test_npz_size_is_checked_before_decompressing(monkeypatch):
    import proxylab.service.payloads as payloads

    data = npz_bytes(True, a=np.zeros(1_000_000, np.float32))  # True: compressed
    assert len(data) < 20_000
    with monkeypatch.context() as m:
        m.setattr(payloads, "read_npz", lambda *a, **k: pytest.fail("decompressed before the size check"))
        with pytest.raises(ProxylabError, match="unpacks to"):
            load_npz(data, "upload", max_bytes=1_000_000)
    assert load_npz(data, "upload", max_bytes=5_000_000)["a"].shape == (1_000_000,)


def test_samples_are_clipped_and_labels_kept():
    x = np.full((4, 3, 32, 32), 1.0005, np.float32)
    images, labels = check_samples({"images": x, "labels": np.array([3, 3, 7, 7], np.int32)})
    assert images.max() == 1.0 and labels.dtype == np.int64 and labels.tolist() == [3, 3, 7, 7]


def test_metrics_histogram_is_cumulative_and_counts_match():
    m = Metrics()
    durations = [0.0005, 0.003, 0.003, 0.2, 40.0]
    for d in durations:
        m.observe("GET", "/v1/x", 200, d)
    m.observe("GET", "/v1/x", 404, 0.001)
    m.gauge("proxylab_index_models", lambda: 7, "models")
    text = m.render()
    buckets = {}
    for line in text.splitlines():
        match = re.match(r'proxylab_http_request_duration_seconds_bucket\{route="/v1/x",le="([^"]+)"\} (\d+)', line)
        if match:
            buckets[match.group(1)] = int(match.group(2))
    all_d = durations + [0.001]
    for bound in BUCKETS:  # Prometheus buckets are cumulative: le = "less than or equal"
        assert buckets[str(bound)] == sum(d <= bound for d in all_d)
    assert buckets["+Inf"] == len(all_d)
    assert 'proxylab_http_requests_total{method="GET",route="/v1/x",status="404"} 1' in text
    assert "proxylab_index_models 7" in text
    assert "# TYPE proxylab_http_request_duration_seconds histogram" in text


def test_an_unexpected_error_is_a_logged_500_with_no_internals(tmp_path, caplog):
    from fastapi.testclient import TestClient

    from proxylab.service.app import create_app

    app = create_app(tmp_path / "index", tokens={W: "write"}, dim=4)

    @app.get("/boom")
    def boom():  # a stand-in for a bug: the only way to reach the catch-all handler
        raise RuntimeError("secret internal detail")

    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.get("/boom")
        assert r.status_code == 500 and "secret" not in r.text and "log" in r.json()["error"]
        assert client.get("/v1/health").status_code == 200
    assert any("secret internal detail" in (rec.exc_text or str(rec.exc_info)) for rec in caplog.records)


def test_tokens_are_hashed_once_not_per_request(monkeypatch):
    import proxylab.service.auth as auth

    tokens = {f"token-{i:02d}-0123456789abcdef": ("write" if i % 2 else "read") for i in range(40)}
    checker = TokenChecker(tokens)
    hashed = []
    real = auth._digest
    monkeypatch.setattr(auth, "_digest", lambda t: hashed.append(t) or real(t))
    for token, scope in tokens.items():
        checker.require(f"Bearer {token}", "read")
        assert status_of(checker, f"Bearer {token}", "write") == (200 if scope == "write" else 403)
    assert len(hashed) == 2 * len(tokens)  # the candidate only, once per request, whatever the number of tokens
    for near in ("token-01-0123456789abcde", "token-01-0123456789abcdef0", "token-01-0123456789abcdeF", "é" * 20):
        assert status_of(checker, f"Bearer {near}", "read") == 401  # prefix, longer, case, non-ASCII: all unknown
    assert W not in repr(vars(TokenChecker({W: "write"})))  # the clear tokens are not kept


def test_both_upload_routes_document_json_and_multipart_bodies(tmp_path):
    from fastapi.testclient import TestClient

    from proxylab.service.app import create_app

    app = create_app(tmp_path / "index", tokens={W: "write"}, dim=4)
    with TestClient(app) as client:
        spec = client.get("/openapi.json").json()
    required = {"/v1/models": ({"signature", "metadata"}, {"metadata"}), "/v1/query": ({"samples"}, {"vector"})}
    for path, (multipart, json_needs) in required.items():
        post = spec["paths"][path]["post"]
        content = post["requestBody"]["content"]
        assert post["requestBody"]["required"] is True
        assert set(content["multipart/form-data"]["schema"]["required"]) == multipart
        assert set(content["application/json"]["schema"]["required"]) == json_needs
        assert {"413", "422"} <= set(post["responses"])
    assert "url" not in content["application/json"]["schema"]["properties"]  # queries never take a URL


def test_signature_uploads_are_parsed_under_the_npz_lock(monkeypatch):
    """Signature.from_bytes goes through utils.read_npz, whose lock makes concurrent np.load safe."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import proxylab.utils as utils
    from proxylab.retrieval.signature import Signature

    rng = np.random.default_rng(0)
    pairs = np.array([(0, 1), (0, 2), (1, 2)], np.int64)
    sig = Signature(rng.normal(size=(3, 8)).astype(np.float32), rng.normal(size=(3, 8)).astype(np.float32), pairs,
                    3, 10, "fx", 0)
    data = sig.to_bytes()

    class CountingLock:
        def __init__(self):
            self.lock, self.entered = threading.Lock(), 0

        def __enter__(self):
            self.lock.acquire()
            self.entered += 1

        def __exit__(self, *exc):
            self.lock.release()

    lock = CountingLock()
    monkeypatch.setattr(utils, "_NPZ_LOCK", lock)
    with ThreadPoolExecutor(8) as pool:
        back = list(pool.map(lambda _: Signature.from_bytes(data).to_bytes(), range(64)))
    assert lock.entered >= 64 and all(b == data for b in back)
    with pytest.raises(ProxylabError, match="not a proxylab signature.*pickle"):
        Signature.from_bytes(npz_bytes(format=np.array("proxylab-signature-1"), anchors=np.array([{}], dtype=object)))
