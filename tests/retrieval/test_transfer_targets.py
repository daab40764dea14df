"""The encoders' transfer ranking term: ListNet over other tasks' models by their white-box probe accuracy."""
import numpy as np
import pytest
import torch

from tests.retrieval.test_encoders import _synthetic


def _numpy_listnet(logits, tgt, tau_acc):
    losses = []
    for row_logits, row_tgt in zip(logits, tgt):
        known = np.isfinite(row_tgt)
        if not known.any():
            continue
        p = np.exp(row_tgt[known] / tau_acc - np.max(row_tgt[known] / tau_acc))
        p /= p.sum()
        z = row_logits[known]
        log_q = z - (np.max(z) + np.log(np.exp(z - np.max(z)).sum()))
        losses.append(-(p * log_q).sum())
    return float(np.mean(losses))


def test_listnet_matches_numpy_and_skips_queries_without_targets():
    from proxylab.retrieval.train_encoders import _listnet

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 6))
    tgt = rng.uniform(size=(4, 6))
    tgt[0, [1, 4]] = -np.inf
    tgt[2, :] = -np.inf  # a query with no target: left out, not NaN
    got = _listnet(torch.tensor(logits), torch.tensor(tgt), 0.03)
    assert float(got) == pytest.approx(_numpy_listnet(logits, tgt, 0.03), rel=1e-9)
    assert float(_listnet(torch.tensor(logits), torch.full((4, 6), -np.inf, dtype=torch.float64), 0.03)) == 0.0


def _train(transfer_targets, weight):
    from proxylab.retrieval.train_encoders import TrainConfig, train_encoders

    sigs, model_task, bank = _synthetic()
    cfg = TrainConfig(steps=12, batch=8, width=16, dim=8, lr=3e-3, models_per_step=10, transfer_weight=weight)
    enc, hist = train_encoders(sigs, model_task, bank, "fx-test", cfg, progress=False,
                               transfer_targets=transfer_targets)
    return enc.encode_signature(sigs[1]).tobytes(), hist


def test_transfer_term_trains_only_when_weighted_and_never_on_own_task_models(one_thread):
    _, model_task, _ = _synthetic()
    rng = np.random.default_rng(1)
    truth = {t: {i: float(rng.uniform()) for i in model_task} for t in sorted(set(model_task.values()))}
    off, hist_off = _train(None, 0.0)
    assert _train(truth, 0.0)[0] == off  # weight 0: the targets change nothing
    assert set(hist_off["transfer"]) == {0.0}
    on, hist_on = _train(truth, 1.0)
    assert on != off and min(hist_on["transfer"]) > 0
    # entries for a model's OWN task are masked out: changing them changes nothing
    own_changed = {t: {i: (0.0 if model_task[i] == t else a) for i, a in accs.items()} for t, accs in truth.items()}
    assert _train(own_changed, 1.0)[0] == on
    other_changed = {t: {i: (0.0 if model_task[i] != t else a) for i, a in accs.items()} for t, accs in truth.items()}
    assert _train(other_changed, 1.0)[0] != on


def test_transfer_accuracy_targets_are_the_oracle_probe_on_other_tasks(tmp_path):
    from proxylab.retrieval.oracle import oracle_rows
    from proxylab.retrieval.tasks import QuerySpec
    from proxylab.retrieval.train_encoders import transfer_accuracy_targets
    from proxylab.retrieval.zoo import build_zoo, load_zoo

    build_zoo(tmp_path / "z", n_models=2, seed=0, progress=False, signatures=False, index=False, max_train_images=64,
              gate_ratio=0.0)
    zoo = load_zoo(tmp_path / "z")
    tasks = [zoo.get(0)["task"], zoo.get(1)["task"]]
    assert tasks[0] != tasks[1]
    got = transfer_accuracy_targets(tmp_path / "z", [0, 1], tasks, progress=False)
    # each model gets its accuracy on the other task only
    assert got.keys() == set(tasks) and {t: sorted(v) for t, v in got.items()} == {tasks[1]: [0], tasks[0]: [1]}
    (want,) = oracle_rows(zoo.module(0), zoo.get(0), [QuerySpec(tasks[1], 10, 0, "train")])
    assert got[tasks[1]][0] == pytest.approx(want["probe_acc"], abs=1e-9)


@pytest.mark.parametrize("value", ["-1", "nan"])
def test_cli_refuses_a_bad_transfer_weight(tmp_path, capsys, value):
    from proxylab.retrieval.train_encoders import main

    with pytest.raises(SystemExit) as exit_:
        main(["--zoo", str(tmp_path), "--transfer-weight", value])
    assert exit_.value.code == 2 and "--transfer-weight must be" in capsys.readouterr().err
