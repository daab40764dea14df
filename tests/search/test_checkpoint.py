import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from proxylab.errors import ProxylabError
from proxylab.search import ProxySearch
from proxylab.stats import NetworkStats

CONFIG = dict(space="emq", pop=10, seed=0, checkpoint_every=3)
ITERS = 60
SCRIPT = """
import pickle, sys, torch
torch.set_num_threads(1)
from proxylab.search import ProxySearch
table, stats = pickle.load(open(sys.argv[1], "rb"))
ProxySearch(space="emq", pop=10, iters=int(sys.argv[3]), seed=0, checkpoint_every=3,
            out_dir=sys.argv[2]).fit([table], [stats])
"""


def snapshot(folder: Path):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_sigkill_then_resume_equals_an_uninterrupted_run(tiny, tiny_pickle, tmp_path, one_thread):
    table, stats = tiny
    killed = tmp_path / "killed"
    log = open(tmp_path / "stderr.txt", "w+")
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(tiny_pickle), str(killed), str(ITERS)],
                            stdout=subprocess.DEVNULL, stderr=log)
    ckpt = killed / "checkpoint.json"
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            if ckpt.is_file() and json.loads(ckpt.read_text())["iteration"] >= 6:
                break
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    log.seek(0)
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it could be killed: {log.read()[-2000:]}"
    stopped_at = json.loads(ckpt.read_text())["iteration"]
    assert 6 <= stopped_at < ITERS and not (killed / "best_proxy.txt").exists()

    resumed = ProxySearch(**CONFIG, iters=ITERS, out_dir=killed, resume=True).fit([table], [stats])
    assert not [p for p in killed.iterdir() if p.name.endswith(".tmp")]  # a write cut by the kill is swept
    whole = ProxySearch(**CONFIG, iters=ITERS, out_dir=tmp_path / "whole").fit([table], [stats])
    assert resumed.history_ == whole.history_
    assert resumed.best_formula_ == whole.best_formula_
    a, b = snapshot(killed), snapshot(tmp_path / "whole")
    for name in ("best_proxy.txt", "history.csv", "hall_of_fame.csv", "results.csv", "checkpoint.json"):
        assert a[name] == b[name], name


def test_refusals_leave_the_folder_untouched(tiny, tmp_path, one_thread):
    table, stats = tiny
    out = tmp_path / "run"
    ProxySearch(**CONFIG, iters=4, out_dir=out).fit([table], [stats])
    before = snapshot(out)
    with pytest.raises(ProxylabError, match="already exists"):
        ProxySearch(**CONFIG, iters=4, out_dir=out).fit([table], [stats])
    with pytest.raises(ProxylabError, match=r"pop: 10 in the folder, 12 now"):
        ProxySearch(**{**CONFIG, "pop": 12}, iters=4, out_dir=out, resume=True).fit([table], [stats])
    with pytest.raises(ProxylabError, match="space differs"):
        ProxySearch(**{**CONFIG, "space": "extended"}, iters=4, out_dir=out, resume=True).fit([table], [stats])
    other = table.subset(table.split("all")[::-1].copy())
    with pytest.raises(ProxylabError, match="tables differs"):
        ProxySearch(**CONFIG, iters=4, out_dir=out, resume=True).fit([other], [stats])
    scaled = stats.to_dict()  # same network layout, other statistics (as another network's would be)
    scaled["tensors"] = {k: [2 * t for t in ts] for k, ts in scaled["tensors"].items()}
    with pytest.raises(ProxylabError, match="searched with other statistics"):  # also with a new checkpoint_every
        ProxySearch(**{**CONFIG, "checkpoint_every": 2}, iters=4, out_dir=out,
                    resume=True).fit([table], [NetworkStats.from_dict(scaled)])
    assert snapshot(out) == before  # config.yaml included: a refused resume changes nothing
    with pytest.raises(ProxylabError, match="no search to resume"):
        ProxySearch(**CONFIG, iters=4, out_dir=tmp_path / "empty", resume=True).fit([table], [stats])


def test_the_same_statistics_resume_however_they_are_passed(tiny, tmp_path, one_thread):
    table, stats = tiny
    out = tmp_path / "run"
    ProxySearch(**CONFIG, iters=4, out_dir=out).fit([table], [stats])
    same = NetworkStats.from_dict(stats.to_dict())  # an equal copy, as a notebook would rebuild it
    assert ProxySearch(**CONFIG, iters=4, out_dir=out, resume=True).fit([table], [same]).best_formula_
    (out / "stats_origin.json").write_text("null")
    with pytest.raises(ProxylabError, match="stats_origin.json is damaged"):
        ProxySearch(**CONFIG, iters=4, out_dir=out, resume=True).fit([table], [same])


def test_resuming_a_finished_run_rewrites_the_same_results(tiny, tmp_path, one_thread):
    table, stats = tiny
    out = tmp_path / "run"
    first = ProxySearch(**CONFIG, iters=5, out_dir=out).fit([table], [stats])
    again = ProxySearch(**{**CONFIG, "checkpoint_every": 2}, iters=5, out_dir=out, resume=True).fit([table], [stats])
    assert again.history_ == first.history_ and again.best_formula_ == first.best_formula_
    import yaml  # how the run executes is updated on resume (the result part is the same, or it is refused)

    assert yaml.safe_load((out / "config.yaml").read_text())["checkpoint_every"] == 2
    # the run's wall time counts every session: the resume adds to it, never replaces it with its own second
    assert again.wall_time_ > first.wall_time_
    assert json.loads((out / "summary.json").read_text())["wall_time_s"] == pytest.approx(again.wall_time_)


def test_output_folder_contents(tiny, tmp_path, one_thread):
    import csv
    import yaml

    table, stats = tiny
    out = tmp_path / "run"
    ps = ProxySearch(**CONFIG, iters=6, out_dir=out).fit([table], [stats])
    assert (out / "best_proxy.txt").read_text().strip() == ps.best_formula_
    history = list(csv.DictReader(open(out / "history.csv")))
    assert len(history) == 7 and {"best_fitness", "mean_fitness", "rejected_early", "rejected_full",
                                  "cache_hits", "evaluations"} <= set(history[0])
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["pop"] == 10 and config["space"]["name"] == "emq" and config["tables"][0]["name"] == "tiny-a"
    results = list(csv.DictReader(open(out / "results.csv")))
    roles = [r["role"] for r in results]
    assert roles.count("searched") == 1 and roles.count("best_known") == 1
    assert {"bparams", "hawq"} <= {r["proxy"] for r in results}
    test_ceiling = table.subset(table.split("test")).noise_ceiling  # of the rows the figures rank
    assert test_ceiling != pytest.approx(table.noise_ceiling, abs=1e-6)
    assert all(float(r["noise_ceiling"]) == pytest.approx(test_ceiling) for r in results)
    hof = list(csv.DictReader(open(out / "hall_of_fame.csv")))
    assert hof[0]["formula"] == ps.best_formula_
