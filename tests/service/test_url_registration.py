"""Registration by URL: the service probes the user's model server itself (black box) and keeps the URL."""
import numpy as np
import pytest

from proxylab.service import Client, ServiceError
from tests.service.conftest import linear_model, samples
from tests.service.server import WRITE_TOKEN, Server


@pytest.mark.slow  # the shared probe pool loads several data sets (~15 s on a busy 2-core machine)
def test_service_probes_a_model_server_like_a_local_capture(tmp_path, tokens_file, encoder_files, encoders):
    from proxylab.retrieval.model_server import serve_model
    from proxylab.retrieval.rerank import leep
    from proxylab.retrieval.signature import capture_signature

    srv = Server(tmp_path / "zoo", tokens_file,
                 ["--encoders", str(encoder_files["encoders"]), "--extractor", str(encoder_files["extractor"])]).start()
    model_server = serve_model(linear_model(4, seed=3))
    try:
        with Client(srv.url, token=WRITE_TOKEN) as client:
            row = client.register_url(model_server.url, {"name": "remote", "task": "digits"}, seed=0)
            local = capture_signature(linear_model(4, seed=3), extractor=encoders.extractor, seed=0)
            assert row["source"] == "url" and row["url"] == model_server.url.rstrip("/")
            assert row["num_classes"] == 4 and row["calls"] == local.calls
            stored = np.array(client.get(row["id"], vector=True)["vector"])
            np.testing.assert_allclose(stored, encoders.encode_signature(local), atol=1e-6)
            with pytest.raises(ServiceError) as err:
                client.register_url(model_server.url, {"name": "remote"})
            assert err.value.status == 409
            # the probed URL is the one re-ranking calls: LEEP of the remote model equals LEEP computed here
            images, labels = samples(n_per_class=3, classes=4, seed=5)
            answer = client.query(images, labels, k=5, rerank=True)
            first = answer["results"][0]
            assert first["id"] == row["id"] and first["rerank"] == "leep" and answer["calls"] == len(images)
            assert first["rerank_score"] == pytest.approx(leep(linear_model(4, seed=3).predict_proba(images), labels),
                                                          abs=1e-5)
    finally:
        model_server.shutdown()
        assert srv.stop() == 0
