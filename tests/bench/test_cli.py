import json
import pickle

import pytest

from proxylab.cli import main

from .conftest import write_table


def _release(path, n=6):
    data = {i: {"bit_cfg": str(tuple(2 if j == i else 4 for j in range(18))), "acc": 50.0 + i} for i in range(n)}
    with open(path, "wb") as f:
        pickle.dump(data, f)
    return data


def test_import_needs_trust_then_show_reads_it(tmp_path, capsys):
    _release(tmp_path / "mq.pkl")
    assert main(["bench", "import", str(tmp_path / "mq.pkl"), "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--trust-pickle" in err and err.count("\n") == 1
    assert main(["bench", "import", str(tmp_path / "mq.pkl"), "--out", str(tmp_path / "t"), "--trust-pickle",
                 "--format", "json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["rows"] == 6 and row["layers"] == 21
    assert main(["bench", "show", str(tmp_path / "t"), "--format", "json", "--layers"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["splits"] == "search=2 select=1 test=3"
    assert [r["layer"] for r in shown["layers_table"]][-1] == "fc"
    assert shown["weights"].startswith("none")


def test_show_of_a_tampered_table_fails_with_the_file_named(tmp_path, capsys):
    write_table(tmp_path / "t")
    with open(tmp_path / "t" / "table.csv", "a") as f:
        f.write("99,4 4 4,0.1,1.0,0.5,0.5,0.5\n")
    assert main(["bench", "show", str(tmp_path / "t")]) == 2
    assert "table.csv: sha256" in capsys.readouterr().err


def test_list_shows_every_shipped_table(capsys, monkeypatch, tmp_path):
    import proxylab.bench.table as table_module

    write_table(tmp_path / "a", name="a")
    write_table(tmp_path / "b", name="b", n_layers=2)
    monkeypatch.setattr(table_module, "SHIPPED_DIR", tmp_path)
    assert main(["bench", "list", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["name"], r["rows"], r["layers"]) for r in rows] == [("a", 27, 3), ("b", 9, 2)]


def _build(out):
    """A build refused before any training: --net, not --checkpoint, so nothing needs to exist beforehand."""
    return main(["bench", "build", "--net", "resnet20", "--data", "digits", "--n", "2", "--epochs", "1",
                 "--out", str(out), "--no-progress"])


def _contents(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("inside", [False, True])
def test_build_refuses_a_file_as_out(tmp_path, capsys, inside):
    target = tmp_path / "README.md"
    target.write_text("mine\n")
    assert _build(target / "table" if inside else target) == 2
    err = capsys.readouterr().err
    assert "is a file, not a folder" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert target.read_text() == "mine\n"


@pytest.mark.parametrize("files", [
    {"config.yaml": "seed: 0\n", "results.csv": "a,b\n"},  # a search run folder
    {"weights.pt": "not mine to replace", "config.json": "{}"},  # a `proxylab train` checkpoint
    {"weights.pt": "someone's weights, or a build killed before meta.json"},
])
def test_build_refuses_a_folder_holding_other_work_and_touches_nothing(tmp_path, capsys, files):
    out = tmp_path / "run"
    out.mkdir()
    for name, text in files.items():
        (out / name).write_text(text)
    before = _contents(out)
    assert _build(out) == 2
    err = capsys.readouterr().err
    assert f"{out} already exists and is not empty" in err and "choose another --out" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert _contents(out) == before
