"""The zoo: plans, training, atomic per-model folders, resume after SIGKILL, Dask, loading as black boxes."""
import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from proxylab.errors import ProxylabError
from proxylab.retrieval.tasks import SOURCE_TASKS
from proxylab.retrieval.zoo import (ARCH_FAMILIES, ARCH_OPTIONS, MANIFEST_FIELDS, build_module, build_signatures,
                                    build_zoo, load_zoo, plan_model, train_model)
from proxylab.utils import sha256_file

TINY = 64  # training images per model in these tests


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory):
    out = tmp_path_factory.mktemp("zoo") / "z"
    threads = torch.get_num_threads()
    build_zoo(out, n_models=2, seed=0, progress=False, signatures=False, index=False, max_train_images=TINY)
    assert torch.get_num_threads() == threads  # the build restores the caller's thread count
    return out


def test_plans_are_deterministic_cover_tasks_and_families_and_ignore_zoo_size():
    plans = [plan_model(i) for i in range(4 * len(SOURCE_TASKS))]
    assert plans == [plan_model(i) for i in range(len(plans))]
    assert {p.task for p in plans[:len(SOURCE_TASKS)]} == set(SOURCE_TASKS)
    assert {p.arch for p in plans} == set(ARCH_FAMILIES)
    assert len({p.name for p in plans}) == len(plans) and len({p.seed for p in plans}) == len(plans)
    assert plan_model(7, zoo_seed=1) != plan_model(7, zoo_seed=0)
    assert all(p.kwargs in ARCH_OPTIONS[p.arch] for p in plans)
    # models of different quality: several training budgets per family
    assert len({(p.train_size, p.epochs) for p in plans}) >= 4
    assert plan_model(3, max_train_images=TINY).train_size == TINY


@pytest.mark.parametrize("arch", ARCH_FAMILIES)
def test_every_family_takes_canonical_images_and_normalises_inside(arch):
    mean, std = [0.1, 0.2, 0.3], [0.5, 0.25, 2.0]
    config = {"arch": arch, "kwargs": ARCH_OPTIONS[arch][0], "num_classes": 4, "mean": mean, "std": std}
    torch.manual_seed(0)
    model = build_module(config).eval()
    x = torch.rand(3, 3, 32, 32)
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(model(x), model.net((x - m) / s), atol=1e-6)
        assert model(x).shape == (3, 4)


def test_tiny_build_layout_and_manifest(tiny_zoo):
    with open(tiny_zoo / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == MANIFEST_FIELDS
    assert [int(r["id"]) for r in rows] == [0, 1]
    for r in rows:
        folder = tiny_zoo / "models" / r["name"]
        config = json.loads((folder / "config.json").read_text())
        assert config["weights_sha256"] == sha256_file(folder / "weights.pt")
        assert config["task"] == r["task"] and config["train_size"] == TINY
        assert 0.0 <= float(r["test_acc"]) <= 1.0
        assert r["family"] == SOURCE_TASKS[r["task"]].family
    assert not list((tiny_zoo / "models").glob(".*"))  # no temporary folders left behind


def test_loaded_models_reproduce_the_recorded_accuracy(tiny_zoo):
    from proxylab.retrieval.zoo import task_pool

    zoo = load_zoo(tiny_zoo)
    assert len(zoo) == 2 and zoo.ids == [0, 1] and 1 in zoo and 5 not in zoo
    row = zoo.get(0)
    _, _, test_x, test_y = task_pool(row["task"])
    logits = zoo.module(0)(test_x)
    assert float((logits.argmax(1) == test_y).double().mean()) == pytest.approx(row["test_acc"], abs=1e-6)
    bb = zoo.blackbox(0)
    p = bb.predict_proba(test_x[:7].numpy())
    assert p.shape == (7, row["num_classes"]) and bb.calls == 7
    assert np.allclose(p.sum(1), 1.0, atol=1e-5)
    assert np.allclose(p, torch.softmax(logits[:7], 1).detach().numpy(), atol=1e-6)
    assert zoo.find(row["name"]) == row and zoo.find("0") == row


def test_rerun_skips_finished_models_and_retrains_deterministically(tiny_zoo, tmp_path):
    zoo = load_zoo(tiny_zoo)
    names = [r["name"] for r in zoo.manifest]
    stamps = {n: os.stat(tiny_zoo / "models" / n / "weights.pt").st_mtime_ns for n in names}
    build_zoo(tiny_zoo, n_models=2, seed=0, progress=False, signatures=False, index=False, max_train_images=TINY)
    assert {n: os.stat(tiny_zoo / "models" / n / "weights.pt").st_mtime_ns for n in names} == stamps
    # the same plan gives the same bytes: a model rebuilt after a crash equals the one that was lost
    config, data = train_model(plan_model(1, 0, TINY))
    assert config["weights_sha256"] == zoo.config(1)["weights_sha256"]


def test_bad_zoo_requests(tiny_zoo, tmp_path):
    with pytest.raises(ProxylabError, match="seed"):
        build_zoo(tiny_zoo, n_models=2, seed=1, progress=False, signatures=False, index=False, max_train_images=TINY)
    with pytest.raises(ProxylabError, match="not a zoo"):
        load_zoo(tmp_path)
    with pytest.raises(ProxylabError, match="no model with id 9"):
        load_zoo(tiny_zoo).get(9)
    with pytest.raises(ProxylabError, match="n_models"):
        build_zoo(tmp_path / "x", n_models=0)
    with pytest.raises(ProxylabError, match="no signature"):
        load_zoo(tiny_zoo).signature(0)


def test_signature_and_index_stages_resume(tiny_zoo, tmp_path):
    import shutil

    from proxylab.retrieval.signature import Signature

    from proxylab.retrieval.features import FeatureExtractor, _build_trunk

    # A real extractor with seeded random weights: this tests the staging, not the features' quality, and
    # does not depend on the shipped extractor file.
    torch.manual_seed(0)
    fx = FeatureExtractor(_build_trunk(), id="fx-test-a")
    from proxylab.retrieval.zoo import task_pool

    pool = task_pool("mnist5k-lo")[2][:24]  # a small probe pool keeps the test fast; the stage is the same
    copy = tmp_path / "z"
    shutil.copytree(tiny_zoo, copy)
    assert build_signatures(copy, progress=False, extractor=fx, pool=pool) == 2
    sig = load_zoo(copy).signature(1)
    assert isinstance(sig, Signature) and sig.num_classes == 5 and sig.calls > 0 and sig.extractor == "fx-test-a"
    assert build_signatures(copy, progress=False, extractor=fx, pool=pool) == 0  # resumable: nothing left to capture
    # another extractor's features live in another space: its signatures are recaptured
    other = FeatureExtractor(fx.trunk, id="fx-test-b")
    assert build_signatures(copy, progress=False, extractor=other, pool=pool) == 2

    # stage 3: the index holds each model's encoded signature with its manifest metadata; a rerun adds nothing
    from proxylab.retrieval.encoders import Encoders
    from proxylab.retrieval.zoo import build_index

    torch.manual_seed(0)
    enc = Encoders(extractor_id="fx-test-b", extractor=other)
    assert build_index(copy, progress=False, encoders=enc) == 2
    assert build_index(copy, progress=False, encoders=enc) == 0
    zoo = load_zoo(copy)
    index = zoo.index
    assert len(index) == 2
    for row in zoo.manifest:
        meta = index.get(row["id"])
        assert (meta["name"], meta["task"], meta["arch"], meta["params"]) == (row["name"], row["task"], row["arch"], row["params"])
        assert np.allclose(index.vector(row["id"]), enc.encode_signature(zoo.signature(row["id"])), atol=1e-6)
    assert index.encoder_id == enc.id
    index.close()
    from proxylab.retrieval.index import DB_NAME, EncoderMismatchError

    torch.manual_seed(1)
    retrained = Encoders(extractor_id="fx-test-b", extractor=other)
    # an index from before encoder ids were recorded (no encoder rows): retrained encoders of the same
    # dimension are refused (its stored signatures do not re-encode to its vectors); its own encoders prove it
    import sqlite3

    with sqlite3.connect(copy / "index" / DB_NAME) as conn:
        conn.execute("DELETE FROM meta WHERE key IN ('encoder_id', 'encoder_ids')")
    conn.close()
    with pytest.raises(EncoderMismatchError, match="delete ZOO/index"):
        build_index(copy, progress=False, encoders=retrained)
    assert load_zoo(copy).index.encoder_id is None  # refused: nothing recorded
    assert build_index(copy, progress=False, encoders=enc) == 0
    assert load_zoo(copy).index.encoder_id == enc.id  # proven by re-encoding, then recorded
    # retrained encoders must not grow an index of the old ones' vectors: a clear error naming both ids
    with pytest.raises(EncoderMismatchError) as err:
        build_index(copy, progress=False, encoders=retrained)
    assert enc.id in str(err.value) and retrained.id in str(err.value) and "delete ZOO/index" in str(err.value)
    shutil.rmtree(copy / "index")
    assert build_index(copy, progress=False, encoders=retrained) == 2  # the advised fix works


_KILL_SCRIPT = """
import sys, torch
torch.set_num_threads(1)
from proxylab.retrieval.zoo import build_zoo
build_zoo(sys.argv[1], n_models=3, seed=0, progress=True, signatures=False, index=False, max_train_images=64)
"""


@pytest.mark.slow
def test_sigkill_loses_at_most_the_model_in_flight(tmp_path):
    out = tmp_path / "z"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT, str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not list((out / "models").glob("0000-*")):
            time.sleep(0.05)
        assert list((out / "models").glob("0000-*")), "the build never finished its first model"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finished = [p for p in (out / "models").iterdir() if not p.name.startswith(".")]
    assert 1 <= len(finished) <= 3
    for folder in finished:  # whatever has its final name is complete
        config = json.loads((folder / "config.json").read_text())
        assert config["weights_sha256"] == sha256_file(folder / "weights.pt")
    first = sha256_file(out / "models" / finished[0].name / "weights.pt")
    build_zoo(out, n_models=3, seed=0, progress=False, signatures=False, index=False, max_train_images=64)
    zoo = load_zoo(out)
    assert zoo.ids == [0, 1, 2]
    assert sha256_file(out / "models" / finished[0].name / "weights.pt") == first
    assert not list((out / "models").glob(".*"))
    for i in zoo.ids:  # every model equals an uninterrupted training of its plan
        assert zoo.config(i)["weights_sha256"] == train_model(plan_model(i, 0, 64))[0]["weights_sha256"]


@pytest.mark.slow
def test_dask_build_gives_identical_models(tiny_zoo, tmp_path):
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        out = build_zoo(tmp_path / "z", n_models=2, seed=0, scheduler=cluster.scheduler_address, progress=False,
                        signatures=False, index=False, max_train_images=TINY)
    local, remote = load_zoo(tiny_zoo), load_zoo(out)
    for i in local.ids:
        assert remote.config(i)["weights_sha256"] == local.config(i)["weights_sha256"]
        assert remote.get(i)["test_acc"] == local.get(i)["test_acc"]


def test_unreachable_scheduler_is_a_clear_error(tmp_path, monkeypatch):
    import proxylab.retrieval.zoo as zoo_module

    monkeypatch.setattr(zoo_module, "CONNECT_TIMEOUT", 1)
    with pytest.raises(ProxylabError, match="Dask scheduler"):
        build_zoo(tmp_path / "z", n_models=1, scheduler="tcp://127.0.0.1:9", progress=False, max_train_images=TINY)
