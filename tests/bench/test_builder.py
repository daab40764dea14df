"""End-to-end builds on a tiny real setup (ResNet-20 on 8x8 digits, one epoch): every number of the table is
checked against an independent measurement with proxylab.quant, and the build against kills and restarts."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from proxylab.bench import format as fmt
from proxylab.bench import load_table
from proxylab.bench.builder import BuildSettings, build_table
from proxylab.bench.measure import half_mask
from proxylab.errors import ProxylabError

DATA = "digits"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # the machine is shared: one torch thread per process is faster than two fighting for the cores
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from proxylab.data import get_dataset
    from proxylab.nets import create_net, save_checkpoint, train_net
    from proxylab.utils import seed_everything

    ds = get_dataset(DATA)
    seed_everything(0)
    model = create_net("resnet20", ds.num_classes, ds.in_channels, ds.image_size)
    result = train_net(model, ds, epochs=1, seed=0, progress=False)
    out = tmp_path_factory.mktemp("ckpt")
    save_checkpoint(out, model, {"net": "resnet20", "data": DATA, "num_classes": ds.num_classes,
                                 "in_channels": ds.in_channels, "image_size": ds.image_size, "kwargs": {},
                                 "seed": 0, "epochs": 1, "test_acc": result["test_acc"]})
    return out


def _settings(checkpoint, **kw):
    base = dict(net=None, data=DATA, n=12, seed=0, checkpoint=str(checkpoint))
    base.update(kw)
    return BuildSettings(**base)


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_every_row_matches_an_independent_measurement(checkpoint, tmp_path):
    from proxylab.data import get_dataset
    from proxylab.nets import load_checkpoint
    from proxylab.quant import QuantizedNetwork

    table = build_table(tmp_path / "t", _settings(checkpoint), progress=False)
    assert len(table) == 15 and table.meta["status"] == "complete"
    assert [tuple(table.bits[i]) for i in range(3)] == [(b,) * len(table.layer_names) for b in (2, 3, 4)]
    model, _ = load_checkpoint(checkpoint)
    ds = get_dataset(DATA)
    qn = QuantizedNetwork(model, ds.calib.x, bit_choices=(2, 3, 4), act_bits=8, protocol="rtn")
    assert table.layer_names == qn.layer_names
    mask = torch.from_numpy(half_mask(len(ds.test.y), 0))
    params = np.array(table.meta["params"], dtype=np.float64)
    for row in table:
        qn.apply(row["bits"])
        assert row["acc"] == qn.evaluate(ds.test.x, ds.test.y)
        assert row["acc_half_a"] == qn.evaluate(ds.test.x[mask], ds.test.y[mask])
        assert row["acc_half_b"] == qn.evaluate(ds.test.x[~mask], ds.test.y[~mask])
        assert row["size_mb"] == pytest.approx((np.array(row["bits"]) * params).sum() / 8 / 2**20, rel=1e-12)
        assert row["bitops"] == pytest.approx(8 * float((np.array(row["bits"]) * table.macs).sum()), rel=1e-12)
    s = table.meta["summary"]
    assert s["noise_ceiling"] == pytest.approx(spearmanr(table.acc_half_a, table.acc_half_b).statistic)
    assert s["spearman_size_acc"] == pytest.approx(spearmanr(table.size_mb, table.acc).statistic)
    assert (s["acc_min"], s["acc_max"]) == (table.acc.min(), table.acc.max())
    qn.restore_float()
    assert table.meta["float_acc"] == qn.evaluate(ds.test.x, ds.test.y)
    assert table.meta["command"].startswith("proxylab bench build --checkpoint")


def test_load_network_returns_the_measured_network(checkpoint, tmp_path):
    from proxylab.nets import evaluate

    table = build_table(tmp_path / "t", _settings(checkpoint, n=3, weights_dtype="float16"), progress=False)
    state = torch.load(tmp_path / "t" / fmt.WEIGHTS_FILE, weights_only=True)
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    model, ds, config = load_table(tmp_path / "t").load_network()
    assert config["network"]["name"] == "resnet20" and ds.name == DATA
    assert evaluate(model, ds.test.x, ds.test.y) == table.meta["float_acc"]  # fp16 weights were what got measured
    with open(tmp_path / "t" / fmt.WEIGHTS_FILE, "ab") as f:
        f.write(b"\0")
    with pytest.raises(ProxylabError, match=r"weights\.pt: sha256 .* does not match"):
        load_table(tmp_path / "t").load_network()


def test_rerun_is_a_noop_and_other_settings_touch_nothing(checkpoint, tmp_path):
    build_table(tmp_path / "t", _settings(checkpoint, n=3), progress=False)
    before = _digest(tmp_path / "t")
    assert len(build_table(tmp_path / "t", _settings(checkpoint, n=3), progress=False)) == 6
    with pytest.raises(ProxylabError, match=r"other settings \(n: 3 -> 4\); nothing was changed"):
        build_table(tmp_path / "t", _settings(checkpoint, n=4), progress=False)
    with pytest.raises(ProxylabError, match=r"protocol: 'rtn' -> 'bias_correction'"):
        build_table(tmp_path / "t", _settings(checkpoint, n=3, protocol="bias_correction"), progress=False)
    assert _digest(tmp_path / "t") == before


def test_auto_protocol_follows_its_rule_and_keeps_its_trial_rows(checkpoint, tmp_path):
    from proxylab.bench.builder import reliability
    from proxylab.quant import PROTOCOLS

    said = []
    auto = build_table(tmp_path / "auto", _settings(checkpoint, n=3, protocol="auto"), progress=False, log=said.append)
    assert not [m for m in said if "resuming" in m]  # its trial's rows are not a resume of anything
    trial = auto.meta["protocol_trial"]
    assert [t["protocol"] for t in trial] == PROTOCOLS.names()
    by_name = {t["protocol"]: t for t in trial}
    assert by_name["rtn"]["uniform_acc"] != by_name["bias_correction"]["uniform_acc"]  # calibration matters
    reliable = [t for t in trial if t["reliability"] >= 0.9] or trial
    key = (lambda t: (t["sampled_median"], t["reliability"])) if reliable is not trial else (lambda t: t["reliability"])
    chosen = max(reliable, key=key)["protocol"]
    assert auto.meta["protocol"]["name"] == chosen and auto.meta["protocol"]["requested"] == "auto"
    explicit = build_table(tmp_path / "explicit", _settings(checkpoint, n=3, protocol=chosen), progress=False)
    assert (tmp_path / "auto" / fmt.TABLE_FILE).read_bytes() == (tmp_path / "explicit" / fmt.TABLE_FILE).read_bytes()
    sampled = explicit.acc[3:]
    assert [t for t in trial if t["protocol"] == chosen][0]["reliability"] == round(reliability(sampled, 500), 4)
    # the rule: the highest typical accuracy among reliable protocols, else the most reliable
    from proxylab.bench.builder import pick_protocol

    rows = [{"protocol": "a", "reliability": 0.99, "sampled_median": 0.15},
            {"protocol": "b", "reliability": 0.95, "sampled_median": 0.60},
            {"protocol": "c", "reliability": 0.50, "sampled_median": 0.97}]
    assert pick_protocol(rows) == "b"
    assert pick_protocol([dict(r, reliability=0.5) for r in rows[:2]]) == "a"
    # reliability itself: constant accuracies carry no signal; a wide spread over 500 images is almost all signal
    assert reliability(np.full(5, 0.9), 500) == 0.0
    assert reliability(np.linspace(0.1, 0.9, 20), 500) > 0.98


def test_killed_build_resumes_with_every_row_exactly_once(checkpoint, tmp_path):
    n = 25
    reference = build_table(tmp_path / "ref", _settings(checkpoint, n=n), progress=False)
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "proxylab.cli", "bench", "build", "--checkpoint", str(checkpoint), "--data", DATA,
           "--n", str(n), "--seed", "0", "--out", str(out), "--no-progress", "--threads", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    rows_at_kill = 0
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            path = out / fmt.TABLE_FILE
            rows_at_kill = path.read_bytes().count(b"\n") - 1 if path.exists() else 0
            if rows_at_kill >= 3:
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.005)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert 3 <= rows_at_kill < n + 3, "the build must be killed mid-way for this test to mean anything"
    with open(out / fmt.TABLE_FILE, "ab") as f:  # and as if the kill had cut a row in half
        f.write(b"77,2 3 4")
    resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming" in resumed.stderr and "torn last line" in resumed.stderr
    table = load_table(out)
    assert sorted(table.cfg_id.tolist()) == list(range(n + 3))  # every row exactly once
    assert (out / fmt.TABLE_FILE).read_bytes() == (tmp_path / "ref" / fmt.TABLE_FILE).read_bytes()
    assert table.meta["summary"] == reference.meta["summary"]


def test_dask_local_cluster_gives_the_same_table_row_for_row(checkpoint, tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    local = build_table(tmp_path / "local", _settings(checkpoint, n=10), progress=False)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        remote = build_table(tmp_path / "dask", _settings(checkpoint, n=10), scheduler=cluster.scheduler_address,
                             progress=False, chunk=3)
    assert (tmp_path / "dask" / fmt.TABLE_FILE).read_bytes() == (tmp_path / "local" / fmt.TABLE_FILE).read_bytes()
    assert remote.meta["build"]["scheduler"].startswith("tcp://") or remote.meta["build"]["scheduler"].startswith("inproc")


@pytest.mark.slow
def test_dask_process_workers_give_the_same_table(checkpoint, tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    build_table(tmp_path / "local", _settings(checkpoint, n=10), progress=False)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        build_table(tmp_path / "dask", _settings(checkpoint, n=10), scheduler=cluster.scheduler_address, progress=False)
    assert (tmp_path / "dask" / fmt.TABLE_FILE).read_bytes() == (tmp_path / "local" / fmt.TABLE_FILE).read_bytes()


def test_unreachable_scheduler_is_a_clear_error(checkpoint, tmp_path):
    pytest.importorskip("dask.distributed")
    with pytest.raises(ProxylabError, match="cannot reach the Dask scheduler"):
        build_table(tmp_path / "t", _settings(checkpoint, n=3), scheduler="tcp://127.0.0.1:1", progress=False,
                    scheduler_timeout=2)


def test_a_build_killed_before_its_meta_json_starts_again_on_rerun(checkpoint, tmp_path):
    """Killed after weights.pt but before meta.json (training, the protocol trial): the rerun of the same command
    starts the build again in that folder; other settings are refused, and the folder is left as it was."""
    from proxylab.bench.builder import BUILD_MARK

    reference = build_table(tmp_path / "ref", _settings(checkpoint, n=3), progress=False)
    out = tmp_path / "t"
    out.mkdir()
    (out / BUILD_MARK).write_text(json.dumps(_settings(checkpoint, n=3).identity()))  # what the build wrote first
    (out / "weights.pt").write_bytes(b"half-written by the killed build")
    with pytest.raises(ProxylabError, match="start of a build with other settings"):
        build_table(out, _settings(checkpoint, n=4), progress=False)
    assert (out / "weights.pt").read_bytes() == b"half-written by the killed build"
    again = build_table(out, _settings(checkpoint, n=3), progress=False)
    np.testing.assert_array_equal(again.acc, reference.acc)
    assert not (out / BUILD_MARK).exists()  # once meta.json is written it says what the folder holds


def test_quantize_bench_reproduces_a_digits_tables_rows_whose_calib_count_exceeds_the_split(checkpoint, tmp_path,
                                                                                            capsys):
    """digits' calib split holds 200 images, fewer than the default 256: the builder calibrated on all 200, and so
    must `quantize --bench`, without an error or a note about a difference there is not."""
    from proxylab.cli import main

    table = build_table(tmp_path / "t", _settings(checkpoint, n=3), progress=False)
    assert table.meta["protocol"]["calib_size"] == 256 > 200
    for i in (0, len(table) - 1):
        bits = " ".join(str(int(b)) for b in table.bits[i])
        assert main(["quantize", "--bench", str(tmp_path / "t"), "--bits", bits, "--format", "json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["quant_acc"] == out["table_acc"] == pytest.approx(float(table.acc[i]), abs=0)
        assert "note" not in out and out["calibration"] == "digits calib split, first 200 images"
