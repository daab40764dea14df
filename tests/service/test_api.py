"""The service's endpoints against a real uvicorn process, through proxylab.service.Client, with numpy oracles."""
import numpy as np
import pytest

from proxylab.service import Client, ServiceError
from tests.service.conftest import ENC_DIM, make_signature, samples
from tests.service.server import READ_TOKEN, WRITE_TOKEN, Server

TASKS = ("digits", "shapes", "animal")
FAMILIES = ("resnet", "mobilenet", "vgg")


@pytest.fixture(scope="module")
def server(tmp_path_factory, tokens_file, encoder_files):
    folder = tmp_path_factory.mktemp("api")
    srv = Server(folder / "index", tokens_file,
                 ["--encoders", str(encoder_files["encoders"]), "--extractor", str(encoder_files["extractor"])])
    srv.start()
    yield srv
    assert srv.stop() == 0, srv.log_text()[-2000:]


@pytest.fixture(scope="module")
def zoo(server):
    """Twelve models registered by vector, with the vectors and metadata kept for the oracles."""
    rng = np.random.default_rng(0)
    client = Client(server.url, token=WRITE_TOKEN)
    models = {}
    for i in range(12):
        v = rng.normal(size=ENC_DIM)
        md = {"name": f"vec-{i}", "task": TASKS[i % 3], "family": FAMILIES[i % 3 if i < 9 else 0],
              "arch": f"a{i % 2}", "params": 1000 * (i + 1), "num_classes": 2 + i % 4, "note": {"i": i}}
        row = client.register_vector(v, md)
        models[row["id"]] = (v / np.linalg.norm(v), md)
    yield client, models
    client.close()


def brute_force(models, query, k, keep=lambda md: True):
    q = query / np.linalg.norm(query)
    scored = [(float(v @ q), mid) for mid, (v, md) in models.items() if keep(md)]
    scored.sort(key=lambda t: -t[0])
    return scored[:k]


def test_health_reports_the_index(server, zoo):
    h = Client(server.url).health()
    assert h["status"] == "ok" and h["dim"] == ENC_DIM and h["models"] >= 12 and h["private"] is False


def test_registration_echoes_metadata_and_location(server, zoo):
    client, models = zoo
    mid = next(iter(models))
    row = client.get(mid)
    assert {k: row[k] for k in models[mid][1]} == models[mid][1]
    assert row["source"] == "vector" and row["id"] == mid
    stored = np.array(client.get(mid, vector=True)["vector"])
    np.testing.assert_allclose(stored, models[mid][0], atol=1e-6)


def test_list_filters_and_paging_match_python(zoo):
    client, models = zoo
    listed = client.list(limit=1000)
    ours = {m["id"] for m in listed["models"] if m["name"].startswith("vec-")}
    assert ours == set(models)
    filters = {"family": ["resnet", "vgg"], "params_min": 3000, "params_max": 9000}
    got = client.list(filters, limit=1000)
    expect = sorted(mid for mid, (_, md) in models.items()
                    if md["family"] in ("resnet", "vgg") and 3000 <= md["params"] <= 9000)
    assert [m["id"] for m in got["models"]] == expect and got["total"] == len(expect)
    pages = [client.list({"task": "digits"}, limit=2, offset=o)["models"] for o in range(0, 10, 2)]
    flat = [m["id"] for page in pages for m in page]
    assert flat == sorted(mid for mid, (_, md) in models.items() if md["task"] == "digits")


def test_vector_query_ranks_like_brute_force(zoo):
    client, models = zoo
    rng = np.random.default_rng(5)
    for _ in range(3):
        q = rng.normal(size=ENC_DIM)
        got = client.query(vector=q, k=5)["results"]
        expect = [mid for _, mid in brute_force(models, q, 5)]
        assert [r["id"] for r in got] == expect
        assert [r["rank"] for r in got] == [1, 2, 3, 4, 5]
        np.testing.assert_allclose([r["score"] for r in got], [s for s, _ in brute_force(models, q, 5)], atol=1e-5)


def test_filters_apply_inside_the_search(zoo):
    client, models = zoo
    q = np.random.default_rng(6).normal(size=ENC_DIM)
    got = client.query(vector=q, k=3, filters={"task": "shapes", "num_classes": 3})["results"]
    expect = brute_force(models, q, 3, lambda md: md["task"] == "shapes" and md["num_classes"] == 3)
    assert [r["id"] for r in got] == [mid for _, mid in expect] and len(got) == len(expect) > 0


def test_signature_registration_and_sample_query(zoo, encoders):
    client, models = zoo
    sig = make_signature(encoders, num_classes=3, seed=11)
    row = client.register_signature(sig.to_bytes(), {"name": "sig-a", "task": "digits", "arch": "linear"})
    assert row["num_classes"] == 3 and row["calls"] == sig.calls and row["source"] == "signature"
    stored = np.array(client.get(row["id"], vector=True)["vector"])
    np.testing.assert_allclose(stored, encoders.encode_signature(sig), atol=1e-6)

    images, labels = samples(seed=2)
    answer = client.query(images, labels, k=4)
    q = encoders.encode_query(images, labels)
    everything = dict(models)
    everything[row["id"]] = (stored, {})
    expect = brute_force(everything, q, 4)
    assert [r["id"] for r in answer["results"]] == [mid for _, mid in expect]
    np.testing.assert_allclose([r["score"] for r in answer["results"]], [s for s, _ in expect], atol=1e-5)
    assert answer["calls"] == 0


def test_signature_from_a_file_path(zoo, encoders, tmp_path):
    client, _ = zoo
    sig = make_signature(encoders, num_classes=4, seed=12)
    sig.save(tmp_path / "sig.npz")
    row = client.register_signature(str(tmp_path / "sig.npz"), {"name": "sig-file"})
    assert row["num_classes"] == 4
    with pytest.raises(ServiceError) as err:  # the same name twice
        client.register_signature(sig, {"name": "sig-file"})
    assert err.value.status == 409 and "already registered" in str(err.value)


def test_rerank_without_url_models_calls_nobody(zoo, encoders):
    """Only models registered by URL are re-scored (tests/service/test_outbound.py re-scores real servers); a url
    beside a signature is refused, so nothing here is reachable and the answer is the index order."""
    client, _ = zoo
    images, labels = samples(n_per_class=3, classes=3, seed=4)
    with pytest.raises(ServiceError) as err:
        client.register_signature(make_signature(encoders, 3, 21), {"name": "served-21", "url": "http://127.0.0.1:9"})
    assert err.value.status == 422 and "register it by URL" in str(err.value)
    plain = client.query(images, labels, k=50)
    answer = client.query(images, labels, k=50, rerank=True)
    assert answer["calls"] == 0 and [r["id"] for r in answer["results"]] == [r["id"] for r in plain["results"]]
    assert all(r["rerank"].startswith("skipped") and "rerank_score" not in r for r in answer["results"])


def test_delete_removes_from_get_list_and_query(server, zoo):
    client, models = zoo
    row = client.register_vector(np.ones(ENC_DIM), {"name": "to-delete"})
    assert client.query(vector=np.ones(ENC_DIM), k=1)["results"][0]["id"] == row["id"]
    assert client.delete(row["id"]) == {"deleted": row["id"], "name": "to-delete"}
    with pytest.raises(ServiceError) as err:
        client.get(row["id"])
    assert err.value.status == 404
    assert row["id"] not in [r["id"] for r in client.query(vector=np.ones(ENC_DIM), k=50)["results"]]
    with pytest.raises(ServiceError) as err:
        client.delete(row["id"])
    assert err.value.status == 404


def test_metrics_count_requests_and_models(server, zoo):
    client, _ = zoo
    client.health()
    text = client.metrics()
    health = [line for line in text.splitlines()
              if line.startswith('proxylab_http_requests_total{method="GET",route="/v1/health",status="200"}')]
    assert len(health) == 1 and int(health[0].split()[-1]) >= 1
    models = [line for line in text.splitlines() if line.startswith("proxylab_index_models ")]
    assert float(models[0].split()[-1]) == client.health()["models"]
    assert 'proxylab_http_request_duration_seconds_bucket{route="/v1/query",le="+Inf"}' in text


def test_openapi_describes_every_route(server):
    import httpx

    spec = httpx.get(server.url + "/openapi.json").json()
    assert {"/v1/health", "/v1/models", "/v1/models/{model_id}", "/v1/query", "/metrics"} <= set(spec["paths"])
    for path in ("/v1/query", "/v1/models"):
        content = spec["paths"][path]["post"]["requestBody"]["content"]
        assert set(content) == {"application/json", "multipart/form-data"}


def test_client_raises_the_server_message(server):
    with Client(server.url, token=READ_TOKEN) as reader:
        with pytest.raises(ServiceError) as err:
            reader.register_vector(np.ones(ENC_DIM), {"name": "nope"})
    assert err.value.status == 403 and "read" in err.value.server_message
    with pytest.raises(ServiceError) as err:
        Client(server.url).query(vector=np.ones(ENC_DIM + 1))
    assert err.value.status == 422 and str(ENC_DIM) in str(err.value)


def _query_file(tmp_path):
    """(images, labels, path of their .npz): a 3-class query the CLI tests send."""
    images, labels = samples(n_per_class=3, classes=3, seed=7)
    path = tmp_path / "q.npz"
    np.savez(path, images=images, labels=labels)
    return images, labels, path


def _cli_json(capsys, *argv):
    import json

    from proxylab.cli import main

    assert main([*argv, "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_zoo_query_cli_asks_the_server(server, zoo, encoders, tmp_path, capsys):
    """`proxylab zoo query --server URL`: the service encodes the samples and ranks like a local brute force."""
    from proxylab.cli import main

    client, models = zoo
    images, labels, path = _query_file(tmp_path)
    answer = _cli_json(capsys, "zoo", "query", "--samples", str(path), "--server", server.url, "--k", "3",
                       "--task", "digits")
    q = encoders.encode_query(images, labels)  # encoded here, searched there: vector queries match brute force
    expect = client.query(vector=q, k=3, filters={"task": "digits"})["results"]
    assert [m["id"] for m in answer["models"]] == [r["id"] for r in expect] and len(expect) == 3
    assert main(["zoo", "query", "--samples", str(path), "--server", server.url, "--index", str(tmp_path)]) == 2
    assert "--index" in capsys.readouterr().err


def test_zoo_query_cli_server_rerank_says_why_nothing_was_reranked(server, zoo, tmp_path, capsys):
    """Models registered by signature have no URL to run: the CLI shows the server's reason, not a silent 0 calls,
    and its columns mean what a local re-rank's do (score = the estimator's, index_score beside it)."""
    from proxylab.cli import main

    _, _, path = _query_file(tmp_path)
    answer = _cli_json(capsys, "zoo", "query", "--samples", str(path), "--server", server.url, "--k", "3",
                       "--rerank", "leep")
    assert answer["model_calls"] == 0 and isinstance(answer["search_ms"], float) and answer["search_ms"] > 0
    assert "registered without a URL" in answer["note"]
    for row in answer["models"]:
        assert row["score"] is None and isinstance(row["index_score"], float) and row["rerank"].startswith("skipped")
    assert main(["zoo", "query", "--samples", str(path), "--server", server.url, "--task", "nosuchtask"]) == 2
    assert "no model in the server's index matches the filters" in capsys.readouterr().err


def test_lone_surrogate_in_a_filter_key_is_a_422_not_a_500(server, zoo):
    import httpx

    body = '{"vector": [%s], "filters": {"\\ud800": 1}}' % ", ".join(["1.0"] * ENC_DIM)  # JSON escape, ASCII bytes
    r = httpx.post(server.url + "/v1/query", content=body.encode(), headers={"Content-Type": "application/json"},
                   timeout=30)
    assert r.status_code == 422 and "unknown filter" in r.json()["error"]


def test_a_query_with_too_many_classes_is_refused_before_encoding(server, zoo):
    client, _ = zoo
    images, labels = samples(n_per_class=1, classes=65, seed=3)
    with pytest.raises(ServiceError) as exc:
        client.query(images, labels, k=3)
    assert exc.value.status == 422 and "at most 64 classes" in str(exc.value)
