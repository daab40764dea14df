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


def test_listnet_is_the_former_inline_ranking_loss_bit_for_bit():
    """The shipped encoders depend on it: the ranking term before the refactor (every row has a target)."""
    from proxylab.retrieval.train_encoders import _listnet

    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        logits = torch.randn(8, 12, generator=gen, requires_grad=True)
        tgt = torch.rand(8, 12, generator=gen)
        tgt[torch.rand(8, 12, generator=gen) < 0.3] = float("-inf")
        tgt[:, 0] = 0.5  # every row keeps a target, as in training
        known = torch.isfinite(tgt)
        p_true = (tgt / 0.03).masked_fill(~known, float("-inf")).softmax(1)
        log_p = (logits.masked_fill(~known, float("-inf"))).log_softmax(1)
        old = -(p_true * log_p.masked_fill(~known, 0.0)).sum(1).mean()
        (old_grad,) = torch.autograd.grad(old, logits)
        new = _listnet(logits, tgt, 0.03)
        (new_grad,) = torch.autograd.grad(new, logits)
        assert torch.equal(old, new) and torch.equal(old_grad, new_grad)


def test_bad_transfer_settings_are_refused():
    from proxylab.errors import ProxylabError
    from proxylab.retrieval.train_encoders import TrainConfig, train_encoders

    sigs, model_task, bank = _synthetic()
    with pytest.raises(ProxylabError, match="needs transfer_targets"):
        train_encoders(sigs, model_task, bank, "fx", TrainConfig(steps=2, transfer_weight=1.0), progress=False)
    with pytest.raises(ProxylabError, match="transfer_weight must be a finite number"):
        train_encoders(sigs, model_task, bank, "fx", TrainConfig(steps=2, transfer_weight=float("nan")),
                       transfer_targets={}, progress=False)


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


@pytest.mark.parametrize("args, message", [(["--transfer-weight", "-1"], "--transfer-weight must be"),
                                           (["--transfer-weight", "nan"], "--transfer-weight must be"),
                                           (["--transfer-weight", "1", "--learned", "e.pt"], "drop one")])
def test_cli_refuses_a_bad_transfer_weight(tmp_path, capsys, args, message):
    from proxylab.retrieval.train_encoders import main

    with pytest.raises(SystemExit) as exit_:
        main(["--zoo", str(tmp_path)] + args)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_validation_refuses_a_holdout_task_it_has_no_models_of(tmp_path):
    from proxylab.errors import ProxylabError
    from proxylab.retrieval.train_encoders import validation_report
    from proxylab.retrieval.zoo import build_zoo

    build_zoo(tmp_path / "z", n_models=2, seed=0, progress=False, signatures=False, index=False, max_train_images=64,
              gate_ratio=0.0)
    with pytest.raises(ProxylabError, match=r"transfer_holdout names tasks without validation models: \['no-such'\]"):
        validation_report(tmp_path / "z", transfer_holdout=["no-such"], progress=False)
