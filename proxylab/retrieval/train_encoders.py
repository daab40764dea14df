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
  where acc[task, model] is white-box ground truth on the query's source task (``targets``; train_on_zoo
  uses each train model's own test accuracy on its task, models of other tasks excluded);
- a linear task classifier on model vectors (cross-entropy), which keeps each task's models together.

Rebuild the shipped encoders and the shipped zoo index (about two minutes at one thread, given the zoo built
by `proxylab zoo build --out runs/zoo200 --n-models 200 --seed 0`, signatures included):
    python -m proxylab.retrieval.train_encoders --zoo runs/zoo200 --ship
(`--index-only` re-encodes the shipped zoo index with the shipped encoders, no training.)
"""
from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

import numpy as np

from proxylab.errors import require
from proxylab.utils import PathLike, atomic_write_json

if TYPE_CHECKING:
    from proxylab.retrieval.signature import Signature

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
    lr: float = 2e-3
    weight_decay: float = 1e-4
    tau: float = 0.07
    tau_acc: float = 0.03
    margin: float = 0.2
    rank_weight: float = 1.0
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
                   targets: Optional[Dict[str, Dict[int, float]]] = None, progress: bool = True):
    """Fit Encoders on the given (train) models' signatures and the query feature bank.

    `model_tasks`: model id -> source task; `bank`: task -> (features, labels) to draw queries from;
    `targets`: task -> {model id: accuracy} ground truth for the ranking term (see module doc).
    Returns (Encoders in eval mode, history dict). Deterministic for a seed at a fixed thread count.
    """
    import torch
    import torch.nn.functional as F

    from proxylab.retrieval.encoders import Encoders, model_tokens, pad_sets, query_tokens

    cfg = config or TrainConfig()
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
    target = torch.full((len(tasks), len(ids)), float("-inf"))
    for t, name in enumerate(tasks):
        accs = (targets or {}).get(name, {})
        for m, i in enumerate(ids):
            if i in accs:
                target[t, m] = float(accs[i])
    params = list(enc.model_net.parameters()) + list(enc.query_net.parameters()) + list(classifier.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.1)
    labels_t = torch.as_tensor(task_of)
    history: Dict[str, List[float]] = {"loss": [], "ce": [], "hinge": [], "rank": [], "cls": []}
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
        tgt = target[qt][:, sel]
        known = torch.isfinite(tgt)
        rank = torch.zeros(())
        if bool(known.any()):
            # ListNet over the models with a ground truth for the query's task.
            p_true = (tgt / cfg.tau_acc).masked_fill(~known, float("-inf")).softmax(1)
            log_p = (logits.masked_fill(~known, float("-inf"))).log_softmax(1)
            rank = -(p_true * log_p.masked_fill(~known, 0.0)).sum(1).mean()
        cls = F.cross_entropy(classifier(m_vec), m_labels)
        loss = ce + hinge + cfg.rank_weight * rank + cfg.cls_weight * cls
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        for k, v in (("loss", loss), ("ce", ce), ("hinge", hinge), ("rank", rank), ("cls", cls)):
            history[k].append(float(v.detach()))
        if progress and (step + 1) % max(1, cfg.steps // 10) == 0:
            recent = {k: np.mean(v[-20:]) for k, v in history.items()}
            print(f"encoders step {step + 1}/{cfg.steps}: " + ", ".join(f"{k} {v:.3f}" for k, v in recent.items())
                  + f" ({time.perf_counter() - t0:.0f} s)", flush=True)
    enc.eval()
    history["seconds"] = [time.perf_counter() - t0]
    return enc, history


def own_accuracy_targets(manifest: Sequence[Dict], ids: Sequence[int]) -> Dict[str, Dict[int, float]]:
    """The minimal ranking ground truth: each model's test accuracy on its own source task."""
    keep = set(int(i) for i in ids)
    out: Dict[str, Dict[int, float]] = {}
    for row in manifest:
        if int(row["id"]) in keep:
            out.setdefault(str(row["task"]), {})[int(row["id"])] = float(row["test_acc"])
    return out


def train_on_zoo(zoo_dir: PathLike, config: Optional[TrainConfig] = None, train_fraction: float = TRAIN_FRACTION,
                 split_seed: int = 0, extractor=None, progress: bool = True):
    """Train encoders on the train part of a built zoo (signatures captured). Returns (encoders, report dict)."""
    import torch

    from proxylab.retrieval.features import FeatureExtractor
    from proxylab.retrieval.tasks import SOURCE_TASKS
    from proxylab.retrieval.zoo import load_zoo

    cfg = config or TrainConfig()
    zoo = load_zoo(zoo_dir)
    train_ids, test_ids = split_models(zoo.manifest, train_fraction, split_seed)
    fx = extractor or FeatureExtractor.default()
    sigs = {i: zoo.signature(i) for i in train_ids}
    tasks = {i: zoo.get(i)["task"] for i in train_ids}
    # Ranking ground truth: each train model's accuracy on its own task (a scalar per train model; the oracle's
    # probe accuracies are computed on TEST-split queries, so they are kept for evaluation only).
    targets = own_accuracy_targets(zoo.manifest, train_ids)
    bank = task_feature_bank([SOURCE_TASKS[t] for t in sorted(set(tasks.values()))], fx, "train",
                             cfg.images_per_task, cfg.seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        enc, history = train_encoders(sigs, tasks, bank, fx.id, cfg, targets, progress)
    finally:
        torch.set_num_threads(threads)
    enc._extractor = fx
    report = {"zoo": str(zoo_dir), "train_fraction": train_fraction, "split_seed": split_seed,
              "train_ids": train_ids, "test_ids": test_ids, "extractor": fx.id, "config": asdict(cfg),
              "final_loss": float(np.mean(history["loss"][-50:])), "seconds": history["seconds"][0]}
    return enc, report


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
    from proxylab.retrieval.zoo import index_metadata, load_zoo

    out = Path(out) if out is not None else SHIPPED_ENCODERS.parent / "zoo_index"
    zoo = load_zoo(zoo_dir)
    enc = encoders or Encoders.default()
    train_ids = set(split_models(zoo.manifest)[0])
    tmp = out.parent / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    idx = ModelIndex.create(str(tmp), enc.dim)
    for row in zoo.manifest:
        meta = dict(index_metadata(row), encoder_split="train" if int(row["id"]) in train_ids else "test")
        idx.add(enc.encode_signature(zoo.signature(row["id"])), meta, model_id=int(row["id"]))
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
    args = parser.parse_args(argv)
    if args.index_only:
        print(f"wrote {ship_zoo_index(args.zoo)}")
        return
    out = Path(SHIPPED_ENCODERS if args.ship else (args.out or Path(args.zoo) / "encoders.pt"))
    enc, report = train_on_zoo(args.zoo, TrainConfig(steps=args.steps, seed=args.seed))
    enc.save(out)
    atomic_write_json(out.with_suffix(".json"), report)
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB); trained on {len(report['train_ids'])} models, "
          f"{len(report['test_ids'])} held out, {report['seconds']:.0f} s")
    if args.ship:
        from proxylab.retrieval.encoders import _default_encoders

        _default_encoders.cache_clear()
        print(f"wrote {ship_zoo_index(args.zoo, enc)}")


if __name__ == "__main__":
    main()
