"""A real HTTP model server on 127.0.0.1 (port 0) and the HTTPBlackBox that talks to it."""
import io
import json
import socket
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
import torch.nn as nn

from proxylab.errors import ProxylabError
from proxylab.retrieval.blackbox import HTTPBlackBox, TorchBlackBox
from proxylab.retrieval.model_server import serve_model


def _images(n, seed=0):
    return np.random.default_rng(seed).uniform(size=(n, 3, 32, 32)).astype(np.float32)


@pytest.fixture()
def served():
    torch.manual_seed(0)
    local = TorchBlackBox(nn.Sequential(nn.Flatten(), nn.Linear(3072, 4)), name="tiny")
    server = serve_model(local)
    yield server, local
    server.shutdown()


def _post(url, body):
    req = urllib.request.Request(url, data=body, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_http_blackbox_matches_the_local_model(served):
    server, local = served
    remote = HTTPBlackBox(server.url, batch_size=4)
    assert remote.num_classes == 4 and remote.name == "tiny"
    x = _images(10)
    p_remote = remote.predict_proba(x)
    served_calls = local.calls
    np.testing.assert_array_equal(p_remote, TorchBlackBox(local.module).predict_proba(x))
    assert remote.calls == 10 and served_calls == 10  # images counted on both sides
    # the npz protocol carries probabilities only: no gray-box features, refused before anything is sent
    assert local.supports_features and not remote.supports_features
    with pytest.raises(ProxylabError, match="exposes no features"):
        remote.features(x)
    assert remote.calls == 10


def test_concurrent_clients(served):
    server, local = served
    x = _images(6)
    expected = TorchBlackBox(local.module).predict_proba(x)
    results, errors = [], []

    def work():
        try:
            results.append(HTTPBlackBox(server.url).predict_proba(x))
        except Exception as e:  # pragma: no cover - surfaced by the assert below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert not errors and len(results) == 4
    for r in results:
        np.testing.assert_array_equal(r, expected)
    assert local.calls == 24


def test_bad_requests_get_4xx_json(served):
    server, _ = served
    code, body = _post(server.url + "/predict", b"not an npz")
    assert code == 400 and "npz" in json.loads(body)["error"]
    buf = io.BytesIO()
    np.savez(buf, pixels=_images(1))
    code, body = _post(server.url + "/predict", buf.getvalue())
    assert code == 400 and "'images'" in json.loads(body)["error"]
    buf = io.BytesIO()
    np.savez(buf, images=np.zeros((1, 3, 8, 8), np.float32))
    code, body = _post(server.url + "/predict", buf.getvalue())
    assert code == 400 and "shape" in json.loads(body)["error"]
    buf = io.BytesIO()
    np.savez(buf, images=np.array([object()], dtype=object))
    code, body = _post(server.url + "/predict", buf.getvalue())
    assert code == 400  # pickled object arrays are refused, never loaded
    code, body = _post(server.url + "/nowhere", b"")
    assert code == 404
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(server.url + "/other", timeout=10)
    assert e.value.code == 404


def test_client_reports_server_side_errors(served):
    server, _ = served
    remote = HTTPBlackBox(server.url)
    with pytest.raises(ProxylabError, match="shape"):
        remote.predict_proba(_images(1)[:, :, :16, :16].copy())  # refused locally before any request
    assert remote.calls == 0


def test_declared_classes_must_match(served):
    server, _ = served
    with pytest.raises(ProxylabError, match="serves 4 classes"):
        HTTPBlackBox(server.url, num_classes=3)


def test_unreachable_server():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with pytest.raises(ProxylabError, match="cannot reach"):
        HTTPBlackBox(f"http://127.0.0.1:{port}", timeout=2)
    with pytest.raises(ProxylabError, match="http://"):
        HTTPBlackBox("ftp://x")


class _LyingHandler(BaseHTTPRequestHandler):
    """A user's server whose answers are not probabilities (logits instead of softmax)."""

    def log_message(self, *a):
        pass

    def _reply(self, body, ctype):
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self._reply(json.dumps({"num_classes": 3, "name": "liar"}).encode(), "application/json")

    def do_POST(self):
        n = int(self.headers["Content-Length"])
        with np.load(io.BytesIO(self.rfile.read(n))) as z:
            count = z["images"].shape[0]
        buf = io.BytesIO()
        np.savez(buf, probs=np.tile(np.array([[2.0, -1.0, 0.5]], np.float32), (count, 1)))
        self._reply(buf.getvalue(), "application/octet-stream")


def test_client_validates_what_a_foreign_server_answers():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _LyingHandler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        remote = HTTPBlackBox(f"http://127.0.0.1:{httpd.server_address[1]}")
        with pytest.raises(ProxylabError, match="liar.*negative"):
            remote.predict_proba(_images(2))
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_serve_plain_module_and_refuse_others():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3072, 2))
    with serve_model(net) as server:
        assert HTTPBlackBox(server.url).num_classes == 2
    with pytest.raises(ProxylabError, match="BlackBoxModel"):
        serve_model(object())


def test_missing_content_length_is_refused(served):
    import http.client

    server, _ = served
    host, port = server.url.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.putrequest("POST", "/predict")
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 411 and "Content-Length" in json.loads(resp.read())["error"]
    conn.close()


def test_oversized_body_is_refused_unread(served, monkeypatch):
    from proxylab.retrieval import model_server

    server, local = served
    monkeypatch.setattr(model_server, "MAX_BODY_BYTES", 1000)
    buf = io.BytesIO()
    np.savez(buf, images=_images(2))
    code, body = _post(server.url + "/predict", buf.getvalue())
    assert code == 413 and "exceeds" in json.loads(body)["error"] and local.calls == 0


def test_a_model_that_fails_on_valid_images_is_a_500_not_the_clients_fault():
    from proxylab.utils import npz_bytes

    class Flaky(nn.Module):  # fine for the one-image set-up probe, fails on a real batch
        def __init__(self):
            super().__init__()
            self.fc = nn.Sequential(nn.Flatten(), nn.Linear(3072, 3))

        def forward(self, x):
            if x.shape[0] > 1:
                raise RuntimeError("out of something")
            return self.fc(x)

    with serve_model(TorchBlackBox(Flaky())) as server:
        status, body = _post(server.url + "/predict", npz_bytes(images=_images(2)))
    assert status == 500
    assert "the model failed" in json.loads(body)["error"] and "out of something" in json.loads(body)["error"]
