"""401 vs 403, private reads, and every error status (404, 409, 413, 415, 422) with a message that says what is wrong."""
import io
import json

import httpx
import numpy as np
import pytest

from tests.service.conftest import ENC_DIM
from tests.service.server import READ, WRITE, WRITE_TOKEN, Server, raw_request

MAX_BODY_MB = 0.25


@pytest.fixture(scope="module")
def server(tmp_path_factory, tokens_file, encoder_files):
    folder = tmp_path_factory.mktemp("errors")
    srv = Server(folder / "index", tokens_file,
                 ["--dim", str(ENC_DIM), "--max-body-mb", str(MAX_BODY_MB),
                  "--encoders", str(encoder_files["encoders"]), "--extractor", str(encoder_files["extractor"])])
    srv.start()
    with httpx.Client(base_url=srv.url, timeout=60) as http:
        r = http.post("/v1/models", json={"vector": [1.0] * ENC_DIM, "metadata": {"name": "m0"}}, headers=WRITE)
        assert r.status_code == 201
        srv.model_id = r.json()["id"]
        yield srv, http
    assert srv.stop() == 0, srv.log_text()[-2000:]


def npz(**arrays):
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def vector_body(name="x"):
    return {"vector": [0.5] * ENC_DIM, "metadata": {"name": name}}


def error(r, status):
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert isinstance(body["error"], str) and body["error"]
    return body["error"]


# --- auth -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer not-a-known-token-1234"},
                                     {"Authorization": "Basic dXNlcjpwYXNz"}, {"Authorization": "Bearer"}])
def test_writes_without_a_valid_token_are_401(server, headers):
    srv, http = server
    for r in (http.post("/v1/models", json=vector_body(), headers=headers),
              http.delete(f"/v1/models/{srv.model_id}", headers=headers)):
        error(r, 401)
        assert r.headers["www-authenticate"].startswith("Bearer")
    error(http.delete("/v1/models/not-an-id", headers=headers), 401)  # auth before parameter validation
    assert http.get(f"/v1/models/{srv.model_id}").status_code == 200  # nothing was deleted


def test_read_token_writing_is_403(server):
    srv, http = server
    assert "write" in error(http.post("/v1/models", json=vector_body(), headers=READ), 403)
    error(http.delete(f"/v1/models/{srv.model_id}", headers=READ), 403)
    assert http.get(f"/v1/models/{srv.model_id}").status_code == 200


def test_reads_are_open_but_a_bad_token_is_still_401(server):
    _, http = server
    assert http.get("/v1/models").status_code == 200
    assert http.get("/v1/models", headers=READ).status_code == 200
    error(http.get("/v1/models", headers={"Authorization": "Bearer wrong-token-0000000000"}), 401)


def test_write_token_registers(server):
    _, http = server
    r = http.post("/v1/models", json=vector_body("by-writer"), headers=WRITE)
    assert r.status_code == 201 and r.headers["location"] == f"/v1/models/{r.json()['id']}"


def test_private_service_closes_reads(tmp_path, tokens_file):
    srv = Server(tmp_path / "private", tokens_file, ["--dim", "4", "--private"]).start()
    try:
        with httpx.Client(base_url=srv.url, timeout=120) as http:
            error(http.get("/v1/models"), 401)
            error(http.get("/v1/models", params={"limit": 0}), 401)  # auth before parameter validation
            error(http.get("/v1/models/not-an-id"), 401)
            error(http.post("/v1/query", json={"vector": [1, 0, 0, 0]}), 401)
            assert http.get("/v1/models", headers=READ).status_code == 200
            assert http.post("/v1/query", json={"vector": [1, 0, 0, 0]}, headers=READ).status_code == 200
            error(http.post("/v1/models", json={"vector": [1, 0, 0, 0], "metadata": {"name": "p"}}, headers=READ), 403)
            assert http.post("/v1/models", json={"vector": [1, 0, 0, 0], "metadata": {"name": "p"}},
                             headers=WRITE).status_code == 201
            assert http.get("/v1/health").json()["private"] is True  # health stays open for probes
            # no encoders for a 4-d index (none shipped, or the shipped ones are 128-d): a server-side 503
            body = query_npz(npz(images=GOOD_X, labels=GOOD_Y))
            assert "encoders" in error(http.post("/v1/query", **body, headers=READ), 503)
    finally:
        assert srv.stop() == 0


def test_unreadable_encoders_stop_the_start(tmp_path, tokens_file):
    import subprocess
    import sys

    (tmp_path / "enc.pt").write_bytes(b"not torch")
    out = subprocess.run([sys.executable, "-m", "proxylab.cli", "serve", "--index", str(tmp_path / "i"),
                          "--encoders", str(tmp_path / "enc.pt"), "--port", "1"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2 and "encoder" in out.stderr


def test_private_without_tokens_refuses_to_start(tmp_path):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "proxylab.cli", "serve", "--index", str(tmp_path / "i"), "--dim", "4",
                          "--private"], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"}, timeout=60)
    assert out.returncode == 2 and "no tokens" in out.stderr


# --- 404 / 409 / 413 / 415 ----------------------------------------------------------------------------------

def test_unknown_ids_and_routes_are_404(server):
    _, http = server
    assert "no model with id 999" in error(http.get("/v1/models/999"), 404)
    error(http.delete("/v1/models/999", headers=WRITE), 404)
    assert "/v1" in error(http.get("/v2/models"), 404)


def test_duplicate_name_is_409(server):
    _, http = server
    assert "m0" in error(http.post("/v1/models", json=vector_body("m0"), headers=WRITE), 409)


def test_body_over_the_limit_is_413(server):
    _, http = server
    big = b"0" * int(MAX_BODY_MB * (1 << 20) + 10)
    assert "limit" in error(http.post("/v1/query", content=big, headers={"content-type": "application/json"}), 413)
    files = {"samples": ("s.npz", big)}
    error(http.post("/v1/query", files=files), 413)

    def chunked():  # no Content-Length: the limit must hold while streaming
        for _ in range(64):
            yield b"1" * 8192
    error(http.post("/v1/models", content=chunked(), headers={**WRITE, "content-type": "application/json"}), 413)


FIFTY_MB = 50 << 20


def upload_head(path, length, token=None, expect=False):
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json", f"Content-Length: {length}"]
    lines += [f"Authorization: Bearer {token}"] if token else []
    lines += ["Expect: 100-continue"] if expect else []
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("expect", [False, True], ids=["plain", "expect-100-continue"])
def test_an_unauthenticated_50mb_upload_is_refused_fast_without_being_read(server, expect):
    srv, _ = server
    # 16 KiB of the 50 MB are sent: a server that read (or drained) the body before answering would hang here
    status, headers, body, seconds, closed = raw_request(srv.url, upload_head("/v1/models", FIFTY_MB, expect=expect),
                                                         b"" if expect else b" " * (16 << 10))
    assert status == 401 and "bearer token" in json.loads(body)["error"]  # with Expect: no 100 Continue first
    assert seconds < 5, seconds
    assert headers["connection"] == "close" and closed  # hung up instead of reading the other 49.98 MB
    status, _, _, _, _ = raw_request(srv.url, upload_head("/v1/models", FIFTY_MB, token="not-a-known-token-1234"))
    assert status == 401


def test_an_over_long_content_length_is_413_unread_once_the_token_passes(server):
    srv, _ = server
    for path, token in (("/v1/models", WRITE_TOKEN), ("/v1/query", None)):  # reads are open on this server
        status, headers, body, seconds, closed = raw_request(srv.url, upload_head(path, FIFTY_MB, token, expect=True))
        assert status == 413 and str(FIFTY_MB) in json.loads(body)["error"] and "limit" in json.loads(body)["error"]
        assert seconds < 5 and headers["connection"] == "close" and closed


def test_a_small_refused_body_keeps_the_connection(server):
    srv, _ = server
    payload = json.dumps(vector_body("small")).encode()
    status, headers, _, _, closed = raw_request(srv.url, upload_head("/v1/models", len(payload)), payload)
    assert status == 401 and headers.get("connection") != "close" and not closed  # drained, kept alive


def test_unsupported_content_type_is_415(server):
    _, http = server
    error(http.post("/v1/query", content=b"vector=1", headers={"content-type": "text/plain"}), 415)


# --- 422 with a message naming the problem ------------------------------------------------------------------

def query_npz(body: bytes, **fields):
    return {"files": {"samples": ("s.npz", body)}, "data": fields}


GOOD_X = np.random.default_rng(0).random((6, 3, 32, 32), dtype=np.float32)
GOOD_Y = np.array([0, 0, 1, 1, 2, 2])


@pytest.mark.parametrize("arrays, words", [
    (dict(images=GOOD_X[:, :1], labels=GOOD_Y), "shape"),
    (dict(images=GOOD_X[..., :16], labels=GOOD_Y), "shape"),
    (dict(images=(GOOD_X * 255).astype(np.uint8), labels=GOOD_Y), "dtype"),
    (dict(images=np.where(GOOD_X > 0.5, np.nan, GOOD_X).astype(np.float32), labels=GOOD_Y), "NaN"),
    (dict(images=GOOD_X * 3, labels=GOOD_Y), "[0, 1]"),
    (dict(images=GOOD_X, labels=np.zeros(6, np.int64)), "two classes"),
    (dict(images=GOOD_X), "labels"),
    (dict(images=GOOD_X, labels=-np.ones(6, np.int64)), "unlabelled"),
    (dict(images=GOOD_X, labels=GOOD_Y[:4]), "one label per image"),
    (dict(images=GOOD_X, labels=GOOD_Y.astype(np.float32)), "integers"),
    (dict(images=GOOD_X[:0], labels=GOOD_Y[:0]), "empty"),
    (dict(labels=GOOD_Y), "images"),
])
def test_bad_samples_are_422(server, arrays, words):
    _, http = server
    assert words in error(http.post("/v1/query", **query_npz(npz(**arrays))), 422)


def test_bad_npz_files_are_422(server):
    _, http = server
    assert ".npz" in error(http.post("/v1/query", **query_npz(b"not a zip at all")), 422)
    valid = npz(images=GOOD_X, labels=GOOD_Y)
    error(http.post("/v1/query", **query_npz(valid[: len(valid) // 2])), 422)
    obj = npz(images=np.array([{"a": 1}], dtype=object), labels=GOOD_Y)
    assert "pickle" in error(http.post("/v1/query", **query_npz(obj)), 422)


def test_compressed_bomb_is_refused_before_unpacking(server):
    _, http = server
    buf = io.BytesIO()
    np.savez_compressed(buf, images=np.zeros((3000, 3, 32, 32), np.float32), labels=np.zeros(3000, np.int64))
    assert len(buf.getvalue()) < MAX_BODY_MB * (1 << 20)  # small on the wire ...
    assert "unpacks" in error(http.post("/v1/query", **query_npz(buf.getvalue())), 422)  # ... huge unpacked


@pytest.mark.parametrize("body, words", [
    ({"vector": [1.0] * (ENC_DIM - 1)}, str(ENC_DIM)),
    ({"vector": [0.0] * ENC_DIM}, "zeros"),
    ({"vector": ["a"] * ENC_DIM}, "numbers"),
    ({"vector": [1.0] * ENC_DIM, "k": 0}, "k"),
    ({"vector": [1.0] * ENC_DIM, "k": 10**6}, "k"),
    ({"vector": [1.0] * ENC_DIM, "filters": {"colour": "red"}}, "unknown filter"),
    ({"vector": [1.0] * ENC_DIM, "filters": {"params_min": "big"}}, "integer"),
    ({"vector": [1.0] * ENC_DIM, "filters": {"params_min": 9, "params_max": 1}}, "above"),
    ({"vector": [1.0] * ENC_DIM, "rerank": True}, "multipart"),
    ({"k": 3}, "vector"),
])
def test_bad_json_queries_are_422(server, body, words):
    _, http = server
    assert words in error(http.post("/v1/query", json=body), 422)


def test_nan_in_json_is_422(server):
    _, http = server
    body = json.dumps({"vector": [1.0] * ENC_DIM}).replace("1.0", "NaN", 1)
    assert "NaN" in error(http.post("/v1/query", content=body, headers={"content-type": "application/json"}), 422)


@pytest.mark.parametrize("body, words", [
    ({"vector": [1.0] * ENC_DIM}, "metadata"),
    ({"vector": [1.0] * ENC_DIM, "metadata": {"task": "t"}}, "name"),
    ({"vector": [1.0] * ENC_DIM, "metadata": {"name": "a", "params": -1}}, "params"),
    ({"vector": [1.0] * ENC_DIM, "metadata": {"name": "a", "params": True}}, "params"),
    ({"vector": [1.0] * ENC_DIM, "metadata": {"name": "a", "id": 4}}, "metadata.id"),
    ({"vector": [1.0] * ENC_DIM, "metadata": {"name": "a", "x": 2**70}}, "64 bits"),
    ({"vector": [1.0] * ENC_DIM, "url": "http://x", "metadata": {"name": "a"}}, "exactly one"),
    ({"url": "ftp://host/model", "metadata": {"name": "a"}}, "http"),
    ({"metadata": {"name": "a"}}, "exactly one"),
    ({"vector": [1.0] * ENC_DIM, "metadata": {"name": "a"}, "extra": 1}, "unknown"),
])
def test_bad_registrations_are_422(server, body, words):
    _, http = server
    assert words in error(http.post("/v1/models", json=body, headers=WRITE), 422)


def test_unreachable_model_server_is_422(server):
    import socket

    _, http = server
    with socket.socket() as held:  # bound but not listening: refused, and no other process can take the port
        held.bind(("127.0.0.1", 0))
        body = {"url": f"http://127.0.0.1:{held.getsockname()[1]}", "metadata": {"name": "gone"}}
        message = error(http.post("/v1/models", json=body, headers=WRITE), 422)
    assert "model server" in message, message


def test_bad_signature_uploads_are_422(server):
    _, http = server
    meta = {"metadata": json.dumps({"name": "s"})}
    assert "signature" in error(http.post("/v1/models", files={"signature": ("s.npz", b"junk")}, data=meta,
                                          headers=WRITE), 422)
    wrong = npz(anchors=np.zeros((3, 4), np.float32))
    assert "signature" in error(http.post("/v1/models", files={"signature": ("s.npz", wrong)}, data=meta,
                                          headers=WRITE), 422)
    error(http.post("/v1/models", files={"signature": ("s.npz", wrong)}, data={"metadata": "{"}, headers=WRITE), 422)
    error(http.post("/v1/models", data=meta, files={"other": ("x", b"1")}, headers=WRITE), 422)


def test_bad_path_and_query_parameters_are_422(server):
    _, http = server
    error(http.get("/v1/models/abc"), 422)
    error(http.get("/v1/models/-1"), 422)
    error(http.get(f"/v1/models/{2**64}"), 422)
    error(http.get("/v1/models", params={"limit": 0}), 422)
    error(http.get("/v1/models", params={"params_min": "x"}), 422)
    assert "above" in error(http.get("/v1/models", params={"params_min": 5, "params_max": 1}), 422)


def test_a_port_in_use_is_one_clear_line(tmp_path):
    import socket
    import subprocess
    import sys

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        out = subprocess.run([sys.executable, "-m", "proxylab.cli", "serve", "--index", str(tmp_path / "i"), "--dim",
                              "4", "--port", str(port)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in out.stderr
    assert "Traceback" not in out.stderr and "ERROR:" not in out.stderr


def test_the_client_says_how_to_pass_a_token_and_wants_a_scheme(server):
    from proxylab.errors import ProxylabError
    from proxylab.service import Client
    from proxylab.service.client import ServiceError

    srv, _ = server
    with Client(srv.url) as anonymous:
        with pytest.raises(ServiceError, match=r"answered 401: .*--token or \$PROXYLAB_TOKEN") as err:
            anonymous.delete(srv.model_id)
    assert err.value.status == 401
    with Client(srv.url, token="wrong-token-0000000000") as wrong:  # a token was passed: only the server's reason
        with pytest.raises(ServiceError, match="not valid") as err:
            wrong.delete(srv.model_id)
    assert "--token" not in str(err.value)
    with pytest.raises(ProxylabError, match="must start with http:// or https://"):
        Client(srv.url.split("://", 1)[1])
