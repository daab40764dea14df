"""The service keeps one vector space: it records its encoders' id in the index it creates and in signature
registrations, and refuses (503) to serve an index whose vectors other encoders made."""
import numpy as np
import pytest

from proxylab.retrieval.index import ModelIndex
from proxylab.service.store import Unavailable, ZooStore
from tests.service.conftest import make_signature, samples


def test_a_new_index_sized_by_the_encoders_records_their_id(tmp_path, encoders):
    store = ZooStore(tmp_path / "idx", encoders=encoders)
    try:
        assert store.index.encoder_id == encoders.id == store.encoder_id
    finally:
        store.close()
    assert ModelIndex.open(tmp_path / "idx").encoder_id == encoders.id  # on disk, for the next start


def test_a_vector_index_takes_the_id_of_its_first_signature(tmp_path, encoders):
    store = ZooStore(tmp_path / "idx", encoders=encoders, dim=encoders.dim)
    try:
        store.register_vector([1.0] * encoders.dim, {"name": "raw"})
        assert store.index.encoder_id is None  # a client's vector says nothing about encoders
        sig = make_signature(encoders, 3, seed=0)
        store.register_signature(sig.to_bytes(), {"name": "sig"})
        assert store.index.encoder_id == encoders.id
        images, labels = samples()
        hits = store.search(store.encode_query(images, labels), 2, {}, store.encoder_id)
        assert {h.metadata["name"] for h in hits} == {"raw", "sig"}
    finally:
        store.close()


def test_an_index_of_other_encoders_is_refused_and_left_as_it_was(tmp_path, encoders):
    idx = ModelIndex.create(tmp_path / "idx", dim=encoders.dim, encoder_id="enc-someone-else")
    idx.add(np.ones(encoders.dim, dtype=np.float32), {"name": "old"}, encoder_id="enc-someone-else")
    idx.save()
    idx.close()
    store = ZooStore(tmp_path / "idx", encoders=lambda: encoders)
    try:
        with pytest.raises(Unavailable, match="enc-someone-else") as err:
            store.register_signature(make_signature(encoders, 3, seed=1).to_bytes(), {"name": "new"})
        assert encoders.id in str(err.value)
        with pytest.raises(Unavailable, match="enc-someone-else"):  # the refusal is kept, not retried per call
            store.encode_query(*samples())
        assert len(store.index) == 1
    finally:
        store.close()
    assert ModelIndex.open(tmp_path / "idx").encoder_id == "enc-someone-else"
