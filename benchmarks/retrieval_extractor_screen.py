"""Screen feature-extractor variants for retrieval on VALIDATION data only (the zoo's 95 train models).

    .venv/bin/python benchmarks/retrieval_extractor_screen.py [--zoo runs/zoo200-nogate] [--variants base:10:2000,e30:30:2000,...]
writes benchmarks/results/retrieval_extractor_screen.csv: one row per (variant, kernel class width, source task) plus
an "all" row per (variant, width).

Each variant NAME:EPOCHS:IMAGES is the shipped extractor recipe (``features.train_extractor``, seed 0, one thread)
with that many epochs and training images per source task; it is trained into
runs/extractors/NAME-EPOCHSep-IMAGESimg.pt (kept: a rerun with the same recipe reuses it) and the zoo's signatures
are captured with it into ZOO-NAME (runs/zoo200-nogate-NAME; models linked, not copied). Scored training-free, so no encoder training
enters the comparison: the kernel map alone (``encoders.KernelMap``, kernel seeds 0-2) ranks all 95 TRAIN models
(``train_encoders.split_models``) for few-shot queries (5/10/20 shots, seeds 100-104) drawn from the CALIB split of
every source task: images that no extractor, zoo model or encoder trained on and that no benchmark query uses.
Ranking all 95 models (not half of them, as the cross-fit validation does) puts "top 5" at the same share of the
pool as in the benchmark's 105 test models. Scored by ``evaluate.validate_encoders`` (tied scores count in
expectation, as in the benchmark). Columns: variant, epochs, images_per_source, sigma_class, task, queries, top1_task,
recall_at_5; plus few-shot nearest-centroid accuracy of the features themselves (ncc_5shot, on the calib split). """
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from _results import write_csv

RESULTS = Path(__file__).resolve().parent / "results"
SHOTS, SEEDS, KERNEL_SEEDS = (5, 10, 20), tuple(range(100, 105)), (0, 1, 2)


def variant_zoo(zoo: Path, name: str, epochs: int, images: int):
    """(extractor, zoo folder whose signatures were captured with it); both built once and kept under runs/."""
    import shutil

    from proxylab.retrieval.features import FeatureExtractor, train_extractor
    from proxylab.retrieval.zoo import build_signatures

    path = zoo.parent / "extractors" / f"{name}-{epochs}ep-{images}img.pt"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        fx, _ = train_extractor(epochs=epochs, max_per_source=images, progress=False)
        fx.save(path)
    fx = FeatureExtractor.load(path)
    out = zoo.parent / f"{zoo.name}-{name}"
    out.mkdir(parents=True, exist_ok=True)
    link, target = out / "models", (zoo / "models").resolve()
    if link.is_symlink() and Path(os.readlink(link)) != target:
        link.unlink()  # made for another zoo (or dangling): its signatures are another zoo's models'
        shutil.rmtree(out / "signatures", ignore_errors=True)
    (out / "signatures").mkdir(exist_ok=True)
    if not link.is_symlink():
        os.symlink(target, link)
    for item in ("manifest.csv", "zoo.json"):
        shutil.copyfile(zoo / item, out / item)
    build_signatures(out, progress=False, extractor=fx)  # only the missing or stale ones
    return fx, out


def screen(fx, zoo_dir: Path, sigma: float):
    """{task: (queries, top-1, R@5)} of the kernel-only ranking of the train models, means over kernel seeds
    (``evaluate.validate_encoders``: tie-aware like the benchmark)."""
    from proxylab.retrieval.encoders import Encoders, KernelMap
    from proxylab.retrieval.evaluate import validate_encoders, validation_query_features
    from proxylab.retrieval.tasks import SOURCE_TASKS
    from proxylab.retrieval.train_encoders import split_models, with_kernel
    from proxylab.retrieval.zoo import load_zoo

    zoo = load_zoo(zoo_dir)
    ids = sorted(split_models(zoo.manifest)[0])
    tasks = {i: zoo.get(i)["task"] for i in ids}
    sigs = {i: zoo.signature(i) for i in ids}
    queries = validation_query_features(list(SOURCE_TASKS), fx, "calib", seeds=SEEDS, shots=SHOTS)
    base = Encoders(extractor_id=fx.id, extractor=fx)
    runs = [validate_encoders(with_kernel(base, KernelMap(fx.dim, sigma_class=sigma, seed=k), learned_weight=0.0),
                              sigs, tasks, queries) for k in KERNEL_SEEDS]
    per_task_queries = len(queries) // len(SOURCE_TASKS)
    return {t: (per_task_queries, float(np.mean([r["per_task_top1"][t] for r in runs])),
                float(np.mean([r["per_task_recall_at_5"][t] for r in runs]))) for t in SOURCE_TASKS}


def ncc(fx):
    """Nearest-class-mean accuracy of 5-shot calib supports on the rest of each task's calib split."""
    from proxylab.retrieval.encoders import class_prototypes
    from proxylab.retrieval.tasks import SOURCE_TASKS

    out = {}
    for name, task in SOURCE_TASKS.items():
        x, y = task.data("calib")
        y = y.numpy()
        f = fx.embed(x)
        f /= np.linalg.norm(f, axis=1, keepdims=True)
        accs = []
        for seed in SEEDS:
            rng = np.random.default_rng(seed)
            idx = np.concatenate([rng.choice(np.flatnonzero(y == c), 5, replace=False) for c in range(task.num_classes)])
            rest = np.ones(len(y), bool)
            rest[idx] = False
            means = class_prototypes(f[idx], y[idx])
            accs.append(float(((f[rest] @ means.T).argmax(1) == y[rest]).mean()))
        out[name] = float(np.mean(accs))
    return out


def main(argv=None) -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zoo", default="runs/zoo200-nogate")  # the pre-gate zoo the committed CSV was made on
    parser.add_argument("--variants", default="base:10:2000,e30:30:2000,m6k:10:6000,e30m6k:30:6000")
    parser.add_argument("--sigmas", default="0.1,0.15,0.2")
    parser.add_argument("--out", default=str(RESULTS / "retrieval_extractor_screen.csv"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the extractors are deterministic at one thread
    rows = []
    for spec in args.variants.split(","):
        name, epochs, images = spec.split(":")
        fx, zoo_dir = variant_zoo(Path(args.zoo), name, int(epochs), int(images))
        acc = ncc(fx)
        for sigma in (float(s) for s in args.sigmas.split(",")):
            per_task = screen(fx, zoo_dir, sigma)
            common = {"variant": name, "extractor": fx.id, "epochs": int(epochs), "images_per_source": int(images),
                      "sigma_class": sigma}
            for task, (n, top1, r5) in per_task.items():
                rows.append({**common, "task": task, "queries": n, "top1_task": top1, "recall_at_5": r5,
                             "ncc_5shot": acc[task]})
            rows.append({**common, "task": "all", "queries": sum(v[0] for v in per_task.values()),
                         "top1_task": float(np.mean([v[1] for v in per_task.values()])),
                         "recall_at_5": float(np.mean([v[2] for v in per_task.values()])),
                         "ncc_5shot": float(np.mean(list(acc.values())))})
            print(f"{name} sigma {sigma}: top-1 {rows[-1]['top1_task']:.3f}, R@5 {rows[-1]['recall_at_5']:.3f}, "
                  + ", ".join(f"{t} {v[2]:.2f}" for t, v in per_task.items() if t.startswith("shapes")), flush=True)
    write_csv(args.out, rows, float_format=lambda v: f"{v:.4f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
