"""A URL registration must not turn the service into a reader of internal addresses: URLs whose appended
'/info' would land elsewhere are refused, and no error a client sees quotes what a model server sent.

Real misbehaving servers (tests/service/bad_servers.py) whose answers carry SECRET, the real app on uvicorn."""
import httpx
import numpy as np
import pytest

from proxylab.errors import ProxylabError
from proxylab.service.fetch import BoundedHTTPBlackBox, FetchBudget, FetchError, fetch
from proxylab.service.payloads import check_url
from proxylab.utils import npz_bytes
from tests.service.bad_servers import SECRET, BadServer
from tests.service.conftest import ENC_DIM, samples
from tests.service.server import WRITE, InProcessServer, write_tokens

LIMIT = 1 << 20
INFO_LEAKS = ["leakyinfo", "arrayinfo", "notjson", "notfound", "banner", "badchunk"]


@pytest.fixture(scope="module")
def bad():
    with BadServer() as server:
        yield server


def base(bad) -> str:
    return bad.url("").rstrip("/")


@pytest.mark.parametrize("suffix, part", [("/secret.json#", "a fragment"), ("/secret.json?", "a query"),
                                          ("/secret.json?x=1", "a query"), ("/a#b", "a fragment")])
def test_query_and_fragment_are_refused_naming_the_part(bad, suffix, part):
    with pytest.raises(ProxylabError, match=part):
        check_url(base(bad) + suffix)
    with pytest.raises(FetchError, match="query"):  # fetch refuses them too, whoever calls it
        fetch(base(bad) + suffix + "/info", None, FetchBudget(5), LIMIT)


def test_credentials_are_refused(bad):
    url = base(bad).replace("http://", "http://user:pass@") + "/secret.json"
    with pytest.raises(ProxylabError, match="credentials"):
        check_url(url)
    with pytest.raises(FetchError, match="credentials"):
        fetch(url + "/info", None, FetchBudget(5), LIMIT)


@pytest.mark.parametrize("url", ["http://host:8001", "https://host/models/a/", "http://[::1]:9000/x"])
def test_plain_base_urls_pass(url):
    assert check_url(url) == url.rstrip("/")


@pytest.mark.parametrize("mode", INFO_LEAKS)
def test_a_bad_info_answer_is_described_not_quoted(bad, mode):
    with pytest.raises(ProxylabError) as err:
        BoundedHTTPBlackBox(bad.url(mode), FetchBudget(5), max_bytes=LIMIT)
    assert SECRET not in str(err.value) and bad.url(mode) in str(err.value)


def test_the_messages_say_what_was_wrong(bad):
    expect = {"leakyinfo": "'num_classes' must be an integer, got a JSON string",
              "arrayinfo": "answered a JSON array", "notjson": "did not answer JSON",
              "notfound": "answered HTTP 404 with a body of", "banner": "not valid HTTP",
              "badchunk": "not valid HTTP"}
    for mode, words in expect.items():
        with pytest.raises(ProxylabError, match=words):
            BoundedHTTPBlackBox(bad.url(mode), FetchBudget(5), max_bytes=LIMIT)


def test_a_bad_predict_answer_and_the_remote_name_are_not_quoted(bad):
    model = BoundedHTTPBlackBox(bad.url("leakynpz"), FetchBudget(5), max_bytes=LIMIT)
    assert SECRET not in model.describe() and SECRET not in repr(model)  # the /info name is not used
    with pytest.raises(ProxylabError) as err:
        model.predict_proba(np.zeros((2, 3, 32, 32), np.float32))
    assert SECRET not in str(err.value) and "damaged or non-numeric .npz" in str(err.value)


# --- through the service ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def service(tmp_path_factory, encoder_files, encoders, bad):
    """An index whose re-rankable rows point at leaking servers; the query vector is nearest to all of them."""
    from proxylab.retrieval.index import ModelIndex
    from proxylab.service.auth import load_tokens

    folder = tmp_path_factory.mktemp("leaks")
    q = encoders.encode_query(*samples(seed=3))
    index = ModelIndex.create(str(folder / "index"), dim=ENC_DIM)
    for mode in ("leakynpz", "notfound", "banner", "badchunk"):
        index.add(q / np.linalg.norm(q), {"name": mode, "num_classes": 3, "source": "url", "url": bad.url(mode)})
    index.save()
    index.close()

    def load():
        from proxylab.retrieval.encoders import Encoders
        from proxylab.retrieval.features import FeatureExtractor

        return Encoders.load(encoder_files["encoders"], extractor=FeatureExtractor.load(encoder_files["extractor"]))

    tokens = load_tokens(str(write_tokens(folder / "tokens.txt")))
    with InProcessServer(folder / "index", tokens=tokens, encoders=load, fetch_seconds=5, fetch_max_bytes=LIMIT) as srv:
        with httpx.Client(base_url=srv.url, timeout=60) as http:
            yield http


@pytest.mark.parametrize("suffix, part", [("/secret.json#", "a fragment"), ("/secret.json?", "a query"),
                                          ("@/secret.json", "credentials")])
def test_registering_a_url_that_would_read_another_path_is_a_422_and_calls_nothing(service, bad, suffix, part):
    url = base(bad) + suffix if not suffix.startswith("@") else base(bad).replace("//", "//u:p@") + suffix[1:]
    before = len(bad.paths)
    r = service.post("/v1/models", json={"url": url, "metadata": {"name": "thief"}}, headers=WRITE)
    assert r.status_code == 422 and part in r.json()["error"] and SECRET not in r.text
    assert len(bad.paths) == before  # the service never connected


@pytest.mark.parametrize("mode", INFO_LEAKS)
def test_registration_errors_never_echo_the_servers_answer(service, bad, mode):
    r = service.post("/v1/models", json={"url": bad.url(mode), "metadata": {"name": f"leak-{mode}"}}, headers=WRITE)
    assert r.status_code == 422 and "probing the model server" in r.json()["error"]
    assert SECRET not in r.text


def test_reranking_failures_never_echo_the_servers_answer(service):
    images, labels = samples(seed=3)
    r = service.post("/v1/query", files={"samples": ("q.npz", npz_bytes(images=images, labels=labels))},
                     data={"k": "10", "rerank": "true"})
    assert r.status_code == 200 and SECRET not in r.text
    reasons = {row["metadata"]["name"]: row["rerank"] for row in r.json()["results"]}
    assert set(reasons) == {"leakynpz", "notfound", "banner", "badchunk"}
    assert all(reason.startswith("failed: FetchError") for reason in reasons.values()), reasons
