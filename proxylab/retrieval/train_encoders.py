"""Train the model and query encoders on the TRAIN part of a zoo (``split_models``), never on its test models.

Training data, all from source tasks (``tasks.SOURCE_TASKS``):
- model side: the signatures of the train models (features only, as the service would hold them);
- query side: few-shot sets (5-20 shots per class) drawn from the source tasks' TRAIN splits, either the whole
  task or a random subset of >= 2 of its classes (a user's task is often part of a model's). Evaluation
  queries come from TEST splits and from held-out tasks, so no evaluation image is ever seen here.

Loss per query q against all train models m (s = q . m, unit vectors):
- task cross-entropy: multi-positive softmax over models at temperature tau, positives = the models of
  the query's source task (Know2Vec's cross-entropy on the task label);
- hardest-negative hinge: relu(margin - s(q, m+) + max_neg s(q, m-)) for every positive m+ (VSE++ style);
- ranking: ListNet cross-entropy between softmax(acc / tau_acc) and softmax(s / tau) over the train models,
  where acc[task, model] is ground truth on the query's source task (``targets``; train_on_zoo uses each
  train model's accuracy on its task's CALIBRATION split, ``oracle.calibration_accuracy``, cached in
  zoo_dir/oracle/calib_accuracy.csv; models of other tasks excluded). No zoo model trains on the calib split
  and no benchmark query uses it, so no test image shapes the encoders, not even through a label count (the
  validation queries and the zoo's quality gate do use it: see ``oracle.calibration_accuracy``).
- a linear task classifier on model vectors (cross-entropy), which keeps each task's models together.

What ships (``--ship``): an ENSEMBLE of ``SHIPPED_ENSEMBLE`` = 3 learned encoders (training seeds 0, 1, 2, same
data; ``Encoders.ensemble``) wrapped with the training-free kernel map (``encoders.KernelMap``) at
``SHIPPED_LEARNED_WEIGHT`` = 0.5: vector = unit([kernel vector, w * [l_0, l_1, l_2] / sqrt(3)]), so a score is
the kernel similarity plus w^2 times the MEAN of the three learned similarities. Features: the 30-epoch shipped
extractor (``features.SHIPPED_EPOCHS``).

Session 6: the zoo's quality gate (``zoo.GATE_RATIO``) retrained 56 models that were below 1.5x chance on their calib
split (19 stayed below after 4 rounds), so runs/zoo200 is now the gated zoo and the session-5 figures below were made
on the pre-gate one (runs/zoo200-nogate, `zoo build --gate-ratio 0`). On the gated zoo, the same cross-fit command
(``retrieval_validation_gate.csv``) gives top-1 / R@2 / R@5 / transfer R@5 0.826 / 0.876 / 0.967 / 0.673 at w 0.25,
0.842 / 0.879 / 0.979 / 0.676 at 0.35, 0.839 / 0.883 / 0.988 / 0.679 at 0.5: w 0.5 kept (rule fixed before the run:
another weight had to beat it by 0.005 on mean(R@2, transfer R@5) without a lower top-1). Shipped encoders retrained
on the gated zoo's train half with the unchanged recipe.
Tried and NOT shipped (session 6): a transfer ranking term (``TrainConfig.transfer_weight``, ``--transfer-weight``):
ListNet, for a query of task T, over the fit models of OTHER tasks by their white-box probe accuracy on T
(``transfer_accuracy_targets``: 10-shot train-split support, seed 0; in cross-fit validation only the fit half's truth
trains). Rule fixed before the runs: adopt if, at w 0.5, mean(R@2, transfer R@5) rose above 0.786 with top-1 >= 0.834.
Pooled, members 3 (top-1 / R@2 / R@5 / transfer R@5 / transfer regret, `... --transfer-weight W`,
retrieval_validation_transfer{0.5,1.0}.csv):
    no transfer term (shipped), w 0.5     0.839 / 0.883 / 0.988 / 0.679 / 0.153
    transfer weight 0.5, w 0.5            0.803 / 0.874 / 0.953 / 0.752 / 0.133
    transfer weight 1.0, w 0.5            0.810 / 0.874 / 0.946 / 0.754 / 0.135
Transfer ranking improves on validation, though partly through what the term trained on: its targets and the
validation's transfer truth score each task on the same train-split scoring images and cover the same (query task,
model task) pairs, only other models and support draws; a fair test of adoption would hold some query tasks out of
the targets. Task identification falls (top-1 and R@5 by 0.03 to 0.04): rejected by the rule (the benchmark's top-1
is at its 0.90 target with no margin). That fairer test (``--transfer-holdout animal-hi,digits-lo,mnist5k-hi,
shapes-count,shapes-texture``: those tasks' targets withheld; retrieval_validation_transfer_holdout_w{0,0.5}.csv, w 0.5)
moves transfer R@5 on the withheld tasks 0.500 -> 0.547 and on the rest 0.858 -> 0.851, top-1 0.839 -> 0.793: little
gain on query tasks the term never saw. The option stays, off by default, for further work.

Session 5: validation queries from the CALIB split and a pool-matched recall. The protocol below drew its queries
from the train split, part of which the extractor trained on (every mnist5k and digits train image), and scored
Recall@5 among 44-51 validation models, where the top 5 are 10-11% of the pool (4.8% of the benchmark's 105): it
read 0.95-1.00 (0.964 for the shipped variant) where the benchmark read 0.93. ``--validate`` now draws from the
calib split (no extractor, zoo model or encoder trains on it; no benchmark query uses it) and adds ``recall_at_2``
(the top 2 of 44-51 models: 3.9-4.5% of the pool). Choice rule (fixed before the runs): the highest mean of R@2 and
transfer R@5 whose top-1 is no lower than the shipped variant's. By it the 0.1 kernel width wins by 0.002; the
default width 0.15 was kept anyway, calling 0.002 a tie (a tolerance set after seeing the figures) and taking its
higher top-1 (0.823 vs 0.817). Cross-fit, ensemble of 3, query seeds 100-104, pooled over both directions (top-1 /
R@2 / R@5 / transfer R@5; `--validate CSV --validate-seeds 0,1,2 --validate-ensemble --cross-fit
--validate-query-seeds 100,101,102,103,104 --validate-weights 0,0.25,0.35,0.5 [--extractor FILE --zoo ZOO]`,
committed as benchmarks/results/retrieval_validation_calib.csv (30 epochs), ..._sigma0.1.csv (with --sigma-class
0.1) and ..._fx10.csv (10 epochs: --zoo runs/zoo200-nogate-base --extractor runs/extractors/base-10ep-2000img.pt, both made
by benchmarks/retrieval_extractor_screen.py)):
    10-epoch extractor, w 0.35 (shipped before)   0.804 / 0.846 / 0.944 / 0.747   mean(R@2, tR@5) 0.796
    10-epoch extractor, w 0.5                     0.800 / 0.858 / 0.976 / 0.711   0.784
    30-epoch extractor, w 0.35                    0.832 / 0.886 / 0.981 / 0.710   0.798
    30-epoch extractor, w 0.5                     0.823 / 0.911 / 0.991 / 0.741   0.826   <- shipped
    30-epoch extractor, kernel width 0.1, w 0.5   0.817 / 0.917 / 0.991 / 0.739   0.828   (see above)
    30 epochs + 6000 images per source, w 0.35    inner>held only, stopped: top-1 0.69-0.70 (10-epoch: 0.82-0.85)
The benchmark, run once after this choice, did NOT follow it (same-task R@5 0.933 -> 0.900, new-task 0.952 ->
0.905: one query each, see the README). The same-task misses are the three shapes-texture queries: the seven
held-out shapes-texture models are at or near chance on their own task (calib accuracy 0.24-0.34 for 4 classes,
where 7 of the 13 train ones reach 0.41-0.48), so little in their outputs marks them as texture models, and
whether a texture query finds one is close to luck (a random top 5 of 105 holds one of 7 with probability 0.30).
The new-task misses are shapes-position at 5 and 20 shots (before: at 10 shots).

Why (issue 7, Recall@5 >= 0.95 on same-task and new-task queries). Diagnosis on validation first: per source
task, the weak ones are the shapes labellings, shapes-texture and shapes-size (kernel only, all 95 train models:
R@5 0.89 and 0.84 vs 1.00 for every digit/animal task; texture models are the least accurate of the zoo, 0.33
test accuracy on average for 4 classes), and the learned part's help varies with its seed. Tried on validation
and NOT kept (one-off screening scripts, not kept in the repository: kernel only over all 95 train models,
150 train-split queries, 3 kernel seeds; top-1 / R@5 vs
0.920 / 0.973 for the shipped features): the last conv map's 2x2 cells next to the global mean (a position
descriptor; weight 0.25: 0.889 / 0.971, 0.5: 0.898 / 0.971), multi-scale pooling of the earlier blocks
(weight 0.5: 0.902 / 0.978, better texture but worse size and top-1; with the learned part, cross-fit, w 0.25:
0.784 / 0.946 vs 0.811 / 0.950), a larger shapes probe pool (+192 / +480 scenes: 0.889 / 0.969, 0.729 / 0.911),
other anchor means (top 4: 0.809 / 0.949, top 16: 0.916 / 0.971), and centring or whitening the features
before the kernel (at best 0.916 / 0.980 with lower top-1); texture statistics (std pooling, channel Gram or
covariance of blocks 2-3) as a second kernel beside the first: they lift shapes-texture but cost shapes-size,
top-1 or transfer (best with the learned ensemble, cross-fit: covariance of block 2, 0.827 / 0.969 / transfer
0.750 vs 0.827 / 0.964 / 0.758 shipped; on this validation, with the learned part, texture R@5 is already 0.98
and shapes-size, 0.67, is the weak task). What helped: averaging learned encoders of several seeds, which
removes much of the seed-to-seed noise.

Validation protocol before session 5 (``--validate``; ``evaluate.validate_encoders``; the figures below used the
10-epoch extractor and TRAIN-split queries: to rerun them, rebuild that extractor with `features --rebuild --out F
--epochs 10`, recapture the signatures with it and add `--validate-split train --extractor F`): the 95 train models
re-split into 51 inner-train and 44 held-out ones, learned encoders fit on one part and scored on the other, in BOTH
directions (``--cross-fit``: every train model is scored once, and no choice rests on the lopsided split, 1 to 9
models per task on a side), with TRAIN-split few-shot queries of the source tasks (5/10/20 shots, seeds 100-104: 150
per direction), plus the transfer check (each query against the models of OTHER tasks, white-box truth on
train-split images). Single learned encoders are scored per training seed 0, 1, 2; the ensemble is one encoder made
of those three. Kernel variants: mean over kernel seeds 0-2. Measured (zoo200, both directions, top-1 task / R@5 /
transfer R@5 / transfer regret; `--validate benchmarks/results/retrieval_validation_ensemble.csv --validate-seeds
0,1,2 --validate-ensemble --cross-fit --validate-query-seeds 100,101,102,103,104 --validate-weights
0,0.25,0.35,0.5`):
    kernel only                        0.787 / 0.922 / 0.641 / 0.168
    learned only (1 seed)              0.571 / 0.950 / 0.666 / 0.177
    learned only (ensemble of 3)       0.670 / 0.997 / 0.593 / 0.169
    kernel + 0.25 learned (1 seed)     0.811 / 0.950 / 0.719 / 0.171   <- shipped before
    kernel + 0.35 learned (1 seed)     0.813 / 0.960 / 0.724 / 0.170
    kernel + 0.5  learned (1 seed)     0.800 / 0.967 / 0.715 / 0.175
    kernel + 0.25 ensemble of 3        0.816 / 0.947 / 0.732 / 0.172
    kernel + 0.35 ensemble of 3        0.827 / 0.964 / 0.758 / 0.165   <- shipped
    kernel + 0.5  ensemble of 3        0.827 / 0.990 / 0.708 / 0.158
Rule: the issue's target is Recall@5 on same-task AND new-task queries, so the choice
maximises the mean of R@5 and transfer R@5 (the new-task stand-in) without lowering top-1: 0.35 with
the ensemble (0.861; 0.5: 0.849; 0.25: 0.839; best single: 0.35, 0.842). The former single-encoder table
(`benchmarks/results/retrieval_validation.csv`, inner > held only, query seeds 100-101) is kept below.
Former choice (single learned encoder; inner > held, 60 queries, training seeds 0-2, kernel seeds 0-2;
`--validate benchmarks/results/retrieval_validation.csv --validate-seeds 0,1,2`):
    learned only           0.56 / 0.97 / 0.73 / 0.17
    kernel only            0.75 / 0.96 / 0.54 / 0.20
    kernel + 0.1 learned   0.78 / 0.96 / 0.55 / 0.20
    kernel + 0.25 learned  0.80 / 1.00 / 0.72 / 0.20
    kernel + 0.5 learned   0.77 / 0.99 / 0.72 / 0.19
    kernel + 1.0 learned   0.67 / 0.97 / 0.74 / 0.16

Learning rate. With the former peak rate 2e-3 the model encoder could collapse at the end of the warm-up
(every model vector alike: task cross-entropy and classifier loss at chance, ~ln(10), for the rest of the
run). Whether it did depended on the seed and on tiny changes of the ranking targets: with the targets moved
from test-split to calib-split accuracy (correlation 0.995, same ids and scale: no mapping bug) training seed 0
collapsed, which put "learned only" at 0.10 top-1 on validation. Chosen on the same validation (mean over
training seeds 0-2, learned only / kernel + 0.25 learned, top-1 and R@5): lr 2e-3 + gradient clipping at norm
1: 0.40 / 0.89 and 0.81 / 0.97; lr 1e-3: 0.56 / 0.97 and 0.80 / 1.00; lr 1e-3 + clipping: 0.57 / 0.91 and
0.78 / 0.99. The kernel + 0.25 top-1 differs by less than one query of 60 between the first two, so R@5 and the
learned part's own health decided: lr 1e-3, no clipping (``TrainConfig.grad_clip`` keeps clipping available;
`--validate CSV --validate-seeds 0,1,2 --lr 2e-3 --grad-clip 1` and so on reproduce the alternatives).
The kernel widths (0.15 for classes, 0.5 for pair directions) were picked the same way, on train models and
train-split queries only.

Rebuild the shipped encoders and the shipped zoo index (about two minutes at one thread, given the zoo built
by `proxylab zoo build --out runs/zoo200 --n-models 200 --seed 0`, signatures included; defaults: --seed 0,
--ensemble 3, --learned-weight 0.5):
    python -m proxylab.retrieval.train_encoders --zoo runs/zoo200 --ship
(`--index-only` re-encodes the shipped zoo index with the shipped encoders, no training; `--learned FILE`
reuses the learned weights of an encoder file instead of training; `--validate CSV` runs the validation.)
"""
from __future__ import annotations

import argparse
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

import numpy as np

from proxylab.errors import require
from proxylab.utils import PathLike, atomic_write_json, atomic_write_text, csv_cell, rows_to_csv, torch_threads

if TYPE_CHECKING:
    from proxylab.retrieval.signature import Signature

SHIPPED_LEARNED_WEIGHT = 0.5  # weight of the learned vector next to the kernel one (chosen on validation)
SHIPPED_ENSEMBLE = 3  # learned members (training seeds 0, 1, 2) averaged in the learned part (chosen on validation)
VALIDATION_SPLIT_SEED = 1  # re-split of the train models into inner-train / held-out validation models
TRAIN_FRACTION = 0.5  # half the zoo trains the encoders; the other half (never seen) is what evaluation indexes


def split_models(manifest: Sequence[Dict], train_fraction: float = TRAIN_FRACTION, seed: int = 0
                 ) -> Tuple[List[int], List[int]]:
    """(train ids, test ids): model i is a train model when a uniform draw seeded by (seed, i) is < train_fraction.

    The draw depends on the model's id alone, so a model never changes sides when the zoo grows: encoders
    trained on a partial zoo are still evaluated only on models they never saw.
    """
    require(0.0 < train_fraction < 1.0, f"train_fraction must be in (0, 1), got {train_fraction}")
    train, test = [], []
    for row in manifest:
        i = int(row["id"])
        (train if np.random.default_rng([int(seed), i, 0x5917]).random() < train_fraction else test).append(i)
    return sorted(train), sorted(test)


@dataclass
class TrainConfig:
    steps: int = 500
    batch: int = 32
    lr: float = 1e-3  # 2e-3 (before) could collapse the model encoder at the warm-up's peak: see the module doc
    weight_decay: float = 1e-4
    tau: float = 0.07
    tau_acc: float = 0.03
    margin: float = 0.2
    rank_weight: float = 1.0
    # Weight of the TRANSFER ranking term (0: off): ListNet, for a query of task T, over the models of OTHER tasks
    # by their white-box probe accuracy on T (``transfer_accuracy_targets``). Session 6 experiment; module doc.
    transfer_weight: float = 0.0
    # Gradient-norm clipping (0: off). It also stops the collapse at lr 2e-3, but lr 1e-3 without it validated
    # better (module doc), so it stays off by default.
    grad_clip: float = 0.0
    cls_weight: float = 0.3
    subset_prob: float = 0.4
    shots: Tuple[int, int] = (5, 20)
    images_per_task: int = 600
    models_per_step: int = 40  # a random subset of the train models per step keeps a step cheap on one core
    width: int = 128
    dim: int = 128
    seed: int = 0


def task_feature_bank(tasks, extractor, split: str = "train", limit: int = 600, seed: int = 0):
    """{task name: (features [N, D] float32, labels int64 [N])} of a seeded draw of each task's split."""
    bank = {}
    for task in tasks:
        x, y = task.data(split, limit=limit, seed=seed)
        bank[task.name] = (extractor.embed(x), y.numpy().astype(np.int64))
    return bank


def _sample_query(rng: np.random.Generator, feats: np.ndarray, labels: np.ndarray, cfg: TrainConfig):
    num_classes = int(labels.max()) + 1
    classes = np.arange(num_classes)
    if num_classes > 2 and rng.random() < cfg.subset_prob:
        classes = np.sort(rng.choice(num_classes, size=int(rng.integers(2, num_classes)), replace=False))
    shots = int(rng.integers(cfg.shots[0], cfg.shots[1] + 1))
    rows, ys = [], []
    for new, c in enumerate(classes):
        pool = np.flatnonzero(labels == c)
        rows.append(rng.choice(pool, size=min(shots, len(pool)), replace=False))
        ys.append(np.full(len(rows[-1]), new))
    return feats[np.concatenate(rows)], np.concatenate(ys)


def train_encoders(signatures: Dict[int, "Signature"], model_tasks: Dict[int, str], bank: Dict[str, tuple],
                   extractor_id: str, config: Optional[TrainConfig] = None,
                   targets: Optional[Dict[str, Dict[int, float]]] = None, progress: bool = True,
                   transfer_targets: Optional[Dict[str, Dict[int, float]]] = None):
    """Fit Encoders on the given (train) models' signatures and the query feature bank.

    `model_tasks`: model id -> source task; `bank`: task -> (features, labels) to draw queries from;
    `targets`: task -> {model id: accuracy} ground truth for the ranking term (see module doc);
    `transfer_targets`: the same for the transfer term (config.transfer_weight; models of other tasks only).
    Returns (Encoders in eval mode, history dict). Deterministic for a seed at a fixed thread count.
    """
    import torch
    import torch.nn.functional as F

    from proxylab.retrieval.encoders import Encoders, model_tokens, pad_sets, query_tokens

    cfg = config or TrainConfig()
    require(math.isfinite(cfg.transfer_weight) and cfg.transfer_weight >= 0,
            f"transfer_weight must be a finite number >= 0 (0: off), got {cfg.transfer_weight}")
    require(cfg.transfer_weight == 0 or transfer_targets is not None,
            "transfer_weight > 0 needs transfer_targets (train_encoders.transfer_accuracy_targets)")
    ids = sorted(signatures)
    require(len(ids) >= 2, "encoder training needs at least 2 models with signatures")
    tasks = sorted({model_tasks[i] for i in ids} & set(bank))
    require(len(tasks) >= 2, f"encoder training needs models of >= 2 tasks with query data, got {tasks}")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    feature_dim = signatures[ids[0]].dim
    enc = Encoders(feature_dim=feature_dim, width=cfg.width, dim=cfg.dim, extractor_id=extractor_id)
    task_of = np.array([tasks.index(model_tasks[i]) if model_tasks[i] in tasks else -1 for i in ids])
    classifier = torch.nn.Linear(cfg.dim, len(tasks))
    toks = [model_tokens(signatures[i].anchors, signatures[i].boundary, signatures[i].pairs) for i in ids]
    mc, mc_mask = pad_sets([t[0] for t in toks])
    mp, mp_mask = pad_sets([t[1] for t in toks])
    # Ranking targets per task over all train models; -inf marks models without a ground truth for it.
    def target_matrix(truth):
        out = torch.full((len(tasks), len(ids)), float("-inf"))
        for t, name in enumerate(tasks):
            accs = (truth or {}).get(name, {})
            for m, i in enumerate(ids):
                if i in accs:
                    out[t, m] = float(accs[i])
        return out

    target = target_matrix(targets)
    # Transfer truth never ranks a model for its own task (the own-task terms above do that).
    target_tr = target_matrix(transfer_targets).masked_fill(
        torch.as_tensor(task_of)[None, :] == torch.arange(len(tasks))[:, None], float("-inf"))
    params = list(enc.model_net.parameters()) + list(enc.query_net.parameters()) + list(classifier.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.1)
    labels_t = torch.as_tensor(task_of)
    history: Dict[str, List[float]] = {"loss": [], "ce": [], "hinge": [], "rank": [], "cls": [], "transfer": []}
    t0 = time.perf_counter()
    enc.model_net.train()
    enc.query_net.train()
    for step in range(cfg.steps):
        q_task = rng.integers(len(tasks), size=cfg.batch)
        q_tok = [query_tokens(*_sample_query(rng, *bank[tasks[t]], cfg)) for t in q_task]
        qc, qc_mask = pad_sets([t[0] for t in q_tok])
        qp, qp_mask = pad_sets([t[1] for t in q_tok])
        # The step's models: a random subset that always holds at least one model of each query's task.
        pick = rng.permutation(len(ids))[:cfg.models_per_step]
        for t in set(q_task.tolist()) - set(task_of[pick].tolist()):
            pick = np.append(pick, rng.choice(np.flatnonzero(task_of == t)))
        sel = torch.as_tensor(np.sort(pick))
        m_vec = enc.model_net(mc[sel], mc_mask[sel], mp[sel], mp_mask[sel])
        q_vec = enc.query_net(qc, qc_mask, qp, qp_mask)
        sim = q_vec @ m_vec.t()  # [B, M]
        qt = torch.as_tensor(q_task)
        m_labels = labels_t[sel]
        pos = m_labels[None, :] == qt[:, None]
        logits = sim / cfg.tau
        ce = (torch.logsumexp(logits, 1) - torch.logsumexp(logits.masked_fill(~pos, float("-inf")), 1)).mean()
        hardest_neg = sim.masked_fill(pos, float("-inf")).max(1).values
        hinge = (F.relu(cfg.margin - sim + hardest_neg[:, None]) * pos).sum() / pos.sum()
        rank = _listnet(logits, target[qt][:, sel], cfg.tau_acc)
        transfer = _listnet(logits, target_tr[qt][:, sel], cfg.tau_acc) if cfg.transfer_weight > 0 else torch.zeros(())
        cls = F.cross_entropy(classifier(m_vec), m_labels)
        loss = ce + hinge + cfg.rank_weight * rank + cfg.cls_weight * cls + cfg.transfer_weight * transfer
        opt.zero_grad()
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        sched.step()
        for k, v in (("loss", loss), ("ce", ce), ("hinge", hinge), ("rank", rank), ("cls", cls),
                     ("transfer", transfer)):
            history[k].append(float(v.detach()))
        if progress and (step + 1) % max(1, cfg.steps // 10) == 0:
            recent = {k: np.mean(v[-20:]) for k, v in history.items()}
            print(f"encoders step {step + 1}/{cfg.steps}: " + ", ".join(f"{k} {v:.3f}" for k, v in recent.items())
                  + f" ({time.perf_counter() - t0:.0f} s)", flush=True)
    enc.eval()
    history["seconds"] = [time.perf_counter() - t0]
    return enc, history


def _listnet(logits, tgt, tau_acc: float):
    """ListNet cross-entropy between softmax(tgt / tau_acc) and softmax(logits), per query over the models with a
    finite target; mean over the queries that have one (a query without any target is left out)."""
    import torch

    known = torch.isfinite(tgt)
    rows = known.any(1)
    if not bool(rows.any()):
        return torch.zeros(())
    if not bool(rows.all()):  # a query with no target at all would give NaN (softmax of nothing)
        logits, tgt, known = logits[rows], tgt[rows], known[rows]
    p_true = (tgt / tau_acc).masked_fill(~known, float("-inf")).softmax(1)
    log_p = logits.masked_fill(~known, float("-inf")).log_softmax(1)
    return -(p_true * log_p.masked_fill(~known, 0.0)).sum(1).mean()


def transfer_accuracy_targets(zoo_dir: PathLike, ids: Sequence[int], tasks: Sequence[str],
                              progress: bool = True) -> Dict[str, Dict[int, float]]:
    """{source task: {model id: probe accuracy}} of the given models on every task in `tasks` that is not their
    own: the white-box oracle's linear probe fit on a 10-shot TRAIN-split support (seed 0) and scored on the
    task's fixed train-split scoring set (``oracle.compute_oracle``: cached per model and weights in
    zoo_dir/oracle, so a second run reads them). Oracle-side, for encoder training only; the test split (the
    benchmark's) is never read."""
    from proxylab.retrieval.oracle import compute_oracle
    from proxylab.retrieval.tasks import QuerySpec

    specs = [QuerySpec(t, 10, 0, "train") for t in sorted(tasks)]
    out: Dict[str, Dict[int, float]] = {}
    for r in compute_oracle(zoo_dir, specs, model_ids=sorted(int(i) for i in ids), progress=progress):
        if r["model_task"] != r["query_task"]:
            out.setdefault(r["query_task"], {})[int(r["model_id"])] = float(r["probe_acc"])
    return out


def own_accuracy_targets(zoo_dir: PathLike, ids: Sequence[int], progress: bool = True) -> Dict[str, Dict[int, float]]:
    """The minimal ranking ground truth: {source task: {model id: accuracy}} for the given models, each on its
    own task's CALIBRATION split (never the test split the evaluation draws from; computed once and cached in
    zoo_dir/oracle/calib_accuracy.csv by ``oracle.calibration_accuracy``)."""
    from proxylab.retrieval.oracle import calibration_accuracy
    from proxylab.retrieval.zoo import load_zoo

    zoo = load_zoo(zoo_dir)
    acc = calibration_accuracy(zoo_dir, sorted(int(i) for i in ids), progress=progress)
    out: Dict[str, Dict[int, float]] = {}
    for i, a in acc.items():
        out.setdefault(str(zoo.get(i)["task"]), {})[int(i)] = float(a)
    return out


def train_members(signatures, model_tasks, bank, extractor, config: TrainConfig, seeds: Sequence[int],
                  targets=None, transfer_targets=None, progress: bool = True):
    """One learned encoder per training seed (config with that seed, one thread each, so a seed gives the same
    weights on any machine), each tied to `extractor`. Returns (members, histories)."""
    from dataclasses import replace

    members, histories = [], []
    for seed in seeds:
        with torch_threads(1):
            enc, history = train_encoders(signatures, model_tasks, bank, extractor.id, replace(config, seed=int(seed)),
                                          targets, progress, transfer_targets)
        enc._extractor = extractor
        members.append(enc)
        histories.append(history)
    return members, histories


def train_on_zoo(zoo_dir: PathLike, config: Optional[TrainConfig] = None, train_fraction: float = TRAIN_FRACTION,
                 split_seed: int = 0, extractor=None, progress: bool = True, ensemble: int = 1):
    """Train encoders on the train part of a built zoo (signatures captured). Returns (encoders, report dict).

    `ensemble` n > 1: n learned members trained with seeds config.seed, config.seed + 1, ... (module doc)."""
    from proxylab.retrieval.features import FeatureExtractor
    from proxylab.retrieval.tasks import SOURCE_TASKS
    from proxylab.retrieval.zoo import load_zoo

    cfg = config or TrainConfig()
    zoo = load_zoo(zoo_dir)
    train_ids, test_ids = split_models(zoo.manifest, train_fraction, split_seed)
    fx = extractor or FeatureExtractor.default()
    sigs = {i: zoo.signature(i) for i in train_ids}
    tasks = {i: zoo.get(i)["task"] for i in train_ids}
    # Ranking ground truth: each train model's accuracy on its own task's CALIB split (a scalar per train model;
    # the oracle's probe accuracies are computed on TEST-split queries, so they are kept for evaluation only).
    targets = own_accuracy_targets(zoo_dir, train_ids, progress)
    transfer = (transfer_accuracy_targets(zoo_dir, train_ids, sorted(set(tasks.values())), progress)
                if cfg.transfer_weight > 0 else None)
    bank = task_feature_bank([SOURCE_TASKS[t] for t in sorted(set(tasks.values()))], fx, "train",
                             cfg.images_per_task, cfg.seed)
    require(int(ensemble) >= 1, f"ensemble must be >= 1, got {ensemble}")
    from proxylab.retrieval.encoders import Encoders

    members, histories = train_members(sigs, tasks, bank, fx, cfg, [cfg.seed + k for k in range(int(ensemble))],
                                       targets, transfer, progress)
    enc = Encoders.ensemble(members, extractor=fx)  # one member: that encoder's very vectors and id
    report = {"zoo": str(zoo_dir), "train_fraction": train_fraction, "split_seed": split_seed,
              "train_ids": train_ids, "test_ids": test_ids, "extractor": fx.id, "config": asdict(cfg),
              "ensemble_seeds": [cfg.seed + k for k in range(int(ensemble))],
              "ranking_targets": "calib",  # own-task accuracy on the calib split (oracle.calibration_accuracy)
              "final_loss": float(np.mean([np.mean(h["loss"][-50:]) for h in histories])),
              "seconds": float(sum(h["seconds"][0] for h in histories))}
    return enc, report


def with_kernel(learned, kernel=None, learned_weight: float = SHIPPED_LEARNED_WEIGHT):
    """Learned Encoders (one or more members) + a KernelMap (default settings) -> the shipped kind of Encoders
    (same learned weights)."""
    from proxylab.retrieval.encoders import Encoders, KernelMap

    kernel = kernel or KernelMap(feature_dim=learned.feature_dim)
    return Encoders.ensemble([learned], kernel=kernel, learned_weight=learned_weight)


def validation_report(zoo_dir: PathLike, weights: Sequence[float] = (0.0, 0.1, 0.25, 0.5, 1.0),
                      kernel_seeds: Sequence[int] = (0, 1, 2), config: Optional[TrainConfig] = None,
                      extractor=None, progress: bool = True, n_features: Sequence[int] = (2048,),
                      train_seeds: Optional[Sequence[int]] = None, ensemble: bool = False, cross_fit: bool = False,
                      query_seeds: Optional[Sequence[int]] = None, query_split: str = "calib",
                      sigma_class: Optional[float] = None, transfer_holdout: Sequence[str] = ()) -> List[Dict]:
    """Compare encoder variants on the validation set (protocol: ``evaluate.validate_encoders``).

    Learned encoders are trained on the inner-train part of the TRAIN models only; every variant is scored on
    the held-out TRAIN models with TRAIN-split queries. Each kernel variant is scored under several kernel
    seeds (the random features add noise of a few points) and once more as their mean ("kernel_seed" = mean),
    which is what the choice uses. `n_features`: random-feature counts of the kernel map to compare (more
    features = a closer approximation of the exact set kernel, and longer vectors). `train_seeds` (default: the
    config's seed): the learned encoders are trained once per seed and every variant is scored with each; the
    learned part's quality varies with the seed, so a choice rests on the mean over seeds (rows with
    train_seed "mean"). `ensemble`: also score the kernel variants with ONE ensemble of all the seeds' learned
    encoders as members (``Encoders.ensemble``; members = len(train_seeds)). `cross_fit`: also swap the two
    parts (fit on the held-out part, score on the inner-train part), so every train model is scored once and
    the choice does not rest on one lopsided split (inner 51 / held 44 models, 1 to 9 per task on each side).
    `query_seeds`: the few-shot draws (default ``evaluate.VALIDATION_SEEDS``). `query_split`: where the query
    images come from: "calib" (default) holds images that neither the extractor, the zoo models nor the learned
    encoders trained on, like the benchmark's test images; "train" (the protocol before session 5) reuses
    training images, whose features the extractor has partly memorised (every mnist5k and digits train image,
    2000 of each shapes task's 8000), which made the hard shapes tasks look easier than they are
    (``evaluate.validation_query_features`` draws them).
    `sigma_class`: the kernel map's class-anchor width (default: KernelMap's).
    `transfer_holdout`: source tasks whose transfer targets are withheld from the transfer term's training
    (config.transfer_weight > 0), so their transfer figures are on query tasks the term never saw; rows then gain
    transfer_recall_at_5_holdout and transfer_recall_at_5_rest (the mean over those tasks / the other tasks).
    Rows: direction, variant, learned_weight, n_features, members, train_seed, kernel_seed, top1_task,
    recall_at_2, recall_at_5, transfer_recall_at_5, transfer_regret, queries, models, fit_models; the rows with direction
    "all" and train_seed "mean" average every direction, training seed (or ensemble) and kernel seed.
    """
    from proxylab.retrieval.encoders import Encoders, KernelMap
    from proxylab.retrieval.evaluate import VALIDATION_SEEDS, validate_encoders, validation_query_features
    from proxylab.retrieval.features import FeatureExtractor
    from proxylab.retrieval.oracle import compute_oracle
    from proxylab.retrieval.tasks import SOURCE_TASKS, QuerySpec
    from proxylab.retrieval.zoo import load_zoo

    require(query_split in ("calib", "train"), f"validation queries come from the calib or train split (the test "
                                               f"split is the benchmark's), got {query_split!r}")
    cfg = config or TrainConfig()
    zoo = load_zoo(zoo_dir)
    train_ids = set(split_models(zoo.manifest)[0])
    inner, held = split_models([r for r in zoo.manifest if int(r["id"]) in train_ids], 0.5, VALIDATION_SPLIT_SEED)
    directions = [("inner>held", inner, held)] + ([("held>inner", held, inner)] if cross_fit else [])
    scored = sorted({i for _, _, ev in directions for i in ev})
    fx = extractor or FeatureExtractor.default()
    tasks = {i: zoo.get(i)["task"] for i in inner + held}
    holdout = sorted(set(transfer_holdout))
    unknown = sorted(set(holdout) - set(tasks.values()))
    require(not unknown, f"transfer_holdout names tasks without validation models: {unknown}; pick from "
                         f"{sorted(set(tasks.values()))}")
    bank = task_feature_bank([SOURCE_TASKS[t] for t in sorted(set(tasks.values()))], fx, "train",
                             cfg.images_per_task, cfg.seed)
    # White-box transfer truth for the scored validation models, through the zoo's oracle cache (train-split
    # queries: keys "TASK.train.n10.s100", apart from the benchmark's test-split rows), so a rerun reads it.
    specs = [QuerySpec(t, 10, 100, "train") for t in sorted(set(tasks.values()))]
    truth: Dict[str, Dict[int, float]] = {}
    for r in compute_oracle(zoo_dir, specs, model_ids=scored, progress=progress):
        truth.setdefault(r["query_task"], {})[int(r["model_id"])] = float(r["probe_acc"])
    queries = validation_query_features(sorted(set(tasks.values())), fx, query_split,
                                        seeds=tuple(query_seeds) if query_seeds else VALIDATION_SEEDS)
    sigs = {i: zoo.signature(i) for i in inner + held}  # read once
    metrics = ("top1_task", "recall_at_2", "recall_at_5", "transfer_recall_at_5", "transfer_regret")
    if holdout:
        metrics += ("transfer_recall_at_5_holdout", "transfer_recall_at_5_rest")
    seeds = list(train_seeds) if train_seeds else [cfg.seed]
    rows: List[Dict] = []
    pooled: Dict[tuple, List[Dict]] = {}  # (variant, w, nf, members) -> per-(direction, seed, kernel seed) results

    def score(direction, ev, fit, name, w, nf, members, seed_label, encs):
        results = []
        for k, enc in encs:
            res = validate_encoders(enc, {i: sigs[i] for i in ev}, tasks, queries, truth)
            if holdout:
                per = res["per_task_transfer_recall_at_5"]
                res["transfer_recall_at_5_holdout"] = float(np.mean([per[t] for t in per if t in holdout]))
                res["transfer_recall_at_5_rest"] = float(np.mean([per[t] for t in per if t not in holdout]))
            results.append(res)
            pooled.setdefault((name, w, nf, members), []).append(res)
            if len(encs) > 1:
                rows.append({"direction": direction, "variant": name, "learned_weight": w, "n_features": nf,
                             "members": members, "train_seed": seed_label, "kernel_seed": k,
                             **{key: res[key] for key in metrics}, "queries": res["queries"], "models": res["models"],
                             "fit_models": len(fit)})
        mean = {key: float(np.mean([r[key] for r in results])) for key in metrics}
        rows.append({"direction": direction, "variant": name, "learned_weight": w, "n_features": nf, "members": members,
                     "train_seed": seed_label, "kernel_seed": "mean" if encs[0][0] is not None else "", **mean,
                     "queries": results[0]["queries"], "models": results[0]["models"], "fit_models": len(fit)})
        if progress:
            print(f"validation {direction} seed {seed_label} {name} w={w} features={nf} members={members}: top-1 "
                  f"{mean['top1_task']:.3f}, R@2 {mean['recall_at_2']:.3f}, R@5 {mean['recall_at_5']:.3f}, transfer R@5 "
                  f"{mean['transfer_recall_at_5']:.3f} regret {mean['transfer_regret']:.3f}", flush=True)

    widths = {} if sigma_class is None else {"sigma_class": float(sigma_class)}

    def kernel_variants(learned, w_list):
        return [("kernel" if w == 0 else "kernel+learned", w, nf,
                 [(k, with_kernel(learned, KernelMap(learned.feature_dim, n_features=int(nf), seed=k, **widths),
                                  learned_weight=w))
                  for k in kernel_seeds]) for nf in n_features for w in w_list]

    for direction, fit, ev in directions:
        targets = own_accuracy_targets(zoo_dir, fit, progress)
        # Transfer truth of the FIT models only: the scored models' truth (`truth` above) never trains anything.
        transfer = (transfer_accuracy_targets(zoo_dir, fit, sorted(set(tasks.values()) - set(transfer_holdout)),
                                              progress) if cfg.transfer_weight > 0 else None)
        fit_sigs, fit_tasks = {i: sigs[i] for i in fit}, {i: tasks[i] for i in fit}
        learned_all, _ = train_members(fit_sigs, fit_tasks, bank, fx, cfg, seeds, targets, transfer, progress)
        for train_seed, learned in zip(seeds, learned_all):
            score(direction, ev, fit, "learned", 1.0, "", 1, train_seed, [(None, learned)])
            for name, w, nf, encs in kernel_variants(learned, weights):
                score(direction, ev, fit, name, w, nf, 1, train_seed, encs)
        if ensemble and len(learned_all) > 1:
            ens = Encoders.ensemble(learned_all, kernel=None, learned_weight=1.0, extractor=fx)
            label = "ens:" + "-".join(str(t) for t in seeds)
            score(direction, ev, fit, "learned", 1.0, "", len(learned_all), label, [(None, ens)])
            for name, w, nf, encs in kernel_variants(ens, [w for w in weights if w > 0]):
                score(direction, ev, fit, name, w, nf, len(learned_all), label, encs)
    for (name, w, nf, members), results in pooled.items():
        rows.append({"direction": "all", "variant": name, "learned_weight": w, "n_features": nf, "members": members,
                     "train_seed": "mean", "kernel_seed": "mean" if name != "learned" else "",
                     **{key: float(np.mean([r[key] for r in results])) for key in metrics},
                     "queries": results[0]["queries"], "models": len(scored), "fit_models": ""})
    return rows


def _fold_wal(db: Path) -> None:
    """Fold SQLite's write-ahead log into the database file and drop it: a shipped index is opened read-only
    (immutable), which would not see rows still in a -wal file."""
    import sqlite3

    conn = sqlite3.connect(str(db))
    try:
        conn.execute("PRAGMA journal_mode=DELETE")
    finally:
        conn.close()


def ship_zoo_index(zoo_dir: PathLike, encoders=None, out: Optional[PathLike] = None) -> Path:
    """Encode every model of a zoo (its signatures) into a fresh ModelIndex folder `out` (default: the shipped
    proxylab/retrieval/shipped/zoo_index). Built beside `out` and swapped in, so a failure leaves the old one."""
    import os
    import shutil

    from proxylab.retrieval.encoders import SHIPPED_ENCODERS, Encoders
    from proxylab.retrieval.index import ModelIndex
    from proxylab.retrieval.zoo import add_models, load_zoo

    out = Path(out) if out is not None else SHIPPED_ENCODERS.parent / "zoo_index"
    zoo = load_zoo(zoo_dir)
    enc = encoders or Encoders.default()
    train_ids = set(split_models(zoo.manifest)[0])
    tmp = out.parent / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    encoder_id = enc.id
    idx = ModelIndex.create(str(tmp), enc.dim, encoder_id=encoder_id)
    add_models(idx, zoo, enc, [int(row["id"]) for row in zoo.manifest], encoder_id,
               extra=lambda row: {"encoder_split": "train" if int(row["id"]) in train_ids else "test"})
    idx.save()
    idx.close()
    _fold_wal(tmp / "models.sqlite")
    old = out.parent / f".{out.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
    return out


def _extractor_arg(path: Optional[str]):
    from proxylab.retrieval.features import FeatureExtractor

    return FeatureExtractor.load(path) if path else None


def main(argv: Optional[Sequence[str]] = None) -> None:
    from proxylab.retrieval.encoders import SHIPPED_ENCODERS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zoo", required=True, help="a built zoo folder (with signatures/)")
    parser.add_argument("--out", default=None, help="where to write the encoders (default: a file in --zoo)")
    parser.add_argument("--ship", action="store_true", help=f"write the shipped encoders ({SHIPPED_ENCODERS}) and "
                        "rebuild the shipped zoo index from --zoo with them")
    parser.add_argument("--index-only", action="store_true", help="only rebuild the shipped zoo index (no training)")
    parser.add_argument("--steps", type=int, default=TrainConfig.steps)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--learned-weight", type=float, default=SHIPPED_LEARNED_WEIGHT,
                        help="weight of the learned vector beside the kernel one (0: kernel only)")
    parser.add_argument("--no-kernel", action="store_true", help="learned encoders only (format-1 behaviour)")
    parser.add_argument("--learned", default=None, help="take the learned weights from this encoder file "
                        "instead of training (its training report, FILE.json, is carried over)")
    parser.add_argument("--validate", default=None, metavar="CSV", help="only run the validation comparison "
                        "(evaluate.validate_encoders) and write its rows to CSV")
    parser.add_argument("--validate-features", default="2048", metavar="N,N",
                        help="kernel random-feature counts the validation compares (default 2048)")
    parser.add_argument("--validate-seeds", default=None, metavar="S,S",
                        help="training seeds of the validation's learned encoders (default: --seed)")
    parser.add_argument("--validate-weights", default="0,0.1,0.25,0.5,1", metavar="W,W",
                        help="learned weights the validation compares (0: kernel only)")
    parser.add_argument("--validate-query-seeds", default=None, metavar="S,S",
                        help="few-shot draws of the validation queries (default: evaluate.VALIDATION_SEEDS)")
    parser.add_argument("--validate-ensemble", action="store_true",
                        help="also score one ensemble of the --validate-seeds learned encoders")
    parser.add_argument("--validate-split", default="calib", choices=("calib", "train"),
                        help="split the validation queries come from (default calib: images no extractor, zoo "
                             "model or encoder trained on; train reproduces the CSVs written before session 5)")
    parser.add_argument("--extractor", default=None, metavar="FILE",
                        help="validate with this feature extractor instead of the shipped one (the zoo's "
                             "signatures must have been captured with it)")
    parser.add_argument("--cross-fit", action="store_true",
                        help="validation in both directions (fit on either part of the train models, score the other)")
    parser.add_argument("--ensemble", type=int, default=SHIPPED_ENSEMBLE,
                        help="learned members to train, seeds --seed, --seed + 1, ... (default %(default)s)")
    parser.add_argument("--lr", type=float, default=TrainConfig.lr, help="peak learning rate")
    parser.add_argument("--grad-clip", type=float, default=TrainConfig.grad_clip,
                        help="gradient-norm clipping (0: off)")
    parser.add_argument("--transfer-weight", type=float, default=TrainConfig.transfer_weight,
                        help="weight of the transfer ranking term (0: off; default %(default)s)")
    parser.add_argument("--transfer-holdout", default="", metavar="TASK,TASK",
                        help="with --validate: withhold these source tasks' transfer targets from training and "
                             "report their transfer Recall@5 apart")
    parser.add_argument("--sigma-class", type=float, default=None,
                        help="class-anchor width of the kernel map, shipped and validated (default: KernelMap's)")
    parser.add_argument("--n-features", type=int, default=None,
                        help="random features of the shipped kernel map (default: KernelMap's)")
    args = parser.parse_args(argv)
    if not (math.isfinite(args.lr) and args.lr > 0):  # a NaN rate would train and ship NaN encoders
        parser.error(f"--lr must be a positive finite number, got {args.lr}")
    if not (math.isfinite(args.grad_clip) and args.grad_clip >= 0):
        parser.error(f"--grad-clip must be a finite number >= 0 (0: off), got {args.grad_clip}")
    if not (math.isfinite(args.transfer_weight) and args.transfer_weight >= 0):
        parser.error(f"--transfer-weight must be a finite number >= 0 (0: off), got {args.transfer_weight}")
    if args.learned and args.transfer_weight > 0:
        parser.error("--transfer-weight trains the learned part; --learned takes it from a file (drop one)")
    if args.ensemble < 1:
        parser.error(f"--ensemble must be >= 1, got {args.ensemble}")
    if args.sigma_class is not None and not (math.isfinite(args.sigma_class) and args.sigma_class > 0):
        parser.error(f"--sigma-class must be a positive finite number, got {args.sigma_class}")
    if not args.validate and (args.extractor or args.validate_split != "calib"):
        parser.error("--extractor and --validate-split apply to --validate only (shipping always uses the shipped "
                     "extractor: rebuild it with `python -m proxylab.retrieval.features --rebuild`)")
    if args.index_only and args.sigma_class is not None:
        parser.error("--index-only re-encodes with the shipped encoders; --sigma-class needs training (drop --index-only)")
    if args.validate:
        seeds = [int(v) for v in args.validate_seeds.split(",")] if args.validate_seeds else None
        qseeds = [int(v) for v in args.validate_query_seeds.split(",")] if args.validate_query_seeds else None
        rows = validation_report(args.zoo, weights=[float(v) for v in args.validate_weights.split(",")],
                                 config=TrainConfig(steps=args.steps, seed=args.seed, lr=args.lr,
                                                    grad_clip=args.grad_clip, transfer_weight=args.transfer_weight),
                                 n_features=[int(v) for v in args.validate_features.split(",")], train_seeds=seeds,
                                 ensemble=args.validate_ensemble, cross_fit=args.cross_fit, query_seeds=qseeds,
                                 query_split=args.validate_split, extractor=_extractor_arg(args.extractor),
                                 sigma_class=args.sigma_class,
                                 transfer_holdout=[t for t in args.transfer_holdout.split(",") if t])
        atomic_write_text(args.validate, rows_to_csv(rows, cell=lambda v: csv_cell(round(v, 6) if isinstance(v, float)
                                                                             else v)))
        print(f"wrote {args.validate}")
        return
    if args.index_only:
        print(f"wrote {ship_zoo_index(args.zoo)}")
        return
    out = Path(SHIPPED_ENCODERS if args.ship else (args.out or Path(args.zoo) / "encoders.pt"))
    if args.learned:
        import json

        from proxylab.retrieval.encoders import Encoders

        enc = Encoders.load(args.learned)
        report_path = Path(args.learned).with_suffix(".json")
        report = json.loads(report_path.read_text()) if report_path.is_file() else {"zoo": str(args.zoo)}
        report["learned_from"] = str(args.learned)
    else:
        enc, report = train_on_zoo(args.zoo, TrainConfig(steps=args.steps, seed=args.seed, lr=args.lr,
                                                         grad_clip=args.grad_clip,
                                                         transfer_weight=args.transfer_weight), ensemble=args.ensemble)
    if not args.no_kernel:
        from proxylab.retrieval.encoders import KernelMap

        options = {**({"n_features": args.n_features} if args.n_features else {}),
                   **({"sigma_class": args.sigma_class} if args.sigma_class is not None else {})}
        kernel = KernelMap(enc.feature_dim, **options) if options else None
        enc = with_kernel(enc, kernel, learned_weight=args.learned_weight)
    report.update({"kernel": enc.kernel.config() if enc.kernel is not None else None,
                   "learned_weight": enc.learned_weight, "encoder_id": enc.id, "dim": enc.dim})
    enc.save(out)
    atomic_write_json(out.with_suffix(".json"), report)
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB, {enc.id}, {enc.dim}-d, {len(enc.members)} learned "
          f"member(s)); learned part trained on "
          f"{len(report.get('train_ids', []))} models, {len(report.get('test_ids', []))} held out")
    if args.ship:
        type(enc).default.cache_clear()  # this process now reads the new shipped file
        print(f"wrote {ship_zoo_index(args.zoo, enc)}")


if __name__ == "__main__":
    main()
