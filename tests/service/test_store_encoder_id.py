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
        with pytest.raises(Unavailable, match="enc-someone-else"):  # refused again while the old vector is there
            store.encode_query(*samples())
        assert len(store.index) == 1
    finally:
        store.close()
    assert ModelIndex.open(tmp_path / "idx").encoder_id == "enc-someone-else"


def test_the_refusal_lifts_once_every_model_of_the_other_encoders_is_deleted(tmp_path, encoders):
    idx = ModelIndex.create(tmp_path / "idx", dim=encoders.dim, encoder_id="enc-someone-else")
    for i in range(2):
        idx.add(np.eye(encoders.dim, dtype=np.float32)[i], {"name": f"old-{i}"}, encoder_id="enc-someone-else")
    idx.save()
    idx.close()
    loads = []
    store = ZooStore(tmp_path / "idx", encoders=lambda: loads.append(1) or encoders)
    try:
        with pytest.raises(Unavailable, match="delete every model of those encoders"):
            store.encode_query(*samples())
        store.delete(store.index.id_of("old-0"))
        with pytest.raises(Unavailable):  # one old vector left: still refused
            store.encode_query(*samples())
        assert store.encoders_state() == "unavailable"
        store.delete(store.index.id_of("old-1"))
        vec = store.encode_query(*samples())  # empty now: the encoders are served
        np.testing.assert_allclose(vec, encoders.encode_query(*samples()), atol=1e-6)
        assert store.encoders_state() == "loaded" and store.encoder_id == encoders.id
        row = store.register_signature(make_signature(encoders, 3, seed=2).to_bytes(), {"name": "new"})
        assert store.index.encoder_id == encoders.id  # the index now records the served encoders
        hits = store.search(vec, 1, {}, store.encoder_id)
        assert [h.id for h in hits] == [row["id"]]
        assert loads == [1]  # the factory ran once; only the cheap id check was repeated
    finally:
        store.close()


def test_an_index_made_before_encoder_ids_is_refused_for_image_work(tmp_path, encoders):
    """Its vectors' encoders are unknown (possibly older ones of the same size): 503, never mixed vectors."""
    import sqlite3

    from proxylab.retrieval.index import DB_NAME

    idx = ModelIndex.create(tmp_path / "idx", dim=encoders.dim)
    idx.add(np.ones(encoders.dim, dtype=np.float32), {"name": "old"})
    idx.save()
    idx.close()
    with sqlite3.connect(tmp_path / "idx" / DB_NAME) as conn:  # as an index written before ids were recorded
        conn.execute("DELETE FROM meta WHERE key IN ('encoder_id', 'encoder_ids')")
    store = ZooStore(tmp_path / "idx", encoders=encoders)
    try:
        assert store.index.legacy
        with pytest.raises(Unavailable, match="before proxylab recorded encoder ids"):
            store.encode_query(*samples())
        hits = store.search(np.ones(encoders.dim, dtype=np.float32), 1, {})  # a raw vector query still works
        assert hits[0].metadata["name"] == "old"
    finally:
        store.close()


def test_an_older_index_of_raw_vectors_only_takes_the_encoders(tmp_path, encoders):
    """A --dim index of an older release holds clients' vectors only: no encoders' vectors to mix, so the
    service records its encoders and registers signatures there (as a new vector index does)."""
    import sqlite3

    from proxylab.retrieval.index import DB_NAME

    store = ZooStore(tmp_path / "idx", encoders=encoders, dim=encoders.dim)
    store.register_vector([1.0] * encoders.dim, {"name": "raw"})
    store.close()
    with sqlite3.connect(tmp_path / "idx" / DB_NAME) as conn:  # as written before encoder ids were recorded
        conn.execute("DELETE FROM meta WHERE key IN ('encoder_id', 'encoder_ids')")
    store = ZooStore(tmp_path / "idx", encoders=encoders)
    try:
        assert store.index.legacy
        store.register_signature(make_signature(encoders, 3, seed=2).to_bytes(), {"name": "sig"})
        assert store.index.encoder_id == encoders.id and not store.index.legacy
        assert len(store.search(store.encode_query(*samples()), 2, {}, store.encoder_id)) == 2
    finally:
        store.close()
