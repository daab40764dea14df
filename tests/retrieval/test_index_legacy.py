"""Indexes made before encoder ids were recorded never take on an id unproven (real encoders, FAISS, SQLite)."""
import argparse
import sqlite3

import numpy as np
import pytest
import torch

from proxylab.retrieval.encoders import Encoders
from proxylab.retrieval.index import DB_NAME, EncoderMismatchError, LegacyIndexError, ModelIndex
from proxylab.retrieval.legacy import adopt_if_vectors_match
from proxylab.retrieval.signature import Signature

FEAT = 12
FX = "fx-legacy-test"


def _encoders(seed):
    torch.manual_seed(seed)
    return Encoders(feature_dim=FEAT, width=16, dim=16, extractor_id=FX)


def _signature(seed, classes=3):
    rng = np.random.default_rng(seed)
    pairs = np.array([(i, j) for i in range(classes) for j in range(i + 1, classes)], dtype=np.int64)
    return Signature(anchors=rng.normal(size=(classes, FEAT)).astype(np.float32),
                     boundary=rng.normal(size=(len(pairs), FEAT)).astype(np.float32), pairs=pairs,
                     num_classes=classes, calls=10, extractor=FX, seed=0)


def _meta(folder):
    return dict(sqlite3.connect(folder / DB_NAME).execute("SELECT key, value FROM meta").fetchall())


def _old_zoo(tmp_path, enc, n=4):
    """ZOO/index + ZOO/signatures as a release before encoder ids made them: no encoder_id / encoder_ids rows."""
    zoo = tmp_path / "zoo"
    (zoo / "signatures").mkdir(parents=True)
    idx = ModelIndex.create(zoo / "index", enc.dim)
    for i in range(n):
        sig = _signature(i)
        sig.save(zoo / "signatures" / f"m{i}.npz")
        idx.add(enc.encode_signature(sig), {"name": f"m{i}", "task": "t"}, model_id=i)
    idx.save()
    idx.close()
    with sqlite3.connect(zoo / "index" / DB_NAME) as conn:
        conn.execute("DELETE FROM meta WHERE key IN ('encoder_id', 'encoder_ids')")
    conn.close()
    return zoo


def _snapshot(folder):
    conn = sqlite3.connect(folder / DB_NAME)
    try:
        return _meta(folder), conn.execute("SELECT id, vector FROM models ORDER BY id").fetchall()
    finally:
        conn.close()


def test_new_indexes_are_not_legacy_and_a_raw_vector_index_still_takes_the_first_id(tmp_path):
    enc = _encoders(0)
    idx = ModelIndex.create(tmp_path / "ix", enc.dim)
    assert not idx.legacy and _meta(tmp_path / "ix")["encoder_ids"] == "recorded"
    idx.add(np.ones(enc.dim, np.float32) / np.sqrt(enc.dim), {"name": "raw"})  # a client's vector: no id
    idx.add(enc.encode_signature(_signature(0)), {"name": "sig"}, encoder_id=enc.id)
    assert idx.encoder_id == enc.id and _meta(tmp_path / "ix")["encoder_id"] == enc.id
    idx.close()


def test_a_legacy_index_refuses_writes_naming_encoders_and_stays_untouched(tmp_path):
    old, new = _encoders(0), _encoders(1)
    zoo = _old_zoo(tmp_path, old)
    before = _snapshot(zoo / "index")
    with pytest.warns(UserWarning, match="made before"):
        idx = ModelIndex.open(zoo / "index", encoder_id=new.id)
    assert idx.legacy and idx.encoder_id is None
    for enc in (old, new):  # even the right encoders: nothing proves it yet
        with pytest.raises(LegacyIndexError, match="Rebuild it"):
            idx.add(enc.encode_signature(_signature(9)), {"name": "x"}, encoder_id=enc.id)
    assert isinstance(LegacyIndexError("x"), EncoderMismatchError)  # the service answers it like a mismatch
    idx.add(np.eye(1, old.dim, 0, dtype=np.float32)[0], {"name": "raw"})  # raw vectors are not checked
    idx.close()
    meta, rows = _snapshot(zoo / "index")
    assert "encoder_id" not in meta and "encoder_ids" not in meta
    assert rows[:len(before[1])] == before[1] and len(rows) == len(before[1]) + 1


def test_vectors_of_other_encoders_are_refused_with_the_rebuild_advice(tmp_path):
    old, new = _encoders(0), _encoders(1)
    zoo = _old_zoo(tmp_path, old)
    before = _snapshot(zoo / "index")
    idx = ModelIndex.open(zoo / "index")
    with pytest.raises(EncoderMismatchError, match="delete ZOO/index") as err:
        adopt_if_vectors_match(idx, zoo / "signatures", new)
    assert not isinstance(err.value, LegacyIndexError) and "m0" in str(err.value)
    assert idx.legacy
    idx.close()
    assert _snapshot(zoo / "index") == before


def test_matching_vectors_are_adopted_and_then_the_index_grows(tmp_path):
    old = _encoders(0)
    zoo = _old_zoo(tmp_path, old)
    idx = ModelIndex.open(zoo / "index")
    assert adopt_if_vectors_match(idx, zoo / "signatures", old) is True
    assert not idx.legacy and idx.encoder_id == old.id and _meta(zoo / "index")["encoder_id"] == old.id
    assert adopt_if_vectors_match(idx, zoo / "signatures", old) is False  # nothing left to prove
    idx.add(old.encode_signature(_signature(9)), {"name": "x"}, encoder_id=old.id)
    with pytest.raises(EncoderMismatchError):
        idx.add(old.encode_signature(_signature(8)), {"name": "y"}, encoder_id=_encoders(1).id)
    idx.close()


def test_no_signature_to_check_is_a_legacy_error(tmp_path):
    old = _encoders(0)
    zoo = _old_zoo(tmp_path, old)
    for sig in (zoo / "signatures").iterdir():
        sig.unlink()
    idx = ModelIndex.open(zoo / "index")
    for folder in (zoo / "signatures", None):
        with pytest.raises(LegacyIndexError, match="no stored signature|none of its 4 models"):
            adopt_if_vectors_match(idx, folder, old)
    assert idx.legacy
    idx.close()


def test_one_tampered_vector_among_the_checked_ones_is_caught(tmp_path):
    old = _encoders(0)
    zoo = _old_zoo(tmp_path, old)
    vec = old.encode_signature(_signature(1)).copy()
    vec[0] += 1e-3  # what a float-level difference of other weights would look like, far above ATOL
    vec /= np.linalg.norm(vec)
    with sqlite3.connect(zoo / "index" / DB_NAME) as conn:
        conn.execute("UPDATE models SET vector=? WHERE id=1", (vec.astype(np.float32).tobytes(),))
    conn.close()
    idx = ModelIndex.open(zoo / "index")
    with pytest.raises(EncoderMismatchError, match="'m1'"):
        adopt_if_vectors_match(idx, zoo / "signatures", old)
    idx.close()


def _zoo_add_args(index, signature, enc_file, name):
    return argparse.Namespace(index=str(index), signature=str(signature), name=name, task="", family="", arch="",
                              params=0, id=None, encoders=str(enc_file), extractor=None)


def test_zoo_add_proves_or_refuses_a_legacy_zoo_index(tmp_path):
    from proxylab.commands.zoo import ZooAdd

    old, new = _encoders(0), _encoders(1)
    zoo = _old_zoo(tmp_path, old)
    _signature(7).save(tmp_path / "new.npz")
    old.save(tmp_path / "old.pt")
    new.save(tmp_path / "new.pt")
    before = _snapshot(zoo / "index")
    with pytest.raises(EncoderMismatchError, match="older encoders made it"):
        ZooAdd().run(_zoo_add_args(zoo / "index", tmp_path / "new.npz", tmp_path / "new.pt", "n1"))
    assert _snapshot(zoo / "index") == before
    import warnings

    from proxylab.retrieval.index import LegacyIndexWarning

    with warnings.catch_warnings():
        warnings.simplefilter("error", LegacyIndexWarning)  # proven before anything warns "meaningless results"
        out = ZooAdd().run(_zoo_add_args(zoo / "index", tmp_path / "new.npz", tmp_path / "old.pt", "n1"))
    assert out["models"] == 5
    assert ModelIndex.open(zoo / "index").encoder_id == Encoders.load(tmp_path / "old.pt").id == old.id
