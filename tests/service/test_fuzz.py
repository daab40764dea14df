"""Hypothesis-driven fuzz of every endpoint of a real server: whatever a client sends, no 5xx.

Strategies mix valid and broken parts (right dimension or not, real npz or junk, NaN, huge numbers, odd text,
wrong content types, random tokens), so requests reach deep into validation rather than bouncing off the first
check. The fast run is derandomized (the same cases every CI run); the slow one explores with fresh randomness.
"""
import io
import json
import socket
from urllib.parse import quote

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.service.conftest import ENC_DIM
from tests.service.server import READ_TOKEN, WRITE, WRITE_TOKEN, Server

FAST, SLOW = 60, 500

numbers = st.one_of(st.integers(-2**70, 2**70), st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from([0, 1, -1, 0.5, 1e308, -1e-320]))
texts = st.one_of(st.text(max_size=20), st.sampled_from(["", "digits", "resnet", "\x00", "é", "a" * 600]))
json_values = st.recursive(st.one_of(st.none(), st.booleans(), numbers, texts),
                           lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                   st.dictionaries(texts, inner, max_size=4)),
                           max_leaves=12)
vectors = st.one_of(st.lists(numbers, min_size=ENC_DIM, max_size=ENC_DIM),
                    st.lists(st.floats(-1, 1), min_size=ENC_DIM, max_size=ENC_DIM),
                    st.lists(json_values, max_size=ENC_DIM + 2), json_values)
filter_keys = st.sampled_from(["task", "family", "arch", "params_min", "params_max", "num_classes", "colour"])
filters = st.one_of(json_values, st.dictionaries(filter_keys, json_values, max_size=4))
metadata = st.one_of(json_values, st.fixed_dictionaries(
    {"name": texts}, optional={"task": json_values, "params": json_values, "num_classes": json_values,
                               "url": json_values, "family": texts, "extra": json_values, "id": numbers}))
headers = st.one_of(st.just({}), st.just(WRITE), st.just({"Authorization": f"Bearer {READ_TOKEN}"}),
                    st.builds(lambda scheme, t: {"Authorization": scheme + t}, st.sampled_from(["", "Bearer ", "bearer "]),
                              st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=40)))

DTYPES = ["float32", "float64", "float16", "uint8", "int64", "bool", "complex64"]
SHAPES = [(4, 3, 32, 32), (1, 3, 32, 32), (6, 3, 32, 32), (4, 3, 32), (4, 1, 32, 32), (0, 3, 32, 32), (2,), ()]


@st.composite
def arrays(draw, shapes=SHAPES, dtypes=DTYPES):
    shape = draw(st.sampled_from(shapes))
    dtype = draw(st.sampled_from(dtypes))
    fill = draw(st.sampled_from(["uniform", "nan", "big", "zeros", "labels"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    x = {"uniform": lambda: rng.random(shape), "zeros": lambda: np.zeros(shape),
         "nan": lambda: np.where(rng.random(shape) > 0.9, np.nan, rng.random(shape)),
         "big": lambda: rng.normal(size=shape) * 1e6,
         "labels": lambda: rng.integers(-1, 4, size=shape)}[fill]()
    with np.errstate(invalid="ignore", over="ignore"):
        return x.astype(dtype)


@st.composite
def npz_files(draw, keys):
    choice = draw(st.sampled_from(["npz", "npz", "npz", "junk", "truncated", "empty"]))
    if choice == "junk":
        return draw(st.binary(max_size=200))
    if choice == "empty":
        return b""
    content = {k: draw(arrays()) for k in draw(st.lists(st.sampled_from(keys), max_size=len(keys), unique=True))}
    buf = io.BytesIO()
    (np.savez_compressed if draw(st.booleans()) else np.savez)(buf, **content)
    data = buf.getvalue()
    return data[: draw(st.integers(0, len(data)))] if choice == "truncated" else data


@st.composite
def sample_queries(draw):
    """A multipart query; often a well-formed one (4 images, 2 classes) so deeper checks are reached."""
    if draw(st.booleans()):
        rng = np.random.default_rng(draw(st.integers(0, 100)))
        buf = io.BytesIO()
        np.savez(buf, images=rng.random((4, 3, 32, 32), dtype=np.float32), labels=np.array([0, 0, 1, 1]))
        body = buf.getvalue()
    else:
        body = draw(npz_files(["images", "labels", "other"]))
    data = draw(st.dictionaries(st.sampled_from(["k", "filters", "rerank", "method", "junk"]),
                                st.one_of(texts, st.sampled_from(["3", "0", "-1", "9" * 30, "true", "nce", "{}",
                                                                  '{"task": "t"}'])), max_size=4))
    return {"files": {draw(st.sampled_from(["samples", "samples", "images"])): ("s.npz", body)}, "data": data}


@st.composite
def signatures(draw, extractor_id):
    """A multipart registration: a real signature layout with random contents, or a broken one."""
    if draw(st.booleans()):
        k = draw(st.integers(0, 4))
        d = draw(st.sampled_from([128, 7]))
        pairs = np.array([(i, j) for i in range(k) for j in range(i + 1, k)], np.int64).reshape(-1, 2)
        if draw(st.booleans()) and len(pairs):
            pairs = pairs[::-1].copy()  # invalid order
        rng = np.random.default_rng(draw(st.integers(0, 100)))
        anchors = rng.normal(size=(k, d)).astype(np.float32)
        if draw(st.booleans()) and k:
            anchors[0, 0] = np.nan
        buf = io.BytesIO()
        np.savez(buf, format=np.array(draw(st.sampled_from(["proxylab-signature-1", "other"]))), anchors=anchors,
                 boundary=rng.normal(size=(len(pairs), d)).astype(np.float32), pairs=pairs,
                 num_classes=np.int64(draw(st.integers(-1, 5))), calls=np.int64(draw(st.integers(-5, 10**6))),
                 extractor=np.array(draw(st.sampled_from([extractor_id, "fx-other"]))), seed=np.int64(0))
        body = buf.getvalue()
    else:
        body = draw(npz_files(["anchors", "boundary", "pairs", "num_classes", "format"]))
    meta = draw(st.one_of(st.builds(json.dumps, metadata), texts))
    return {"files": {"signature": ("sig.npz", body)}, "data": {"metadata": meta}}


@pytest.fixture(scope="module")
def server(tmp_path_factory, tokens_file, encoder_files):
    folder = tmp_path_factory.mktemp("fuzz")
    srv = Server(folder / "index", tokens_file,
                 ["--max-body-mb", "2", "--encoders", str(encoder_files["encoders"]),
                  "--extractor", str(encoder_files["extractor"])]).start()
    with httpx.Client(base_url=srv.url, timeout=60) as http:
        for i in range(5):
            http.post("/v1/models", json={"vector": [float(i + 1)] + [0.1] * (ENC_DIM - 1),
                                          "metadata": {"name": f"seed-{i}", "task": "digits", "params": i}},
                      headers=WRITE)
        yield srv, http
    log = srv.log_text()
    assert srv.stop() == 0
    assert "Traceback" not in log, log[-3000:]


def fuzz(n, strategy, send, derandomize):
    @settings(max_examples=n, deadline=None, database=None, derandomize=derandomize,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.function_scoped_fixture])
    @given(strategy)
    def check(case):
        r = send(case)
        assert r.status_code < 500, (case, r.status_code, r.text)
        if r.status_code >= 400:
            assert r.json()["error"], r.text

    check()


def endpoints(http, extractor_id, closed_port):
    """(name, strategy, send) for every route of the service."""

    def post_json(path, obj, hdrs):  # json.dumps writes NaN/Infinity literals, which the server must refuse
        return http.post(path, content=json.dumps(obj), headers={**hdrs, "content-type": "application/json"})

    urls = st.one_of(json_values, st.sampled_from([f"http://127.0.0.1:{closed_port}", "ftp://x", "http://",
                                                   "http://[::1", "https://127.0.0.1:0/"]))
    register_json = st.fixed_dictionaries({}, optional={"vector": vectors, "metadata": metadata, "url": urls,
                                                        "seed": json_values, "other": json_values})
    query_json = st.fixed_dictionaries({}, optional={"vector": vectors, "k": json_values, "filters": filters,
                                                     "rerank": json_values})
    list_params = st.dictionaries(st.sampled_from(["task", "family", "arch", "params_min", "params_max",
                                                   "num_classes", "limit", "offset", "junk"]),
                                  st.one_of(texts, st.integers(-2**70, 2**70).map(str)), max_size=5)
    ids = st.one_of(st.integers(-5, 2**70).map(str), texts.map(lambda t: quote(t, safe="")))
    raw = st.tuples(st.sampled_from(["/v1/models", "/v1/query"]), st.binary(max_size=300),
                    st.sampled_from(["application/json", "multipart/form-data", "multipart/form-data; boundary=x",
                                     "text/plain", "", "application/x-www-form-urlencoded"]))
    return [
        ("register-json", st.tuples(register_json, headers),
         lambda c: post_json("/v1/models", c[0], c[1])),
        ("register-signature", st.tuples(signatures(extractor_id), headers),
         lambda c: http.post("/v1/models", **c[0], headers=c[1])),
        ("query-json", st.tuples(query_json, headers), lambda c: post_json("/v1/query", c[0], c[1])),
        ("query-samples", sample_queries(), lambda c: http.post("/v1/query", **c)),
        ("list", st.tuples(list_params, headers), lambda c: http.get("/v1/models", params=c[0], headers=c[1])),
        ("get", st.tuples(ids, st.sampled_from(["", "?vector=true", "?vector=maybe"])),
         lambda c: http.get(f"/v1/models/{c[0]}{c[1]}")),
        ("delete", st.tuples(ids, headers), lambda c: http.delete(f"/v1/models/{c[0]}", headers=c[1])),
        ("raw-bodies", st.tuples(raw, headers),
         lambda c: http.post(c[0][0], content=c[0][1], headers={**c[1], "content-type": c[0][2]})),
        ("health-metrics-docs", st.sampled_from(["/v1/health", "/metrics", "/openapi.json", "/docs", "/nowhere"]),
         lambda path: http.get(path)),
    ]


NAMES = ["register-json", "register-signature", "query-json", "query-samples", "list", "get", "delete",
         "raw-bodies", "health-metrics-docs"]


def _run(server, encoders, name, n, derandomize):
    srv, http = server
    with socket.socket() as held:  # a port that refuses connections for the whole run (bound, not listening)
        held.bind(("127.0.0.1", 0))
        found = {e[0]: e for e in endpoints(http, encoders.extractor_id, held.getsockname()[1])}
        _, strategy, send = found[name]
        fuzz(n, strategy, send, derandomize)
    assert http.get("/v1/health").status_code == 200  # still alive and answering


@pytest.mark.parametrize("name", NAMES)
def test_no_input_gives_a_5xx(server, encoders, name):
    _run(server, encoders, name, FAST, derandomize=True)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_no_input_gives_a_5xx_long(server, encoders, name):
    _run(server, encoders, name, SLOW, derandomize=False)


def test_the_write_token_can_still_register_after_fuzzing(server):
    _, http = server
    r = http.post("/v1/models", json={"vector": [1.0] * ENC_DIM, "metadata": {"name": "after-fuzz"}},
                  headers={"Authorization": f"Bearer {WRITE_TOKEN}"})
    assert r.status_code == 201
