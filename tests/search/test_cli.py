import json

import pytest

from proxylab.cli import main


def test_unknown_table_is_one_clear_line(capsys, tmp_path):
    assert main(["search", "--bench", "no-such-table", "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "no table 'no-such-table'" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_bad_space_file_fails_before_tables_are_read(capsys, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("inputs: {bW: 1}\nunary: {noop: 1}\nreduce: {mean: 1}\naggregate: {mean_layers: 1}\n"
                     "structures: {linear: {unary_ops: 1}}\ncolour: blue\n")
    assert main(["search", "--bench", "no-such-table", "--space", str(space), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "unknown key(s) colour" in err and str(space) in err


@pytest.fixture
def tiny_tables(tiny_pair, monkeypatch):
    """The CLI's table and statistics loaders pointed at the real tiny tables instead of shipped folders."""
    import proxylab.bench
    import proxylab.stats

    tables = {t.name: (t, s) for t, s in tiny_pair}
    monkeypatch.setattr(proxylab.bench, "load_table", lambda name: tables[name][0])
    monkeypatch.setattr(proxylab.stats, "stats_for_table", lambda t: tables[t.name][1])
    return tables


def test_search_command_end_to_end(tiny_tables, tmp_path, capsys):
    """The CLI wiring on real tiny tables."""
    out = tmp_path / "run"
    argv = ["search", "--bench", "tiny-a,tiny-b", "--pop", "6", "--iters", "4", "--seed", "1", "--fitness", "min",
            "--no-osp", "--out", str(out), "--no-progress", "--format", "json"]
    assert main(argv) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["best_proxy"] == (out / "best_proxy.txt").read_text().strip()
    assert {r["table"] for r in res["test_split"]} == {"tiny-a", "tiny-b"}
    assert main(argv) == 2 and "already exists" in capsys.readouterr().err
    assert main(argv + ["--resume"]) == 0
    assert json.loads(capsys.readouterr().out)["best_proxy"] == res["best_proxy"]
    assert main([a if a != "6" else "7" for a in argv] + ["--resume"]) == 2
    assert "pop: 6 in the folder, 7 now" in capsys.readouterr().err
    assert main(argv + ["--resume", "--select-by", "mean"]) == 2  # the pick rule is part of the configuration
    assert "select_by: 'min' in the folder, 'mean' now" in capsys.readouterr().err


def test_search_plot_draws_the_history(tiny_tables, tmp_path, capsys):
    import matplotlib.image as mpimg

    png = tmp_path / "history.png"
    argv = ["search", "--bench", "tiny-a", "--pop", "6", "--iters", "4", "--seed", "1", "--out", str(tmp_path / "r"),
            "--no-progress", "--plot", str(png)]
    assert main(argv) == 0, capsys.readouterr().err
    assert mpimg.imread(png)[..., :3].std() > 0.01  # curves drawn, not a blank canvas


def test_search_plot_with_a_bad_suffix_fails_before_searching(capsys, tmp_path):
    argv = ["search", "--bench", "resnet20-mnist5k", "--out", str(tmp_path / "r"), "--plot", str(tmp_path / "h.txt")]
    assert main(argv) == 2
    assert "must end in" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("extra,message", [
    (["--bench", "resnet20-mnist5k,resnet20-mnist5k"], "names resnet20-mnist5k more than once"),
    (["--bench", "resnet20-mnist5k", "--alloc-fractions", "0.2,0.5"], "add that, or drop it"),
])
def test_options_that_would_be_silently_ignored_or_double_counted_are_refused(capsys, tmp_path, extra, message):
    assert main(["search", *extra, "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and not (tmp_path / "o").exists()


def test_out_that_is_a_file_or_a_foreign_folder_gets_advice_that_works(tiny_tables, tmp_path, capsys):
    argv = ["search", "--bench", "tiny-a", "--pop", "6", "--iters", "2", "--no-progress"]
    (tmp_path / "notes.txt").write_text("mine")
    for resume in ([], ["--resume"]):
        assert main(argv + ["--out", str(tmp_path / "notes.txt")] + resume) == 2
        assert "is a file, not a folder" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert main(argv + ["--out", str(tmp_path), "--resume"]) == 2  # non-empty, but no search in it
    assert "not a search's folder either: choose another --out" in capsys.readouterr().err


def test_a_cli_run_resumes_from_python_with_the_same_statistics(tiny_tables, tmp_path):
    """The CLI records the tables' own statistics; a notebook passing those same statistics may resume the run."""
    from proxylab.search import ProxySearch

    out = tmp_path / "run"
    assert main(["search", "--bench", "tiny-a", "--space", "emq", "--pop", "6", "--iters", "3", "--out", str(out),
                 "--no-progress"]) == 0
    table, stats = tiny_tables["tiny-a"]
    again = ProxySearch(space="emq", pop=6, iters=3, out_dir=out, resume=True).fit([table], [stats])
    assert again.best_formula_ == (out / "best_proxy.txt").read_text().strip()
