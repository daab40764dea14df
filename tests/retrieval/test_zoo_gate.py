"""The zoo's quality gate: a model below GATE_RATIO x chance on its calib split trains more rounds."""
import dataclasses
import json

import pytest

from proxylab.errors import ProxylabError
from proxylab.nets.train import evaluate
from proxylab.retrieval.zoo import (GATE_IMAGES, GATE_MAX_ROUNDS, GATE_RATIO, MIN_SOURCE_CLASSES, build_zoo,
                                    build_module, calib_data, load_zoo, plan_model, train_model, write_manifest)
from tests.retrieval.bench_scripts import load_bench_script

TINY = 64


def _module(config, data):
    import io

    import torch

    model = build_module(config)
    model.load_state_dict(torch.load(io.BytesIO(data)))
    return model.eval()


def test_gate_acc_is_the_calib_accuracy_of_the_weights_shipped():
    from proxylab.retrieval.oracle import CALIB_MAX_IMAGES
    from proxylab.retrieval.tasks import get_task

    assert GATE_IMAGES == CALIB_MAX_IMAGES  # the gate scores exactly the images calibration_accuracy does
    plan = plan_model(1, 0, TINY)  # on 64 images this one needs all 4 rounds to pass
    config, data = train_model(plan)
    x, y = calib_data(plan.task)
    want_x, want_y = get_task(plan.task).data("calib", limit=1000, seed=0)  # oracle.calibration_accuracy's images
    assert (x == want_x).all() and (y == want_y).all()
    assert config["gate_acc"] == pytest.approx(evaluate(_module(config, data), x, y), abs=1e-6)
    need = GATE_RATIO / config["num_classes"]
    assert config["gate_passed"] == (config["gate_acc"] >= need)
    assert config["gate_passed"] is True and config["gate_rounds"] == GATE_MAX_ROUNDS == 4
    assert config["epochs"] == plan.epochs * 4 and config["planned_epochs"] == plan.epochs
    # it stopped at the first round that passed: one round fewer and it fails
    config3, _ = train_model(dataclasses.replace(plan, gate_rounds=3))
    assert config3["gate_acc"] < need and config3["gate_passed"] is False and config3["gate_rounds"] == 3


def _pre_gate_bytes(plan):
    """What train_model made before the gate existed: one training of the plan, nothing after it."""
    import io

    import torch

    from proxylab.nets import train_net
    from proxylab.retrieval.tasks import get_task
    from proxylab.retrieval.zoo import _TaskData, task_pool
    from proxylab.utils import torch_threads

    with torch_threads(1):
        task = get_task(plan.task)
        px, py, tx, ty = task_pool(plan.task)
        x, y = px[:plan.train_size], py[:plan.train_size]
        config = {"arch": plan.arch, "kwargs": dict(plan.kwargs), "num_classes": task.num_classes,
                  "mean": x.mean(dim=(0, 2, 3)).tolist(), "std": x.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()}
        torch.manual_seed(plan.seed)
        model = build_module(config)
        train_net(model, _TaskData(task.dataset_name, task.num_classes, (x, y), (tx, ty)), epochs=plan.epochs,
                  seed=plan.seed, batch_size=32, lr=0.05, progress=False, augment="none")
        model.eval()
        buffer = io.BytesIO()
        torch.save({k: v.detach().cpu().clone() for k, v in model.state_dict().items()}, buffer)
        return buffer.getvalue()


def test_a_model_the_gate_passes_at_once_is_unchanged_and_a_failing_one_trains_on():
    plan = plan_model(1, 0, TINY)
    plain, plain_bytes = train_model(dataclasses.replace(plan, gate_ratio=0.0))
    assert plain["gate_rounds"] == 1 and plain["gate_passed"] is None and plain["gate_max_rounds"] == 1
    assert plain_bytes == _pre_gate_bytes(plan)
    easy, easy_bytes = train_model(dataclasses.replace(plan, gate_ratio=1e-9))  # passes in round 1
    assert easy["gate_rounds"] == 1 and easy["gate_passed"] is True and easy_bytes == plain_bytes
    # a gate these 64-image models cannot reach: every round is trained, the model is kept but marked
    hard, hard_bytes = train_model(dataclasses.replace(plan, gate_ratio=2.9, gate_rounds=2))
    assert hard["gate_rounds"] == 2 and hard["gate_passed"] is False and hard["epochs"] == 2 * plan.epochs
    assert hard_bytes != plain_bytes  # round 2 trained on from round 1's weights


def test_build_records_the_gate_and_refuses_other_gate_settings(tmp_path, capsys):
    out = tmp_path / "z"
    build_zoo(out, n_models=1, seed=0, signatures=False, index=False, max_train_images=TINY, gate_ratio=2.9,
              gate_rounds=2)
    assert "quality gate: 1 model(s) stayed below 2.9x chance" in capsys.readouterr().err
    row = load_zoo(out).get(0)
    assert row["gate_passed"] is False and row["gate_rounds"] == 2 and 0.0 <= row["gate_acc"] <= 1.0
    meta = json.loads((out / "zoo.json").read_text())
    assert (meta["gate_ratio"], meta["gate_max_rounds"]) == (2.9, 2)
    with pytest.raises(ProxylabError, match="gate_ratio=2.9, not 1.5: rerun with --gate-ratio 2.9"):
        build_zoo(out, n_models=1, seed=0, progress=False, signatures=False, index=False, max_train_images=TINY)
    with pytest.raises(ProxylabError, match="gate_max_rounds=2, not 3: rerun with --gate-rounds 2"):
        build_zoo(out, n_models=1, seed=0, progress=False, signatures=False, index=False, max_train_images=TINY,
                  gate_ratio=2.9, gate_rounds=3)
    with pytest.raises(ProxylabError, match="max_train_images=64, not None: rerun with --max-train-images 64"):
        build_zoo(out, n_models=1, seed=0, progress=False, signatures=False, index=False, gate_ratio=2.9,
                  gate_rounds=2)
    uncapped = tmp_path / "uncapped"
    build_zoo(uncapped, n_models=1, seed=0, progress=False, signatures=False, index=False, gate_ratio=0.0)
    with pytest.raises(ProxylabError, match="max_train_images=None, not 64: rerun without --max-train-images"):
        build_zoo(uncapped, n_models=1, seed=0, progress=False, signatures=False, index=False, gate_ratio=0.0,
                  max_train_images=TINY)


def test_a_zoo_built_before_the_gate_resumes_only_without_it(tmp_path):
    out = tmp_path / "old"
    build_zoo(out, n_models=1, seed=0, progress=False, signatures=False, index=False, max_train_images=TINY,
              gate_ratio=0.0)
    meta = json.loads((out / "zoo.json").read_text())
    for key in ("gate_ratio", "gate_max_rounds"):
        del meta[key]
    (out / "zoo.json").write_text(json.dumps(meta))
    with pytest.raises(ProxylabError, match="rerun with --gate-ratio 0.0"):
        build_zoo(out, n_models=2, seed=0, progress=False, signatures=False, index=False, max_train_images=TINY)
    build_zoo(out, n_models=2, seed=0, progress=False, signatures=False, index=False, max_train_images=TINY,
              gate_ratio=0.0)
    assert [(r["gate_rounds"], r["gate_passed"]) for r in load_zoo(out).manifest] == [(1, None), (1, None)]
    # model folders written before the gate (config.json without its fields): the manifest leaves them empty
    for folder in (out / "models").iterdir():
        config = json.loads((folder / "config.json").read_text())
        for key in ("gate_acc", "gate_rounds", "gate_passed", "gate_ratio", "gate_max_rounds", "planned_epochs"):
            del config[key]
        (folder / "config.json").write_text(json.dumps(config))
    write_manifest(out)
    assert (out / "manifest.csv").read_text().splitlines()[1].endswith(",,,")
    row = load_zoo(out).get(0)
    assert row["gate_acc"] is None and row["gate_rounds"] is None and row["gate_passed"] is None
    assert row["test_acc"] >= 0


def test_numpy_numbers_are_accepted_as_gate_settings():
    import numpy as np

    plan = plan_model(0, 0, TINY, gate_ratio=np.float32(1.25), gate_rounds=np.int64(2))
    assert (plan.gate_ratio, plan.gate_rounds) == (1.25, 2) and type(plan.gate_rounds) is int


def test_no_source_task_has_fewer_classes_than_the_gate_allows_for():
    from proxylab.retrieval.tasks import SOURCE_TASKS

    assert MIN_SOURCE_CLASSES == min(t.num_classes for t in SOURCE_TASKS.values())


@pytest.mark.parametrize("ratio, rounds, match", [(-1.0, 4, "gate ratio"), (float("nan"), 4, "gate ratio"),
                                                  (3.0, 4, "above 100% accuracy on the 3-class"),
                                                  (True, 4, "gate ratio"), (1.5, True, "gate rounds"),
                                                  (1.5, 0, "gate rounds"), (1.5, 2.5, "gate rounds")])
def test_bad_gate_settings_are_refused(tmp_path, ratio, rounds, match):
    with pytest.raises(ProxylabError, match=match):
        build_zoo(tmp_path / "z", n_models=1, max_train_images=TINY, gate_ratio=ratio, gate_rounds=rounds)
    assert not (tmp_path / "z").exists()


def test_cli_gate_options(tmp_path, capsys):
    from proxylab.cli import main

    code = main(["zoo", "build", "--out", str(tmp_path / "z"), "--n-models", "1", "--max-train-images", str(TINY),
                 "--no-signatures", "--gate-ratio", "2.9", "--gate-rounds", "2"])
    assert code == 0
    assert "gate_failed: 1" in capsys.readouterr().out
    for option, value, message in (("--gate-rounds", "0", "gate rounds must be an integer >= 1"),
                                   ("--gate-ratio", "-1", "gate ratio must be in [0, 3)")):
        code = main(["zoo", "build", "--out", str(tmp_path / "y"), "--n-models", "1", option, value])
        assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "y").exists()


def _zoo_gate_script():
    return load_bench_script("zoo_gate.py", "zoo_gate_script")


def test_zoo_gate_script_counts_against_a_pre_gate_build(tmp_path):
    script = _zoo_gate_script()
    kw = dict(n_models=2, seed=0, progress=False, signatures=False, index=False, max_train_images=TINY)
    base, easy, hard = tmp_path / "base", tmp_path / "easy", tmp_path / "hard"
    build_zoo(base, gate_ratio=0.0, **kw)
    build_zoo(easy, gate_ratio=0.01, gate_rounds=2, **kw)  # every model passes at once: the pre-gate weights
    build_zoo(hard, gate_ratio=2.9, gate_rounds=2, **kw)   # at 64 images no model reaches 2.9x chance
    for zoo_dir, payload in ((base, b"a"), (easy, b"a"), (hard, b"b")):  # signature files: compared as bytes
        (zoo_dir / "signatures").mkdir()
        for row in load_zoo(zoo_dir).manifest:
            (zoo_dir / "signatures" / f"{row['name']}.npz").write_bytes(payload + row["name"].encode())
    # the counts, recomputed from the manifests here
    hard_rows = load_zoo(hard).manifest
    assert all(r["gate_passed"] is False and r["gate_rounds"] == 2 for r in hard_rows)
    everything = {r["group"]: r for r in script.gate_rows(easy, base) if r["half"] == "all"}["all"]
    assert everything == {"group": "all", "half": "all", "models": 2, "retrained": 0, "passed_after_retraining": 0,
                          "failed": 0, "identical_to_baseline": 2, "signatures_identical": 2}
    rows = script.gate_rows(hard, base)
    everything = [r for r in rows if r["group"] == "all"][0]
    assert everything == {"group": "all", "half": "all", "models": 2, "retrained": 2, "passed_after_retraining": 0,
                          "failed": 2, "identical_to_baseline": 0, "signatures_identical": 0}
    # the default gate: model 1 needs all 4 rounds at 64 images (test_gate_acc_is_the_calib_accuracy_...)
    default = tmp_path / "default"
    build_zoo(default, **kw)
    for row in load_zoo(default).manifest:
        (default / "signatures").mkdir(exist_ok=True)
        (default / "signatures" / f"{row['name']}.npz").write_bytes(b"a" + row["name"].encode())
    manifest = load_zoo(default).manifest
    after = sum(1 for r in manifest if r["gate_rounds"] > 1 and r["gate_passed"] is True)
    everything = [r for r in script.gate_rows(default, base) if r["group"] == "all"][0]
    assert after >= 1 and everything["passed_after_retraining"] == after
    assert everything["identical_to_baseline"] == sum(1 for r in manifest if r["gate_rounds"] == 1)
    assert everything["signatures_identical"] == 2
    per_task = [r for r in rows if r["half"] != "all"]
    assert sum(r["models"] for r in per_task) == 2
    assert {(r["group"], r["half"]) for r in per_task} <= {(m["task"], h) for m in hard_rows for h in ("train", "test")}
    # without a baseline the comparison columns stay empty (0), and the CLI writes the CSV
    out = tmp_path / "gate.csv"
    assert script.main(["--zoo", str(hard), "--out", str(out)]) == 0
    text = out.read_text().splitlines()
    assert text[0] == ",".join(script.COLUMNS) and text[-1] == "all,all,2,2,0,2,0,0"
