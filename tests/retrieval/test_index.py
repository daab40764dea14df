"""ModelIndex against brute-force numpy search, with real FAISS indexes and real SQLite files in tmp_path."""
import sqlite3
import threading

import numpy as np
import pytest

from proxylab.errors import ProxylabError
from proxylab.retrieval import index as index_mod
from proxylab.retrieval.index import FAISS_NAME, INDEX_KINDS, Hit, ModelIndex, UnknownModelError

DIM = 16


@pytest.fixture(autouse=True, scope="module")
def _one_faiss_thread():
    """OpenMP threads spin-wait on a loaded shared machine; tiny test indexes gain nothing from them."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)
FAMILIES = ["resnet", "vgg", "mobilenet"]


def _unit(x):
    x = np.asarray(x, dtype=np.float64)
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _clustered(n, dim=DIM, seed=0, centres=8):
    """Vectors around a few centres: the structure model vectors have (and what HNSW/IVF are built for)."""
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centres, dim))
    return _unit(c[rng.integers(0, centres, n)] + 0.35 * rng.normal(size=(n, dim)))


def _meta(i):
    return {"name": f"m{i}", "task": f"t{i % 4}", "family": FAMILIES[i % 3], "arch": f"a{i % 5}",
            "params": 1000 * (i + 1), "num_classes": 2 + i % 3, "test_acc": 0.5 + i / 1000}


def _fill(idx, n, seed=0):
    vecs = _clustered(n, seed=seed)
    ids = idx.add_many(vecs, [_meta(i) for i in range(n)])
    return vecs, ids


def _brute(vecs, ids, q, k, allowed=None):
    scores = vecs.astype(np.float64) @ _unit(q).astype(np.float64)
    order = [i for i in np.argsort(-scores, kind="stable") if allowed is None or ids[i] in allowed]
    return [ids[i] for i in order[:k]], scores


def test_kinds_registry():
    assert INDEX_KINDS.names() == ["flat", "hnsw", "ivf"]
    with pytest.raises(ProxylabError, match="unknown index kind"):
        ModelIndex.create(None, DIM, kind="annoy")


def test_flat_search_matches_brute_force():
    idx = ModelIndex.create(None, DIM)
    vecs, ids = _fill(idx, 300)
    q = np.random.default_rng(1).normal(size=(5, DIM))
    hits = idx.search(q, k=7)
    assert len(hits) == 5
    for row, qi in zip(hits, q):
        expect, scores = _brute(vecs, ids, qi, 7)
        assert [h.id for h in row] == expect
        np.testing.assert_allclose([h.score for h in row], scores[[ids.index(e) for e in expect]], atol=1e-5)
        assert all(isinstance(h, Hit) and h.metadata["name"] == f"m{h.id}" for h in row)
    single = idx.search(q[0], k=3)  # a 1-D query gives a flat list
    assert [h.id for h in single] == [h.id for h in hits[0][:3]]


def test_vectors_are_normalised_on_add():
    idx = ModelIndex.create(None, 3)
    mid = idx.add([3.0, 0.0, 4.0], {"name": "x"})
    np.testing.assert_allclose(idx.vector(mid), [0.6, 0.0, 0.8], atol=1e-7)
    assert idx.search([1.0, 0.0, 0.0], k=1)[0].score == pytest.approx(0.6, abs=1e-6)


_FILTERS = [
    {"task": "t1"}, {"family": "vgg"}, {"family": ["vgg", "resnet"]}, {"arch": ["a0", "a3"]},
    {"params_min": 50_000, "params_max": 120_000}, {"num_classes": 3}, {"task": "t2", "family": "mobilenet"},
]


# every filter on the exact index; the approximate kinds on a few (their filter path is the same code)
@pytest.mark.parametrize("kind,filters", [("flat", f) for f in _FILTERS]
                         + [(k, _FILTERS[i]) for k in ("hnsw", "ivf") for i in (0, 2, 6)])
def test_filters_apply_inside_the_search(kind, filters, monkeypatch):
    monkeypatch.setattr(index_mod, "IVF_MIN_TRAIN", 200)
    idx = ModelIndex.create(None, DIM, kind=kind)
    vecs, ids = _fill(idx, 240)
    assert idx.effective_kind == kind
    allowed = {m["id"] for m in idx.list(filters)}
    oracle_allowed = set()
    for i in ids:
        m = _meta(i)
        ok = all([
            "task" not in filters or m["task"] == filters["task"],
            "family" not in filters or m["family"] in np.atleast_1d(filters["family"]),
            "arch" not in filters or m["arch"] in np.atleast_1d(filters["arch"]),
            "params_min" not in filters or m["params"] >= filters["params_min"],
            "params_max" not in filters or m["params"] <= filters["params_max"],
            "num_classes" not in filters or m["num_classes"] == filters["num_classes"],
        ])
        if ok:
            oracle_allowed.add(i)
    assert allowed == oracle_allowed and len(allowed) >= 10
    q = np.random.default_rng(2).normal(size=DIM)
    hits = idx.search(q, k=10, filters=filters)
    expect, _ = _brute(vecs, ids, q, 10, allowed)
    # inside the search: a full k hits even though most of the top of the unfiltered ranking is filtered out
    assert len(hits) == 10 and {h.id for h in hits} <= allowed
    if kind == "flat":
        assert [h.id for h in hits] == expect
    else:
        assert len({h.id for h in hits} & set(expect)) >= 9  # ef widened by 1/selectivity


def test_approximate_kinds_widen_filtered_searches():
    hnsw = INDEX_KINDS.get("hnsw")(DIM, {"ef_search": 64})
    assert hnsw.params(None, 10).efSearch == 64
    assert hnsw.params(None, 10, fraction=0.1).efSearch == 640
    assert hnsw.params(None, 10, fraction=1e-6).efSearch == 1024  # capped
    ivf = INDEX_KINDS.get("ivf")(DIM, {})
    ivf.effective, ivf.nlist = "ivf", 400
    assert ivf.nprobe == 50 and ivf.params(None, 10).nprobe == 50
    assert ivf.params(None, 10, fraction=0.25).nprobe == 200
    assert ivf.params(None, 10, fraction=0.01).nprobe == 400  # never beyond every list


def test_filter_matching_nothing_and_k_beyond_size():
    idx = ModelIndex.create(None, DIM)
    _fill(idx, 5)
    assert idx.search(np.ones(DIM), k=3, filters={"task": "nope"}) == []
    assert len(idx.search(np.ones(DIM), k=50)) == 5
    assert ModelIndex.create(None, DIM).search(np.ones(DIM)) == []


@pytest.mark.parametrize("filters,match", [
    ({"colour": "red"}, "unknown filter"), ({"family": 3}, "family"), ({"params_min": "big"}, "params_min"),
    ({"task": ["a"]}, "task"), ({"num_classes": True}, "num_classes"), ("task=x", "dict"),
])
def test_bad_filters(filters, match):
    idx = ModelIndex.create(None, DIM)
    _fill(idx, 3)
    with pytest.raises(ProxylabError, match=match):
        idx.search(np.ones(DIM), filters=filters)
    with pytest.raises(ProxylabError, match=match):
        idx.list(filters)


def _snapshot(idx):
    return (len(idx), idx.list(), [h.id for h in idx.search(np.ones(DIM), k=50)], idx._index.ntotal,
            set(idx._tombstones))


_BAD_ADDS = [
    (np.ones(DIM + 1), {"name": "new"}, None, "shape"),
    (np.full(DIM, np.nan), {"name": "new"}, None, "NaN"),
    (np.zeros(DIM), {"name": "new"}, None, "zeros"),
    (np.ones(DIM), {"name": "m1"}, None, "already in the index"),
    (np.ones(DIM), {"name": "new"}, 2, "id 2 is already"),
    (np.ones(DIM), {"name": "new"}, -1, "0..2"),
    (np.ones(DIM), {"name": "new"}, "7", "integer"),
    (np.ones(DIM), {}, None, "name"),
    (np.ones(DIM), {"name": "new", "params": -5}, None, "params"),
    (np.ones(DIM), {"name": "new", "task": 3}, None, "task"),
    (np.ones(DIM), {"name": "new", "id": 9}, None, "may not hold"),
    (np.ones(DIM), {"name": "new", "blob": object()}, None, "JSON"),
    (np.ones(DIM), {"name": "new", "acc": float("nan")}, None, "JSON"),
]


# every bad input on flat; HNSW (tombstones, rebuild on reused ids) on the id and name clashes and a bad vector
@pytest.mark.parametrize("kind,vector,metadata,model_id,match", [("flat", *b) for b in _BAD_ADDS]
                         + [("hnsw", *_BAD_ADDS[i]) for i in (0, 3, 4)])
def test_bad_add_leaves_the_index_untouched(tmp_path, kind, vector, metadata, model_id, match):
    idx = ModelIndex.create(tmp_path / "ix", DIM, kind=kind)
    _fill(idx, 6)
    idx.remove(4)  # a tombstone for hnsw
    before = _snapshot(idx)
    db_before = sqlite3.connect(tmp_path / "ix" / "models.sqlite").execute("SELECT * FROM models ORDER BY id").fetchall()
    with pytest.raises(ProxylabError, match=match):
        idx.add(vector, metadata, model_id=model_id)
    assert _snapshot(idx) == before
    assert sqlite3.connect(tmp_path / "ix" / "models.sqlite").execute("SELECT * FROM models ORDER BY id").fetchall() == db_before


def test_add_many_is_all_or_nothing():
    idx = ModelIndex.create(None, DIM)
    _fill(idx, 3)
    with pytest.raises(ProxylabError, match="vector 1"):
        idx.add_many([np.ones(DIM), np.zeros(DIM)], [{"name": "a"}, {"name": "b"}])
    with pytest.raises(ProxylabError, match="'a' is already"):
        idx.add_many([np.ones(DIM), np.ones(DIM)], [{"name": "a"}, {"name": "a"}])
    assert len(idx) == 3 and idx._index.ntotal == 3


def test_faiss_failure_rolls_back_sqlite(tmp_path, monkeypatch):
    idx = ModelIndex.create(tmp_path / "ix", DIM)
    _fill(idx, 4)

    def refuse(ids, vecs):
        raise RuntimeError("simulated FAISS failure")

    monkeypatch.setattr(idx, "_faiss_add", refuse)
    with pytest.raises(RuntimeError):
        idx.add(np.ones(DIM), {"name": "x"})
    assert len(idx) == 4 and "x" not in {m["name"] for m in idx.list()} and idx._index.ntotal == 4
    count = sqlite3.connect(tmp_path / "ix" / "models.sqlite").execute("SELECT COUNT(*) FROM models").fetchone()[0]
    assert count == 4


def test_unknown_ids():
    idx = ModelIndex.create(None, DIM)
    _fill(idx, 2)
    for call in (lambda: idx.get(99), lambda: idx.remove(99), lambda: idx.vector(99)):
        with pytest.raises(UnknownModelError, match="no model with id 99") as e:
            call()
        assert isinstance(e.value, KeyError) and isinstance(e.value, ProxylabError)
    assert 1 in idx and 99 not in idx and "x" not in idx
    assert len(idx) == 2 and idx._index.ntotal == 2  # the failed remove changed nothing


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_remove_hides_models_from_search(kind, monkeypatch):
    monkeypatch.setattr(index_mod, "IVF_MIN_TRAIN", 100)  # small enough to train IVF in a test
    idx = ModelIndex.create(None, DIM, kind=kind)
    vecs, ids = _fill(idx, 200)
    assert idx.effective_kind == kind
    for mid in range(0, 200, 3):
        idx.remove(mid)
    left = [i for i in ids if i % 3]
    hits = idx.search(vecs[:20], k=10)
    for row in hits:
        assert all(h.id % 3 for h in row) and len(row) == 10
    assert len(idx) == len(left) and [m["id"] for m in idx.list()] == left
    # exact kinds still agree with brute force over the remaining vectors
    if kind == "flat":
        keep = np.array(left)
        expect, _ = _brute(vecs[keep], left, vecs[1], 10)
        assert [h.id for h in hits[1]] == expect


def test_hnsw_tombstones_then_rebuild():
    idx = ModelIndex.create(None, DIM, kind="hnsw")
    vecs, _ = _fill(idx, 50)
    idx.remove(7)
    assert idx._tombstones == {7} and idx._index.ntotal == 50
    assert 7 not in [h.id for h in idx.search(vecs[7], k=50)]
    idx.add(vecs[7], {"name": "again"}, model_id=7)  # reusing a tombstoned id forces a clean rebuild
    assert idx._tombstones == set() and idx._index.ntotal == 50
    assert idx.search(vecs[7], k=1)[0].metadata["name"] == "again"


def test_ivf_falls_back_to_exact_until_trainable(monkeypatch):
    monkeypatch.setattr(index_mod, "IVF_MIN_TRAIN", 120)
    idx = ModelIndex.create(None, DIM, kind="ivf")
    vecs, ids = _fill(idx, 100)
    assert idx.kind == "ivf" and idx.effective_kind == "flat"
    q = np.random.default_rng(3).normal(size=DIM)
    assert [h.id for h in idx.search(q, k=5)] == _brute(vecs, ids, q, 5)[0]
    more = _clustered(40, seed=9)
    idx.add_many(more, [{"name": f"extra{i}"} for i in range(40)])
    assert idx.effective_kind == "ivf" and idx._index.ntotal == 140
    assert idx._kind.nlist == int(np.sqrt(140))
    allv = np.concatenate([vecs, more])
    allids = list(range(140))
    recall = np.mean([len({h.id for h in idx.search(v, k=10)} & set(_brute(allv, allids, v, 10)[0])) / 10 for v in allv[:30]])
    assert recall >= 0.9


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_save_open_round_trip_uses_the_cache(tmp_path, kind, monkeypatch):
    monkeypatch.setattr(index_mod, "IVF_MIN_TRAIN", 100)
    idx = ModelIndex.create(tmp_path / "ix", DIM, kind=kind)
    vecs, _ = _fill(idx, 150)
    idx.remove(3)
    idx.save()
    expected = [[h.id for h in row] for row in idx.search(vecs[:10], k=5)]
    idx.close()
    again = ModelIndex.open(tmp_path / "ix")
    assert not again.rebuilt_on_open and again.kind == kind and again.dim == DIM
    assert again.effective_kind == kind
    assert [[h.id for h in row] for row in again.search(vecs[:10], k=5)] == expected
    assert again.get(5)["test_acc"] == _meta(5)["test_acc"] and 3 not in again
    np.testing.assert_array_equal(again.vector(10), vecs[10])


def test_unsaved_writes_survive_via_sqlite(tmp_path):
    """A crash after add but before save: SQLite has the add, the stale FAISS file is rebuilt on open."""
    idx = ModelIndex.create(tmp_path / "ix", DIM)
    vecs, _ = _fill(idx, 20)
    idx.save()
    new = idx.add(_unit(np.arange(DIM) + 1.0), {"name": "late"})
    idx.remove(0)
    # no save(): simulate the process dying here
    again = ModelIndex.open(tmp_path / "ix")
    assert again.rebuilt_on_open
    assert len(again) == 20 and 0 not in again
    assert again.search(np.arange(DIM) + 1.0, k=1)[0].id == new
    # new ids never reuse an old one
    assert again.add(np.ones(DIM), {"name": "later"}) == new + 1


def test_corrupt_or_tampered_cache_is_rebuilt(tmp_path):
    idx = ModelIndex.create(tmp_path / "ix", DIM)
    vecs, _ = _fill(idx, 30)
    idx.save()
    (tmp_path / "ix" / FAISS_NAME).write_bytes(b"garbage")
    again = ModelIndex.open(tmp_path / "ix")
    assert again.rebuilt_on_open and len(again) == 30
    assert again.search(vecs[4], k=1)[0].id == 4


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path):
    idx = ModelIndex.create(tmp_path / "ix", DIM)
    _fill(idx, 10)
    idx.save()
    names = sorted(p.name for p in (tmp_path / "ix").iterdir())
    assert FAISS_NAME in names and "models.sqlite" in names
    assert not [n for n in names if n.endswith(".tmp")]
    mode = sqlite3.connect(tmp_path / "ix" / "models.sqlite").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_open_errors(tmp_path):
    with pytest.raises(ProxylabError, match="no model index"):
        ModelIndex.open(tmp_path / "missing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "models.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.raises(ProxylabError, match="unreadable"):
        ModelIndex.open(tmp_path / "bad")
    ModelIndex.create(tmp_path / "ok", DIM).close()
    with pytest.raises(ProxylabError, match="already exists"):
        ModelIndex.create(tmp_path / "ok", DIM)


def test_bad_create_and_queries():
    with pytest.raises(ProxylabError, match="dimension"):
        ModelIndex.create(None, 0)
    idx = ModelIndex.create(None, DIM)
    _fill(idx, 3)
    for q, match in [(np.ones(DIM + 2), "shape"), (np.zeros(DIM), "zeros"), (np.full(DIM, np.inf), "NaN"),
                     (np.ones((0, DIM)), "no queries")]:
        with pytest.raises(ProxylabError, match=match):
            idx.search(q)
    with pytest.raises(ProxylabError, match="k must"):
        idx.search(np.ones(DIM), k=0)


def test_list_pagination():
    idx = ModelIndex.create(None, DIM)
    _fill(idx, 12)
    assert [m["id"] for m in idx.list(limit=5, offset=4)] == [4, 5, 6, 7, 8]
    assert [m["id"] for m in idx.list({"family": "vgg"}, limit=2)] == [1, 4]
    assert idx.list()[3] == {"id": 3, **_meta(3)}
    with pytest.raises(ProxylabError, match="limit"):
        idx.list(limit=-1)


def test_concurrent_searches_and_writes():
    idx = ModelIndex.create(None, DIM)
    vecs, _ = _fill(idx, 100)
    errors = []

    def searcher():
        try:
            for i in range(60):
                row = idx.search(vecs[i % 100], k=5)
                assert 0 < len(row) <= 5 and len({h.id for h in row}) == len(row)
                assert all(a.score >= b.score for a, b in zip(row, row[1:]))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    def writer():
        try:
            for i in range(40):
                mid = idx.add(_clustered(1, seed=100 + i)[0], {"name": f"w{i}"})
                if i % 2:
                    idx.remove(mid)
        except Exception as e:  # pragma: no cover
            errors.append(e)

    threads = [threading.Thread(target=searcher) for _ in range(3)] + [threading.Thread(target=writer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert len(idx) == 120 and idx._index.ntotal == 120


def test_filter_results_follow_writes():
    """Allowed ids are cached per filter; every add/remove must invalidate that cache."""
    idx = ModelIndex.create(None, DIM)
    vecs, _ = _fill(idx, 30)
    q = vecs[0]
    f = {"family": ["vgg"], "params_max": 10**9}
    before = {h.id for h in idx.search(q, k=100, filters=f)}
    new = idx.add(q, {"name": "new-vgg", "family": "vgg", "params": 5})
    assert idx.search(q, k=1, filters={"params_max": 10**9, "family": "vgg"})[0].id == new
    idx.remove(new)
    idx.remove(1)
    assert {h.id for h in idx.search(q, k=100, filters=f)} == before - {1}


def test_read_only_open_writes_nothing(tmp_path):
    idx = ModelIndex.create(tmp_path / "ix", DIM)
    vecs, _ = _fill(idx, 10)
    idx.save()
    idx.close()
    before = sorted((p.name, p.stat().st_mtime_ns) for p in (tmp_path / "ix").iterdir())
    ro = ModelIndex.open(tmp_path / "ix", read_only=True)
    assert ro.search(vecs[2], k=1)[0].id == 2 and not ro.rebuilt_on_open
    for call in (lambda: ro.add(np.ones(DIM), {"name": "x"}), lambda: ro.remove(1), ro.save):
        with pytest.raises(ProxylabError, match="read-only"):
            call()
    ro.close()
    assert sorted((p.name, p.stat().st_mtime_ns) for p in (tmp_path / "ix").iterdir()) == before


def test_count_and_id_of():
    idx = ModelIndex.create(None, DIM)
    _fill(idx, 12)
    assert idx.count() == 12 and idx.count({"family": "vgg"}) == 4 == len(idx.list({"family": "vgg"}))
    assert idx.id_of("m7") == 7
    with pytest.raises(UnknownModelError, match="no model named"):
        idx.id_of("zzz")


def test_ids_and_integers_beyond_64_bits_are_refused_and_leave_the_index_usable():
    idx = ModelIndex.create(None, 4)
    with pytest.raises(ProxylabError, match="non-negative integer"):
        idx.add([1.0, 0, 0, 0], {"name": "big", "params": 2**64})
    with pytest.raises(ProxylabError, match="2\\*\\*63-2"):
        idx.add([1.0, 0, 0, 0], {"name": "top"}, model_id=2**63 - 1)
    top = idx.add([1.0, 0, 0, 0], {"name": "almost"}, model_id=2**63 - 2)
    assert top == 2**63 - 2 and len(idx) == 1
    with pytest.raises(ProxylabError, match="no automatic model ids"):
        idx.add([0, 1.0, 0, 0], {"name": "next"})
    assert idx.add([0, 1.0, 0, 0], {"name": "explicit"}, model_id=5) == 5


def test_a_waiting_writer_goes_before_new_searches():
    """Writer-preferring lock: once a registration waits, new searches queue behind it, so a steady stream of
    overlapping searches cannot starve writes."""
    import threading
    import time

    from proxylab.retrieval.index import _RWLock

    lock = _RWLock()
    first_reader = lock.read()
    first_reader.__enter__()
    writer_in, reader_in = threading.Event(), threading.Event()

    def write():
        with lock.write():
            writer_in.set()
            time.sleep(0.2)

    def read():
        with lock.read():
            reader_in.set()

    tw = threading.Thread(target=write)
    tw.start()
    time.sleep(0.2)  # the writer now waits for the first reader
    tr = threading.Thread(target=read)
    tr.start()
    time.sleep(0.2)
    assert not reader_in.is_set()  # the new search waits behind the waiting writer
    first_reader.__exit__(None, None, None)
    assert writer_in.wait(5) and reader_in.wait(5)
    tw.join()
    tr.join()
