"""`proxylab serve` without --index: a writable copy of the shipped zoo index, or a clear error when absent."""
import httpx
import pytest

from proxylab.commands import serve
from proxylab.errors import ProxylabError
from proxylab.retrieval.index import ModelIndex
from tests.service.server import WRITE, Server


def make_index(folder, n=3, dim=4):
    idx = ModelIndex.create(folder, dim=dim)
    for i in range(n):
        idx.add([1.0 + i, 0.0, 1.0, 0.0], {"name": f"shipped-{i}", "task": "digits"})
    idx.save()
    idx.close()
    return folder


def shipped_count() -> int:
    """Models in the shipped index, read through a read-only SQLite connection (opening it must write nothing)."""
    import sqlite3

    db = serve.shipped_index_dir() / "models.sqlite"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return conn.execute("SELECT COUNT(*) FROM models").fetchone()[0]


def test_copy_is_made_once_and_the_source_is_never_written(tmp_path, monkeypatch):
    source = make_index(tmp_path / "package" / "zoo_index")
    before = {p.name: p.read_bytes() for p in source.iterdir()}
    monkeypatch.setattr(serve, "shipped_index_dir", lambda: source)
    copy = serve.copy_of_shipped_index(tmp_path / "cache")
    assert copy == tmp_path / "cache" / "zoo_index"
    idx = ModelIndex.open(copy)
    assert len(idx) == 3
    idx.add([0.0, 1.0, 0.0, 0.0], {"name": "mine"})
    idx.close()
    assert serve.copy_of_shipped_index(tmp_path / "cache") == copy  # reused: registrations survive restarts
    assert len(ModelIndex.open(copy)) == 4
    assert {p.name: p.read_bytes() for p in source.iterdir()} == before
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["zoo_index"]  # no temporary copies left behind


def test_missing_shipped_index_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(serve, "shipped_index_dir", lambda: tmp_path / "absent")
    with pytest.raises(ProxylabError, match="--index DIR"):
        serve.copy_of_shipped_index(tmp_path / "cache")


def test_copy_from_older_encoders_is_refused_and_kept(tmp_path, monkeypatch):
    source = make_index(tmp_path / "package" / "zoo_index")  # the shipped index: 4-d
    old = tmp_path / "cache" / "zoo_index"
    idx = ModelIndex.create(old, dim=2)  # a copy an older release made, with a registration of the user's
    idx.add([1.0, 0.0], {"name": "mine"})
    idx.save()
    idx.close()
    monkeypatch.setattr(serve, "shipped_index_dir", lambda: source)
    with pytest.raises(ProxylabError, match="holds 2-d vectors from an older proxylab.*4-d"):
        serve.copy_of_shipped_index(tmp_path / "cache")
    assert len(ModelIndex.open(old)) == 1  # nothing the user saved is deleted


def _index_with_id(folder, names, encoder_id, dim=4):
    idx = ModelIndex.create(folder, dim=dim, encoder_id=encoder_id)
    for i, name in enumerate(names):
        idx.add([1.0 + i, 0.0, 1.0, 0.0], {"name": name}, encoder_id=encoder_id)
    idx.save()
    idx.close()
    return folder


def _drop_encoder_rows(folder):
    """What a release before encoder ids wrote: no encoder rows in the meta table."""
    import sqlite3

    with sqlite3.connect(folder / "models.sqlite") as conn:
        conn.execute("DELETE FROM meta WHERE key IN ('encoder_id', 'encoder_ids')")
    conn.close()


@pytest.mark.parametrize("old_id", [None, "enc-old"])
def test_same_dimension_copy_of_older_encoders_with_registrations_is_refused_and_kept(tmp_path, monkeypatch, old_id):
    source = _index_with_id(tmp_path / "package" / "zoo_index", ["shipped-0", "shipped-1"], "enc-new")
    old = _index_with_id(tmp_path / "cache" / "zoo_index", ["shipped-0", "shipped-1", "mine"], old_id or "enc-x")
    if old_id is None:
        _drop_encoder_rows(old)
    monkeypatch.setattr(serve, "shipped_index_dir", lambda: source)
    with pytest.raises(ProxylabError, match=r"holds vectors of .*enc-new.*1 models you registered \(e.g. 'mine'\)"):
        serve.copy_of_shipped_index(tmp_path / "cache")
    kept = ModelIndex.open(old)
    assert len(kept) == 3 and kept.encoder_id == old_id  # nothing the user saved is deleted or relabelled
    kept.close()


def test_same_dimension_stale_copy_without_registrations_is_replaced(tmp_path, monkeypatch, capsys):
    source = _index_with_id(tmp_path / "package" / "zoo_index", ["shipped-0", "shipped-1"], "enc-new")
    old = _index_with_id(tmp_path / "cache" / "zoo_index", ["shipped-0"], "enc-x")
    _drop_encoder_rows(old)
    monkeypatch.setattr(serve, "shipped_index_dir", lambda: source)
    copy = serve.copy_of_shipped_index(tmp_path / "cache")
    fresh = ModelIndex.open(copy)
    assert copy == old and len(fresh) == 2 and fresh.encoder_id == "enc-new"
    fresh.close()
    err = capsys.readouterr().err
    assert "replaced it with a fresh copy" in err
    names = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert names[0] == "zoo_index" and len(names) == 2 and names[1].startswith("zoo_index.stale-")
    stale = ModelIndex.open(tmp_path / "cache" / names[1])  # the old copy is kept, whole, and its path printed
    assert len(stale) == 1 and str(tmp_path / "cache" / names[1]) in err
    stale.close()
    assert serve.copy_of_shipped_index(tmp_path / "cache") == copy  # now it matches: kept as it is


def test_registrations_still_in_the_write_ahead_log_count_as_the_users(tmp_path, monkeypatch):
    """A server killed before a checkpoint leaves its last registrations in models.sqlite-wal only."""
    source = _index_with_id(tmp_path / "package" / "zoo_index", ["shipped-0", "shipped-1"], "enc-new")
    old = _index_with_id(tmp_path / "cache" / "zoo_index", ["shipped-0"], "enc-x")
    _drop_encoder_rows(old)
    live = ModelIndex.open(old)
    live.add([0.0, 1.0, 0.0, 1.0], {"name": "mine"})  # committed to the WAL, not checkpointed (still open)
    try:
        assert (old / "models.sqlite-wal").stat().st_size > 0
        monkeypatch.setattr(serve, "shipped_index_dir", lambda: source)
        with pytest.raises(ProxylabError, match=r"1 models you registered \(e.g. 'mine'\)"):
            serve.copy_of_shipped_index(tmp_path / "cache")
    finally:
        live.close()
    kept = ModelIndex.open(old)
    assert sorted(m["name"] for m in kept.list()) == ["mine", "shipped-0"]
    kept.close()


def test_a_stale_copy_that_a_running_service_holds_is_not_moved(tmp_path, monkeypatch):
    from proxylab.service.store import _lock_directory

    source = _index_with_id(tmp_path / "package" / "zoo_index", ["shipped-0", "shipped-1"], "enc-new")
    old = _index_with_id(tmp_path / "cache" / "zoo_index", ["shipped-0"], "enc-x")
    _drop_encoder_rows(old)
    monkeypatch.setattr(serve, "shipped_index_dir", lambda: source)
    lock = _lock_directory(old)  # as `proxylab serve` holds it while running
    try:
        with pytest.raises(ProxylabError, match="another proxylab service is already serving"):
            serve.copy_of_shipped_index(tmp_path / "cache")
    finally:
        lock.close()
    assert sorted(p.name for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")) == ["zoo_index"]
    assert len(ModelIndex.open(old)) == 1


@pytest.mark.skipif(not (serve.shipped_index_dir() / "models.sqlite").is_file(),
                    reason="the shipped zoo index is not built yet")
def test_serve_without_index_serves_a_copy_of_the_shipped_zoo(tmp_path, tokens_file):
    n = shipped_count()
    srv = Server(tmp_path / "log", tokens_file, serve_index=False, env={"PROXYLAB_CACHE": str(tmp_path / "cache")},
                 extra=["--fetch-seconds", "5", "--fetch-max-mb", "0.5"])
    srv.start()
    try:
        with httpx.Client(base_url=srv.url) as http:
            health = http.get("/v1/health").json()
            assert health["models"] == n
            assert health["fetch_seconds"] == 5 and health["fetch_max_bytes"] == 1 << 19  # the flags reach the app
            mid = http.get("/v1/models", params={"limit": 1}).json()["models"][0]["id"]
            assert http.delete(f"/v1/models/{mid}", headers=WRITE).status_code == 200
    finally:
        assert srv.stop() == 0
    assert shipped_count() == n  # the package's own index is untouched


@pytest.mark.parametrize("flag, value", [("--fetch-seconds", "0"), ("--fetch-max-mb", "-1"), ("--max-body-mb", "nan")])
def test_non_positive_limits_are_refused_before_starting(tmp_path, capsys, flag, value):
    from proxylab.cli import main

    assert main(["serve", "--index", str(make_index(tmp_path / "idx")), flag, value]) != 0
    assert f"{flag} must be positive" in capsys.readouterr().err
