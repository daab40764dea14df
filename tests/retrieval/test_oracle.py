"""The white-box oracle: penultimate features, the linear probe, cached resumable ground truth."""
import os

import numpy as np
import pytest
import torch

from proxylab.errors import ProxylabError
from proxylab.retrieval.oracle import (compute_oracle, load_oracle, penultimate_features, probe_accuracy)
from proxylab.retrieval.tasks import QuerySpec
from proxylab.retrieval.zoo import build_module, build_zoo, load_zoo


@pytest.fixture(scope="module")
def one_model_zoo(tmp_path_factory):
    out = tmp_path_factory.mktemp("zoo") / "z"
    build_zoo(out, n_models=1, seed=0, progress=False, signatures=False, index=False, max_train_images=64)
    return out


def test_penultimate_features_are_the_classifier_input():
    torch.manual_seed(0)
    config = {"arch": "vgg_small", "kwargs": {"width": 0.125}, "num_classes": 3, "mean": [0.5] * 3, "std": [0.25] * 3}
    model = build_module(config).eval()
    x = torch.rand(5, 3, 32, 32)
    with torch.no_grad():
        want = torch.flatten(model.net.pool(model.net.features((x - 0.5) / 0.25)), 1).double().numpy()
    got = penultimate_features(model, x, batch_size=2)  # batching must not change anything
    assert got.shape == (5, want.shape[1])
    assert np.allclose(got, want, atol=1e-6)
    # the classifier applied to the features gives the logits back
    with torch.no_grad():
        assert np.allclose(model.net.fc(torch.from_numpy(got).float()).numpy(), model(x).numpy(), atol=1e-5)


def test_probe_accuracy_matches_sklearn_on_support_standardised_features():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 6)) * 3
    ytr, yte = np.repeat(np.arange(3), 5), np.repeat(np.arange(3), 40)
    ftr = centers[ytr] + rng.normal(size=(15, 6)) * 2
    fte = centers[yte] + rng.normal(size=(120, 6)) * 2
    ftr[:, 5] = 7.0  # a constant feature must not divide by zero
    fte[:, 5] = rng.normal(size=120)
    mu, sd = ftr.mean(0), ftr.std(0)
    sd[5] = 1.0
    clf = LogisticRegression(C=1.0, max_iter=1000, random_state=0).fit((ftr - mu) / sd, ytr)
    want = float((clf.predict((fte - mu) / sd) == yte).mean())
    assert probe_accuracy(ftr, ytr, fte, yte, seed=0) == pytest.approx(want)
    # well-separated classes are probed perfectly; scaling the features changes nothing (standardised)
    sep_tr, sep_te = centers[ytr] * 10, centers[yte] * 10
    assert probe_accuracy(sep_tr, ytr, sep_te, yte) == 1.0
    assert probe_accuracy(ftr * 1e3, ytr, fte * 1e3, yte) == pytest.approx(want, abs=1 / 120)
    with pytest.raises(ProxylabError, match="2 classes"):
        probe_accuracy(ftr, np.zeros(15, int), fte, yte)


def test_compute_oracle_rows_cache_and_resume(one_model_zoo):
    zoo = load_zoo(one_model_zoo)
    row = zoo.get(0)
    assert row["task"] == "mnist5k-lo"
    q_same, q_new = QuerySpec("mnist5k-lo", 5), QuerySpec("mnist5k-odd", 5, seed=1)
    rows = compute_oracle(one_model_zoo, [q_same, q_new], progress=False)
    assert [(r["query"], r["same_task"], r["query_kind"]) for r in rows] == [
        (q_same.key, 1, "same"), (q_new.key, 0, "new")]
    # an independent recomputation from the white box gives the same accuracy
    module = zoo.module(0)
    (sx, sy), (ex, ey) = q_new.load()
    want = probe_accuracy(penultimate_features(module, sx), sy.numpy(), penultimate_features(module, ex), ey.numpy(),
                          seed=1)
    assert rows[1]["probe_acc"] == pytest.approx(want, abs=1e-6)
    cache = one_model_zoo / "oracle" / "models" / f"{row['name']}.csv"
    stamp = os.stat(cache).st_mtime_ns
    assert compute_oracle(one_model_zoo, [q_new, q_same], progress=False) == rows[::-1]
    assert os.stat(cache).st_mtime_ns == stamp  # nothing recomputed
    q_more = QuerySpec("mnist5k-lo", 10)
    more = compute_oracle(one_model_zoo, [q_same, q_more], progress=False)
    assert more[0] == rows[0] and more[1]["query"] == q_more.key
    gathered = load_oracle(one_model_zoo)
    assert sorted(r["query"] for r in gathered) == sorted([q_same.key, q_new.key, q_more.key])
    assert all(0.0 <= r["probe_acc"] <= 1.0 for r in gathered)


def test_oracle_rows_of_other_weights_are_recomputed(one_model_zoo, tmp_path):
    import shutil

    zoo_dir = tmp_path / "z"
    shutil.copytree(one_model_zoo, zoo_dir)
    q = QuerySpec("mnist5k-lo", 5)
    sha = load_zoo(zoo_dir).config(0)["weights_sha256"]
    (row,) = compute_oracle(zoo_dir, [q], progress=False)
    assert row["weights_sha256"] == sha
    cache = zoo_dir / "oracle" / "models" / f"{row['model']}.csv"
    # a cached row of other weights (a model retrained under the same name) or of none recorded (written
    # before the column existed) is recomputed, not read
    for stale in ("0" * 64, ""):
        cache.write_text(cache.read_text().replace(f",{row['probe_acc']},", ",0.123,").replace(sha, stale))
        (again,) = compute_oracle(zoo_dir, [q], progress=False)
        assert again == row
        assert load_oracle(zoo_dir) == [row]
    # the gathered table holds only rows of the current weights: retrain the model (a new sha in its config)
    # and gathering alone drops its old rows; computing again brings them back for the new weights
    import json

    from proxylab.retrieval.oracle import gather_oracle

    config_path = zoo_dir / "models" / row["model"] / "config.json"
    config = json.loads(config_path.read_text())
    config["weights_sha256"] = "f" * 64
    config_path.write_text(json.dumps(config))
    gather_oracle(zoo_dir)
    assert load_oracle(zoo_dir) == []
    (fresh,) = compute_oracle(zoo_dir, [q], progress=False)
    assert fresh["weights_sha256"] == "f" * 64 and load_oracle(zoo_dir) == [fresh]


def test_oracle_errors(one_model_zoo, tmp_path):
    with pytest.raises(ProxylabError, match="no oracle"):
        load_oracle(tmp_path)
    with pytest.raises(ProxylabError, match="no model with id 3"):
        compute_oracle(one_model_zoo, [QuerySpec("mnist5k-lo", 5)], model_ids=[3], progress=False)
    with pytest.raises(ProxylabError, match="not a zoo"):
        compute_oracle(tmp_path, [QuerySpec("mnist5k-lo", 5)], progress=False)


def test_calibration_accuracy_is_the_calib_split_accuracy_cached_per_weights(one_model_zoo, tmp_path):
    import shutil

    from proxylab.retrieval.oracle import CALIB_FILE, calibration_accuracy
    from proxylab.retrieval.tasks import get_task
    from proxylab.retrieval.train_encoders import own_accuracy_targets

    zoo_dir = tmp_path / "z"
    shutil.copytree(one_model_zoo, zoo_dir)
    zoo = load_zoo(zoo_dir)
    row = zoo.get(0)
    task = get_task(row["task"])
    x, y = task.data("calib")
    with torch.no_grad():  # oracle: the white-box module's argmax on every calib image of the source task
        want = float((zoo.module(0)(x).argmax(1) == y).double().mean())
    # the calib split is disjoint from the test split the evaluation queries come from
    tx, _ = task.data("test")
    assert not {bytes(im.numpy().tobytes()) for im in x} & {bytes(im.numpy().tobytes()) for im in tx}
    assert calibration_accuracy(zoo_dir, [0], progress=False) == {0: pytest.approx(want, abs=1e-6)}
    cache = zoo_dir / "oracle" / CALIB_FILE
    text = cache.read_text()
    assert row["name"] in text and "calib" in text
    # cached: a rerun reads the file (a tampered value shows it is not recomputed) ...
    cache.write_text(text.replace(f"{round(want, 6)}", "0.123"))
    assert calibration_accuracy(zoo_dir, [0], progress=False) == {0: 0.123}
    assert own_accuracy_targets(zoo_dir, [0], progress=False) == {row["task"]: {0: 0.123}}
    # ... unless the weights changed (their sha256 is part of the key)
    cache.write_text(cache.read_text().replace(zoo.config(0)["weights_sha256"], "0" * 64))
    assert calibration_accuracy(zoo_dir, [0], progress=False) == {0: pytest.approx(want, abs=1e-6)}
    with pytest.raises(ProxylabError, match="no model with id"):
        calibration_accuracy(zoo_dir, [5], progress=False)
