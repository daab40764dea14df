"""benchmarks/retrieval_regret_ci.py: paired regret differences with query and task-cluster bootstrap CIs."""
import csv

import numpy as np
import pytest

from tests.retrieval.bench_scripts import load_bench_script


@pytest.fixture(scope="module")
def script():
    return load_bench_script("retrieval_regret_ci.py", "regret_ci_script")


def _rows(regrets):
    """{(method, query): regret} -> per-query rows as benchmarks/retrieval.py writes them (task = query's prefix)."""
    return [{"method": m, "query_kind": "same_task", "query": q, "task": q.split(".")[0], "regret": str(r)}
            for (m, q), r in regrets.items()]


def test_paired_differences_and_counts(script):
    regrets = {("leep-all", "a.1"): 0.1, ("leep-all", "a.2"): 0.0, ("leep-all", "b.1"): 0.3,
               ("m", "a.1"): 0.0, ("m", "a.2"): 0.2, ("m", "b.1"): 0.3}
    (row,) = script.regret_cis(_rows(regrets), "leep-all", 2000, 0)
    assert (row["better"], row["worse"], row["equal"]) == (1, 1, 1)
    assert row["mean_diff"] == pytest.approx(np.mean([-0.1, 0.2, 0.0]))
    assert row["queries"] == 3 and row["tasks"] == 2


def test_cluster_bootstrap_against_enumeration(script):
    # clusters a = [0, 0] and b = [1]: a resample is aa (mean 0), ab or ba (1/3) or bb (1), each 1/4 likely, so the
    # 2.5% and 97.5% quantiles are 0 and 1, and about half the resamples have mean 1/3
    diff = np.array([0.0, 0.0, 1.0])
    assert script.cluster_bootstrap_ci(diff, ["a", "a", "b"], 20000, 0) == (0.0, 1.0)
    lo, hi = script.cluster_bootstrap_ci(diff, ["a", "a", "b"], 20000, 0, level=0.4)  # the middle 40%: all 1/3
    assert lo == pytest.approx(1 / 3) and hi == pytest.approx(1 / 3)
    # one cluster: nothing to resample, so no interval
    assert all(np.isnan(script.cluster_bootstrap_ci(np.array([0.1, 0.3]), ["a", "a"], 100, 0)))


def test_a_constant_difference_gives_a_point_interval(script):
    assert script.query_bootstrap_ci(np.full(5, 0.25), 1000, 0) == (0.25, 0.25)


def test_cli_writes_the_csv_and_refuses_bad_input(script, tmp_path):
    regrets = {(m, f"{t}.{n}"): (0.1 if m == "m" and n == 0 else 0.0) for m in ("leep-all", "m") for t in "ab"
               for n in range(3)}
    src = tmp_path / "q.csv"
    rows = _rows(regrets)
    with src.open("w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    out = tmp_path / "ci.csv"
    script.main(["--queries", str(src), "--out", str(out), "--resamples", "500"])
    (got,) = list(csv.DictReader(out.open()))
    assert got["method"] == "m" and int(got["worse"]) == 2 and float(got["mean_diff"]) == pytest.approx(0.2 / 6, abs=1e-6)
    with pytest.raises(SystemExit, match="not a method"):
        script.main(["--queries", str(src), "--out", str(out), "--baseline", "nce-all"])
    with pytest.raises(SystemExit, match="does not exist"):
        script.main(["--queries", str(tmp_path / "none.csv"), "--out", str(out)])
    (tmp_path / "bad.csv").write_text("method,query\nm,a.0\n")
    with pytest.raises(SystemExit, match="not a per-query CSV"):
        script.main(["--queries", str(tmp_path / "bad.csv"), "--out", str(out)])
    with src.open("w", newline="") as f:  # a method row missing for one query
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows[:-1])
    with pytest.raises(SystemExit, match="m has no row"):
        script.main(["--queries", str(src), "--out", str(out)])
    with src.open("w", newline="") as f:  # two runs' rows joined: a query twice
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows + rows[:1])
    with pytest.raises(SystemExit, match="two rows"):
        script.main(["--queries", str(src), "--out", str(out)])
