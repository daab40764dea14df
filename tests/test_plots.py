"""proxylab.plots: every picture is rendered to a file, loaded back and checked for ink, and its Figure is
read back to check that the axes are labelled, the legend is there and the drawn data are the input."""
import csv
import itertools
import json
import sys

import numpy as np
import pytest
from scipy.stats import spearmanr

from proxylab import plots
from proxylab.errors import MissingDependencyError, ProxylabError
from tests.examples.pngcheck import assert_picture_shows_something

pytest.importorskip("matplotlib")


def _labelled(ax):
    assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title()
    legend = ax.get_legend()
    assert legend is not None
    return [t.get_text() for t in legend.get_texts()]


def _correlated(n=80, seed=0):
    rng = np.random.default_rng(seed)
    acc = rng.random(n)
    return acc + rng.normal(0, 0.3, n), acc


def test_blank_picture_is_caught(tmp_path):
    fig, _ = plots._figure()
    plots._save(fig, tmp_path / "empty.png")  # an empty axes frame, nothing drawn
    with pytest.raises(AssertionError):
        assert_picture_shows_something(tmp_path / "empty.png", min_ink=0.05)
    import matplotlib.image

    matplotlib.image.imsave(tmp_path / "white.png", np.ones((100, 100, 3)))
    with pytest.raises(AssertionError, match="blank"):
        assert_picture_shows_something(tmp_path / "white.png")


def test_proxy_scatter_one_proxy(tmp_path):
    score, acc = _correlated()
    fig = plots.proxy_scatter(score, acc, tmp_path / "s.png", noise_ceiling=0.97)
    assert_picture_shows_something(tmp_path / "s.png")
    ax = fig.axes[0]
    ax.set_title("x")  # the one-proxy panel carries no title of its own; _labelled wants one
    texts = _labelled(ax)
    rho = spearmanr(score, acc).statistic
    assert f"Spearman ρ = {rho:.3f}" in texts[0] and "80 configurations" in texts[0]
    assert "noise ceiling ρ = 0.970" in texts[1]
    np.testing.assert_allclose(ax.collections[0].get_offsets(), np.column_stack([score, acc]))


def test_proxy_scatter_side_by_side(tmp_path):
    score, acc = _correlated(60)
    named = {"good": score, "reversed": -score, "constant": np.ones(60), "perfect": acc * 1e-6}
    fig = plots.proxy_scatter(named, acc, tmp_path / "many.png", title="table X", ncols=3)
    assert_picture_shows_something(tmp_path / "many.png")
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == list(named)
    assert len(fig.axes) == 6  # 2 rows x 3, two hidden
    for ax, (name, s) in zip(visible, named.items()):
        texts = _labelled(ax)
        np.testing.assert_allclose(ax.collections[0].get_offsets(), np.column_stack([s, acc]))
        if name == "constant":
            assert "undefined" in texts[0]
        else:
            assert f"{spearmanr(s, acc).statistic:.3f}" in texts[0]
    assert fig._suptitle.get_text() == "table X"


def test_proxy_scatter_user_errors(tmp_path):
    score, acc = _correlated()
    with pytest.raises(ProxylabError, match="80 proxy scores but 79 accuracies"):
        plots.proxy_scatter(score, acc[:-1], tmp_path / "a.png")
    bad = score.copy()
    bad[3] = np.nan
    with pytest.raises(ProxylabError, match="NaN"):
        plots.proxy_scatter({"p": bad}, acc, tmp_path / "a.png")
    with pytest.raises(ProxylabError, match="must end in .png"):
        plots.proxy_scatter(score, acc, tmp_path / "a.jpg")
    (tmp_path / "afile").write_text("")
    with pytest.raises(ProxylabError, match="is a file, not a folder"):
        plots.proxy_scatter(score, acc, tmp_path / "afile" / "a.png")
    assert not (tmp_path / "a.png").exists()


def test_missing_matplotlib_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install proxylab\[notebooks\]"):
        plots.proxy_scatter([1.0, 2.0], [0.1, 0.2], tmp_path / "a.png")


def _history_rows(n=30):
    rng = np.random.default_rng(1)
    best = np.maximum.accumulate(rng.random(n))
    return [{"iteration": i, "best_fitness": float(b), "mean_fitness": float(b) * 0.7, "best_formula": "f"}
            for i, b in enumerate(best)]


def _write_csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def test_search_history_from_rows_and_folder(tmp_path):
    rows = _history_rows()
    fig = plots.search_history(rows, tmp_path / "h.png")
    assert_picture_shows_something(tmp_path / "h.png")
    ax = fig.axes[0]
    texts = _labelled(ax)
    assert len(ax.lines) == 2 and not any("select" in t for t in texts)
    np.testing.assert_allclose(ax.lines[0].get_xdata(), [r["iteration"] for r in rows])
    np.testing.assert_allclose(ax.lines[0].get_ydata(), [r["best_fitness"] for r in rows])
    np.testing.assert_allclose(ax.lines[1].get_ydata(), [r["mean_fitness"] for r in rows])

    run = tmp_path / "run"
    run.mkdir()
    _write_csv(run / "history.csv", rows)
    _write_csv(run / "hall_of_fame.csv", [{"formula": "f", "search_fitness": 0.9, "select_fitness": 0.61}])
    fig = plots.search_history(run, tmp_path / "h2.png")
    assert_picture_shows_something(tmp_path / "h2.png")
    ax = fig.axes[0]
    texts = _labelled(ax)
    assert any("select split (0.610)" in t for t in texts)
    np.testing.assert_allclose(ax.lines[2].get_ydata(), [0.61, 0.61])
    np.testing.assert_allclose(ax.lines[0].get_ydata(), [r["best_fitness"] for r in rows])  # read back from csv


def test_search_history_select_column_and_errors(tmp_path):
    rows = [dict(r, select_fitness=r["best_fitness"] - 0.1) for r in _history_rows()]
    fig = plots.search_history(rows, tmp_path / "h.png", select_fitness=0.5)
    ax = fig.axes[0]
    assert len(ax.lines) == 4  # best, mean, select column, chosen proxy line
    np.testing.assert_allclose(ax.lines[2].get_ydata(), [r["select_fitness"] for r in rows])
    with pytest.raises(ProxylabError, match="lacks column"):
        plots.search_history([{"iteration": 0, "fitness": 1.0}], tmp_path / "x.png")
    with pytest.raises(ProxylabError, match="no search history"):
        plots.search_history(tmp_path / "nothing-here", tmp_path / "x.png")


def _front_brute_force(x, y):
    keep = []
    for i in range(len(x)):
        dominated = any((x[j] <= x[i] and y[j] >= y[i] and (x[j] < x[i] or y[j] > y[i])) for j in range(len(x)))
        duplicate_before = any(x[j] == x[i] and y[j] == y[i] for j in range(i))
        if not dominated and not duplicate_before:
            keep.append(i)
    return sorted(keep, key=lambda i: x[i])


@pytest.mark.parametrize("seed", range(6))
def test_pareto_front_against_brute_force(seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 6, 25).astype(float)  # small integer grids: many ties in x, y and both
    y = rng.integers(0, 6, 25).astype(float)
    assert plots.pareto_front(x, y).tolist() == _front_brute_force(x, y)


def test_pareto_plot(tmp_path):
    rng = np.random.default_rng(2)
    rows = [{"allocator": name, "size_mb": float(rng.random()), "acc": float(rng.random())}
            for name, _ in itertools.product(("proxylab", "uniform", "hawq_v2"), range(4))]
    bg = (rng.random(100), rng.random(100))
    fig = plots.pareto(rows, tmp_path / "p.png", background=bg)
    assert_picture_shows_something(tmp_path / "p.png")
    ax = fig.axes[0]
    texts = _labelled(ax)
    x = np.array([r["size_mb"] for r in rows])
    y = np.array([r["acc"] for r in rows])
    front = _front_brute_force(x, y)
    assert texts[:4] == ["bench configurations (100)", "proxylab", "uniform", "hawq_v2"]
    assert texts[4] == f"Pareto front ({len(front)} points)"
    np.testing.assert_allclose(ax.collections[0].get_offsets(), np.column_stack(bg))
    for k, name in enumerate(("proxylab", "uniform", "hawq_v2")):
        sel = [i for i, r in enumerate(rows) if r["allocator"] == name]
        np.testing.assert_allclose(ax.collections[1 + k].get_offsets(), np.column_stack([x[sel], y[sel]]))
    np.testing.assert_allclose(ax.lines[0].get_xdata(), x[front])
    np.testing.assert_allclose(ax.lines[0].get_ydata(), y[front])

    with pytest.raises(ProxylabError, match="--measure"):
        plots.pareto([{"allocator": "uniform", "size_mb": 1.0}], tmp_path / "q.png")


def test_rank_chart_and_metric_bars(tmp_path):
    oracle = {10: 0.2, 11: 0.8, 12: 0.5, 13: 0.9, 14: 0.1}
    ranked = {"know2vec": [13, 12, 11], "random": [14, 10, 13]}
    metrics = [{"method": "know2vec", "recall@5": 0.8, "ndcg@10": 0.7},
               {"method": "random", "recall@5": 0.2, "ndcg@10": float("nan")}]
    fig = plots.rank_chart(ranked, oracle, tmp_path / "r.png", metrics=metrics)
    assert_picture_shows_something(tmp_path / "r.png")
    ax, bars = fig.axes
    texts = _labelled(ax)
    assert texts == ["know2vec (regret@1 = 0.000)", "random (regret@1 = 0.800)", "ideal order (oracle accuracy)"]
    np.testing.assert_allclose(ax.lines[0].get_ydata(), [0.9, 0.5, 0.8])
    np.testing.assert_allclose(ax.lines[1].get_ydata(), [0.1, 0.2, 0.9])
    np.testing.assert_allclose(ax.lines[2].get_ydata(), [0.9, 0.8, 0.5])
    np.testing.assert_allclose(ax.lines[0].get_xdata(), [1, 2, 3])
    assert _labelled(bars) == ["know2vec", "random"]
    heights = [p.get_height() for p in bars.patches]
    assert heights == pytest.approx([0.8, 0.7, 0.2, 0.0])  # NaN drawn as an empty bar
    assert [t.get_text() for t in bars.get_xticklabels()] == ["recall@5", "ndcg@10"]

    fig = plots.metric_bars(metrics, tmp_path / "m.png", metrics=["ndcg@10"])
    assert_picture_shows_something(tmp_path / "m.png")
    assert [p.get_height() for p in fig.axes[0].patches] == pytest.approx([0.7, 0.0])
    with pytest.raises(ProxylabError, match="no oracle accuracy"):
        plots.rank_chart([13, 99], oracle, tmp_path / "x.png")
    with pytest.raises(ProxylabError, match="missing"):
        plots.metric_bars(metrics, tmp_path / "x.png", metrics=["map"])


# ------------------------------------------------------------------- `proxylab proxy eval --plot`
def _cli(capsys, *argv):
    from proxylab.cli import main

    code = main(list(argv) + ["--format", "json"])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else None), err


def test_proxy_eval_plot_cli(tmp_path, capsys, monkeypatch, one_thread):
    from proxylab.bench import load_table
    from proxylab.proxy import KNOWN_PROXIES
    from proxylab.proxy.report import scores_on_table
    from proxylab.stats import stats_for_table

    monkeypatch.setenv("PROXYLAB_CACHE", str(tmp_path / "cache"))
    drawn = []  # a spy around the real function, to read back what the command drew
    real = plots.proxy_scatter
    monkeypatch.setattr(plots, "proxy_scatter", lambda *a, **k: drawn.append(real(*a, **k)) or drawn[-1])
    out = tmp_path / "figs" / "emq.png"  # the folder does not exist yet: created
    code, row, err = _cli(capsys, "proxy", "eval", "--bench", "resnet20-mnist5k", "--proxy", "bparams",
                          "--plot", str(out))
    assert code == 0, err
    assert row["plot"] == str(out) and f"wrote {out}" in err
    img = assert_picture_shows_something(out)
    assert img.shape[1] > 400

    table = load_table("resnet20-mnist5k")
    stats = stats_for_table(table, hessian=False)  # the cache the command just filled
    scores = scores_on_table(KNOWN_PROXIES.get("bparams"), table, stats, "test")
    acc = table.acc[table.split("test")]
    assert row["spearman"] == pytest.approx(spearmanr(scores, acc).statistic, abs=1e-9)
    (ax,) = drawn[0].axes
    np.testing.assert_allclose(ax.collections[0].get_offsets(), np.column_stack([scores, acc]))
    assert ax.get_title().startswith("bparams: sum_layers(") and "resnet20-mnist5k" in drawn[0]._suptitle.get_text()

    code, _, err = _cli(capsys, "proxy", "eval", "--bench", "resnet20-mnist5k", "--proxy", "bparams",
                        "--plot", str(tmp_path / "x.gif"))
    assert code == 2 and "must end in .png" in err

    # an invalid proxy has no scores: the numbers are still reported, the picture is not written (and says so)
    bad = tmp_path / "bad.png"
    code, row, err = _cli(capsys, "proxy", "eval", "--bench", "resnet20-mnist5k", "--plot", str(bad),
                          "--proxy", "mean_layers(mean(invert(relu(bW))))")
    assert code == 0, err
    assert row["valid"] is False and row["plot"].startswith("not written") and not bad.exists()


@pytest.mark.slow
def test_proxy_eval_plot_all_known(tmp_path, capsys, one_thread):
    out = tmp_path / "all.png"
    code, rows, err = _cli(capsys, "proxy", "eval", "--bench", "resnet20-mnist5k", "--all-known", "--plot", str(out))
    assert code == 0, err
    assert_picture_shows_something(out)
    assert "wrote" in err


def test_query_results(tmp_path):
    results = [{"rank": 1, "id": 7, "score": 0.91, "metadata": {"name": "mine", "task": "digits-lo"}},
               {"rank": 2, "id": 3, "score": 0.55, "metadata": {"name": "zoo-3", "task": "animal-hi"}},
               {"rank": 3, "id": 9, "score": -0.2, "metadata": {"name": "zoo-9", "task": "shapes-size"}}]
    fig = plots.query_results(results, tmp_path / "q.png", highlight=[7])
    assert_picture_shows_something(tmp_path / "q.png")
    ax = fig.axes[0]
    assert _labelled(ax) == ["zoo model", "highlighted (e.g. registered here)"]
    bars = ax.patches
    assert [b.get_width() for b in bars] == pytest.approx([0.91, 0.55, -0.2])
    assert [b.get_y() + b.get_height() / 2 for b in bars] == pytest.approx([2, 1, 0])  # best on top
    assert bars[0].get_facecolor() != bars[1].get_facecolor() and bars[1].get_facecolor() == bars[2].get_facecolor()
    ticks = dict(zip(ax.get_yticks(), [t.get_text() for t in ax.get_yticklabels()]))
    assert ticks == {2: "mine (digits-lo)", 1: "zoo-3 (animal-hi)", 0: "zoo-9 (shapes-size)"}
    fig = plots.query_results(results[1:], tmp_path / "q2.png", highlight=[7])  # nothing highlighted is shown
    assert _labelled(fig.axes[0]) == ["zoo model"]
    with pytest.raises(ProxylabError, match="no models"):
        plots.query_results([], tmp_path / "x.png")
