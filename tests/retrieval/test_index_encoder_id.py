"""The index records which encoders made its vectors, and refuses to be mixed with others (real FAISS + SQLite)."""
import sqlite3
import warnings

import numpy as np
import pytest

from proxylab.errors import ProxylabError
from proxylab.retrieval.index import DB_NAME, EncoderMismatchError, LegacyIndexError, LegacyIndexWarning, ModelIndex

DIM = 8
ENC_A, ENC_B = "enc-aaaaaaaaaaaaaaaa", "enc-bbbbbbbbbbbbbbbb"


def _vecs(n, seed=0):
    v = np.random.default_rng(seed).normal(size=(n, DIM))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def _recorded(folder):
    row = sqlite3.connect(folder / DB_NAME).execute("SELECT value FROM meta WHERE key='encoder_id'").fetchone()
    return None if row is None else row[0]


def _rows(folder):
    return sqlite3.connect(folder / DB_NAME).execute("SELECT COUNT(*) FROM models").fetchone()[0]


def _built(tmp_path, n=5, encoder_id=ENC_A):
    folder = tmp_path / "ix"
    idx = ModelIndex.create(folder, DIM, encoder_id=encoder_id)
    idx.add_many(_vecs(n), [{"name": f"m{i}"} for i in range(n)], encoder_id=encoder_id)
    idx.save()
    idx.close()
    return folder


def test_the_id_is_stored_in_sqlite_and_survives_reopening(tmp_path):
    folder = _built(tmp_path)
    assert _recorded(folder) == ENC_A
    idx = ModelIndex.open(folder, encoder_id=ENC_A)
    assert idx.encoder_id == ENC_A and len(idx) == 5
    assert idx.search(_vecs(5)[3], k=1, encoder_id=ENC_A)[0].id == 3
    idx.add(_vecs(1, seed=9)[0], {"name": "new"}, encoder_id=ENC_A)
    assert len(idx) == 6
    # readers and writers that do not say which encoders they use are not checked (raw vectors)
    assert ModelIndex.open(folder, read_only=True).encoder_id == ENC_A


@pytest.mark.parametrize("how", ["open", "open_read_only", "search", "add", "add_many"])
def test_other_encoders_are_refused_naming_both_ids_and_the_index_is_untouched(tmp_path, how):
    folder = _built(tmp_path)
    with pytest.raises(EncoderMismatchError) as err:
        if how == "open":
            ModelIndex.open(folder, encoder_id=ENC_B)
        elif how == "open_read_only":
            ModelIndex.open(folder, read_only=True, encoder_id=ENC_B)
        else:
            idx = ModelIndex.open(folder)
            if how == "search":
                idx.search(_vecs(1)[0], k=2, encoder_id=ENC_B)
            elif how == "add":
                idx.add(_vecs(1, seed=3)[0], {"name": "x"}, encoder_id=ENC_B)
            else:
                idx.add_many(_vecs(2, seed=3), [{"name": "x"}, {"name": "y"}], encoder_id=ENC_B)
    text = str(err.value)
    assert ENC_A in text and ENC_B in text and "rebuild" in text and "proxylab zoo build" in text
    assert isinstance(err.value, ProxylabError)
    assert _rows(folder) == 5 and _recorded(folder) == ENC_A
    again = ModelIndex.open(folder, encoder_id=ENC_A)
    assert len(again) == 5 and again._index.ntotal == 5


def test_an_empty_index_takes_the_encoders_of_its_first_write(tmp_path):
    folder = tmp_path / "ix"
    idx = ModelIndex.create(folder, DIM, encoder_id=ENC_A)
    assert idx.search(_vecs(1)[0], k=3, encoder_id=ENC_B) == []  # nothing to mix up yet
    idx.add(_vecs(1)[0], {"name": "a"}, encoder_id=ENC_B)
    assert idx.encoder_id == ENC_B and _recorded(folder) == ENC_B
    # emptied again: the old vectors are gone, so new encoders may take over
    idx.remove(idx.id_of("a"))
    idx.add(_vecs(1)[0], {"name": "b"}, encoder_id=ENC_A)
    assert _recorded(folder) == ENC_A
    with pytest.raises(EncoderMismatchError):
        idx.add(_vecs(1, seed=1)[0], {"name": "c"}, encoder_id=ENC_B)


def _legacy(tmp_path, n=4):
    """An index as proxylab made it before encoder ids were recorded: no encoder_id row in meta."""
    folder = tmp_path / "old"
    idx = ModelIndex.create(folder, DIM)
    idx.add_many(_vecs(n), [{"name": f"m{i}"} for i in range(n)])
    idx.save()
    idx.close()
    with sqlite3.connect(folder / DB_NAME) as conn:  # what an older release wrote: no encoder rows at all
        conn.execute("DELETE FROM meta WHERE key='encoder_ids'")
    conn.close()
    assert _recorded(folder) is None
    return folder


def test_an_index_from_before_the_change_opens_warns_and_never_takes_an_id_unproven(tmp_path):
    folder = _legacy(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain = ModelIndex.open(folder)  # a caller that names no encoders is not bothered
        assert plain.encoder_id is None and len(plain) == 4
        plain.close()
    with pytest.warns(LegacyIndexWarning, match=ENC_A):
        idx = ModelIndex.open(folder, encoder_id=ENC_A)
    assert idx.search(_vecs(4)[1], k=1, encoder_id=ENC_A)[0].id == 1  # still searchable
    assert _recorded(folder) is None  # opening writes nothing
    # its vectors may be older encoders' of the same dimension: adopting ENC_A on trust would mix them
    with pytest.raises(LegacyIndexError, match="made before proxylab recorded encoder ids"):
        idx.add(_vecs(1, seed=5)[0], {"name": "new"}, encoder_id=ENC_A)
    assert idx.encoder_id is None and _recorded(folder) is None and _rows(folder) == 4
    idx.adopt_encoder(ENC_A)  # what legacy.adopt_if_vectors_match does once the vectors are checked
    idx.add(_vecs(1, seed=5)[0], {"name": "new"}, encoder_id=ENC_A)
    assert idx.encoder_id == ENC_A and _recorded(folder) == ENC_A
    idx.close()
    with pytest.raises(EncoderMismatchError, match=ENC_B):
        ModelIndex.open(folder, encoder_id=ENC_B)


def test_a_legacy_index_opened_read_only_warns_and_writes_nothing(tmp_path):
    folder = _legacy(tmp_path)
    before = sorted((p.name, p.stat().st_mtime_ns) for p in folder.iterdir())
    with pytest.warns(LegacyIndexWarning, match="made before"):
        ro = ModelIndex.open(folder, read_only=True, encoder_id=ENC_B)
    assert len(ro) == 4
    ro.close()
    assert sorted((p.name, p.stat().st_mtime_ns) for p in folder.iterdir()) == before


def test_a_failed_faiss_add_rolls_back_the_recorded_id(tmp_path, monkeypatch):
    folder = tmp_path / "raw"  # raw vectors only (no id): the first write naming encoders records its id
    idx = ModelIndex.create(folder, DIM)
    idx.add_many(_vecs(4), [{"name": f"m{i}"} for i in range(4)])

    def refuse(ids, vecs):
        raise RuntimeError("simulated FAISS failure")

    monkeypatch.setattr(idx, "_faiss_add", refuse)
    with pytest.raises(RuntimeError):
        idx.add(_vecs(1, seed=7)[0], {"name": "x"}, encoder_id=ENC_A)
    assert idx.encoder_id is None and _recorded(folder) is None and _rows(folder) == 4


def test_in_memory_index_and_bad_ids():
    idx = ModelIndex.create(None, DIM, encoder_id=ENC_A)
    idx.add(_vecs(1)[0], {"name": "a"}, encoder_id=ENC_A)
    with pytest.raises(EncoderMismatchError, match="in-memory"):
        idx.search(_vecs(1)[0], encoder_id=ENC_B)
    for bad in ("", "  ", 3):
        with pytest.raises(ProxylabError, match="encoder_id must be a non-empty string"):
            idx.add(_vecs(1, seed=2)[0], {"name": "b"}, encoder_id=bad)
    assert len(idx) == 1
