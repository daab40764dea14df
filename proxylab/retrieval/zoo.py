"""The model zoo: many small networks trained briefly on the source tasks, stored so each can be run as a
black box, plus (when the retrieval parts exist) their signatures and a model index.

Zoo layout (everything a rerun needs is on disk; a killed build loses at most the model in flight)::

    zoo_dir/
      zoo.json                 build parameters (seed, format, quality gate); a rerun with others is refused
      manifest.csv             one row per finished model, sorted by id; rewritten (atomically) after each
                               model, so a build in progress can already be read:
                               id, name, task, family, arch, params, num_classes, test_acc, width, epochs,
                               train_size, seed, seconds
                                 task   = source task name (proxylab.retrieval.tasks.SOURCE_TASKS)
                                 family = task family (the data source: mnist5k, animal, digits, shapes)
                                 arch   = architecture family (resnet20, resnet18, mobilenetv2, vgg_small)
                                 epochs = epochs trained (planned epochs x gate_rounds)
                                 gate_acc = accuracy on the task's calib split (the quality gate's figure)
                                 gate_rounds, gate_passed = rounds trained, whether gate_acc reached the gate
                                   (gate_passed empty when the zoo was built without a gate)
      models/<name>/weights.pt state_dict of the wrapped network (canonical images in, logits out)
      models/<name>/config.json how to rebuild it (net, kwargs, num_classes, mean, std, ...) + manifest fields
      signatures/<name>.npz    black-box signature (stage 2, when proxylab.retrieval.signature is present)
      index/                   ModelIndex of encoded signatures (stage 3, when shipped encoders exist)
      oracle/                  white-box ground truth (proxylab.retrieval.oracle), written on demand

A model folder appears by one ``os.replace`` of a finished temporary folder, so "models/<name>/ exists" means
"that model is complete". Model i's plan (task, architecture, width, epochs, training size, seed) depends only
on (zoo seed, i), never on n_models, so growing a zoo with a larger --n-models keeps every model already built.
"""
from __future__ import annotations

import csv
import functools
import io
import json
import numbers
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import numpy as np

from proxylab.errors import ProxylabError, require
from proxylab.utils import PathLike, atomic_write_json, atomic_write_text, rows_to_csv, sha256_bytes, torch_threads

ZOO_FORMAT = "proxylab-zoo-1"
ARCH_FAMILIES = ("resnet20", "resnet18", "mobilenetv2", "vgg_small")
# Per family, the options a model may get. Widths are tiny on purpose: the whole 200-model zoo trains on one
# CPU core in minutes. Measured per 1000 training images (1 thread, loaded 2-core machine): resnet20 0.25
# 3.4 s, resnet18 0.125 1.2 s, mobilenetv2 0.25 2.4 s, vgg_small 0.125 0.7 s.
ARCH_OPTIONS: Dict[str, Tuple[Dict[str, Any], ...]] = {
    "resnet20": ({"width": 0.25}, {"width": 0.375}),
    "resnet18": ({"width": 0.125, "stem": "small_s2"}, {"width": 0.25, "stem": "small_s2"}),
    "mobilenetv2": ({"width": 0.25, "stem": "imagenet", "head_features": 128},
                    {"width": 0.35, "stem": "imagenet", "head_features": 128}),
    "vgg_small": ({"width": 0.125}, {"width": 0.25}, {"width": 0.5}),
}
# (training images, epochs) choices: from barely trained (300 x 1) to decent (1500 x 2), so the zoo holds
# models of different quality on the same task, which is what transfer ranking has to tell apart.
TRAIN_SIZES = (300, 600, 1000, 1500)
EPOCHS = (1, 2, 3)
MAX_IMAGE_EPOCHS = {"resnet20": 1200, "resnet18": 2400, "mobilenetv2": 1800, "vgg_small": 2400}
BATCH_SIZE = 32
CONNECT_TIMEOUT = 10  # seconds to reach a Dask scheduler
# Twice train_net's default for batch 32: with 10-140 steps per model the default learns too slowly
# (shapes-color, vgg_small 0.25, 1500 images x 1 epoch: 0.89 at lr 0.025, 0.95 at 0.1).
LEARNING_RATE = 0.05
TEST_IMAGES = 400  # test images per model for its manifest test_acc
# The quality gate. A model whose accuracy on its task's CALIB split (never trained on, never queried by the
# benchmark) stays below GATE_RATIO x chance after its planned epochs trains again, one more round of its planned
# epochs each time (a warm restart of the same schedule), up to GATE_MAX_ROUNDS rounds in all. Why: after their
# planned epochs 56 of the 200 models of runs/zoo200 were below 1.5x chance (36 of them mobilenetv2; 13 of the 20
# shapes-texture models): such a model carries little of its task, yet counts as that task's model. A model that
# passes in round 1 is byte for byte what it was without the gate. The calib split also gives the encoders'
# ranking targets and the validation queries, so a retrained model's calib accuracy is slightly optimistic
# (training stopped when it looked good there).
GATE_RATIO = 1.5
GATE_MAX_ROUNDS = 4
GATE_IMAGES = 1000  # per task; = oracle.CALIB_MAX_IMAGES, so gate_acc is the model's calibration accuracy
MANIFEST_FIELDS = ("id", "name", "task", "family", "arch", "params", "num_classes", "test_acc", "width", "epochs",
                   "train_size", "seed", "seconds", "gate_acc", "gate_rounds", "gate_passed")


# -- the network every zoo model is --------------------------------------------------------------------------
def _canonical_net_class():
    import torch
    import torch.nn as nn

    class CanonicalNet(nn.Module):
        """Canonical images ([0, 1] pixels) in, logits out: the source task's normalisation lives inside."""

        def __init__(self, net: nn.Module, mean, std):
            super().__init__()
            self.net = net
            self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1).clone())
            self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1).clone())

        def forward(self, x):
            return self.net((x - self.mean) / self.std)

    return CanonicalNet


_CANONICAL_NET = None


def canonical_net(net, mean, std):
    """Wrap `net` (normalised input) so it takes canonical images."""
    global _CANONICAL_NET
    if _CANONICAL_NET is None:
        _CANONICAL_NET = _canonical_net_class()
    return _CANONICAL_NET(net, mean, std)


def build_module(config: Dict[str, Any]):
    """The (untrained) wrapped network a model config describes."""
    from proxylab.nets import create_net

    net = create_net(config["arch"], int(config["num_classes"]), in_channels=3, image_size=32, **config["kwargs"])
    return canonical_net(net, config["mean"], config["std"])


# -- the plan -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelPlan:
    id: int
    name: str
    task: str
    arch: str
    kwargs: Dict[str, Any] = field(hash=False)
    epochs: int  # per round; round 1 is the whole plan unless the quality gate asks for more
    train_size: int
    seed: int
    gate_ratio: float = GATE_RATIO  # 0 = no gate (one round)
    gate_rounds: int = GATE_MAX_ROUNDS


MIN_SOURCE_CLASSES = 3  # the fewest classes of any source task (shapes-size): a gate ratio must stay below it


def check_gate(ratio: float, rounds: int) -> None:
    """Refuse gate settings that are not numbers, that no model could pass (accuracy >= ratio / classes > 1 on
    the 3-class task), or rounds that are no positive integer."""
    require(isinstance(ratio, numbers.Real) and not isinstance(ratio, bool) and 0 <= ratio < MIN_SOURCE_CLASSES,
            f"gate ratio must be in [0, {MIN_SOURCE_CLASSES}) (0 = no gate; {MIN_SOURCE_CLASSES} or more x chance is "
            f"above 100% accuracy on the {MIN_SOURCE_CLASSES}-class source task), got {ratio!r}")
    require(isinstance(rounds, numbers.Integral) and not isinstance(rounds, bool) and rounds >= 1,
            f"gate rounds must be an integer >= 1, got {rounds!r}")


def plan_model(i: int, zoo_seed: int = 0, max_train_images: Optional[int] = None, gate_ratio: float = GATE_RATIO,
               gate_rounds: int = GATE_MAX_ROUNDS) -> ModelPlan:
    """Model i of a zoo: tasks cycle fastest, so any prefix of the zoo covers every source task; the
    architecture family cycles once per round of tasks; the rest is a seeded draw for (zoo_seed, i)."""
    from proxylab.retrieval.tasks import SOURCE_TASKS

    tasks = list(SOURCE_TASKS)
    task = tasks[i % len(tasks)]
    arch = ARCH_FAMILIES[(i // len(tasks)) % len(ARCH_FAMILIES)]
    rng = np.random.default_rng([int(zoo_seed), int(i), 0x200])
    kwargs = dict(ARCH_OPTIONS[arch][int(rng.integers(len(ARCH_OPTIONS[arch])))])
    size = int(rng.choice(TRAIN_SIZES))
    epochs = int(rng.choice(EPOCHS))
    while size * epochs > MAX_IMAGE_EPOCHS[arch] and epochs > 1:
        epochs -= 1
    size = min(size, MAX_IMAGE_EPOCHS[arch], max_train_images or size)
    seed = int(zoo_seed) * 1_000_003 + int(i)
    check_gate(gate_ratio, gate_rounds)
    return ModelPlan(i, f"{i:04d}-{task}-{arch}", task, arch, kwargs, epochs, size, seed, float(gate_ratio),
                     int(gate_rounds))


# -- training one model (runs in this process or on a Dask worker) --------------------------------------------
class _TaskData:
    """What proxylab.nets.train_net reads: .train/.test with .x/.y, .num_classes, .name."""

    class _Part:
        def __init__(self, x, y):
            self.x, self.y = x, y

    def __init__(self, name, num_classes, train, test):
        self.name, self.num_classes = name, num_classes
        self.train, self.test = self._Part(*train), self._Part(*test)


@functools.lru_cache(maxsize=None)
def task_pool(task_name: str):
    """(train x, y, test x, y) of a source task: a fixed seeded draw of max(TRAIN_SIZES) training and
    TEST_IMAGES test images. A model with a smaller training size takes the first rows of the same pool, so
    the models of one task differ by how much data they saw, not by which (~25 MB per task, cached)."""
    from proxylab.retrieval.tasks import get_task

    task = get_task(task_name)
    tx, ty = task.data("train", limit=max(TRAIN_SIZES), seed=0)
    ex, ey = task.data("test", limit=TEST_IMAGES, seed=0)
    # Shuffle the (index-sorted) training draw, so any prefix is a random, roughly class-balanced subset.
    order = _perm(len(ty), seed=_crc(task_name))
    return tx[order].clone(), ty[order].clone(), ex.clone(), ey.clone()


@functools.lru_cache(maxsize=None)
def calib_data(task_name: str, limit: int = GATE_IMAGES):
    """(x, y): the first `limit` images of a seeded draw of the task's calib split. The one definition of "a
    model's calib images": the quality gate scores a model on them, and so does oracle.calibration_accuracy."""
    from proxylab.retrieval.tasks import get_task

    x, y = get_task(task_name).data("calib", limit=limit, seed=0)
    return x.clone(), y.clone()


def _crc(text: str) -> int:
    import zlib

    return zlib.crc32(text.encode())


def _perm(n: int, seed: int):
    import torch

    return torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))


def prepare_pools(task_names: Iterable[str], progress: bool = True) -> None:
    """Fill the task-pool cache for every task, then drop the full data sets behind them (~1 GB for all
    shapes labellings), so a long build holds only the few MB per task it trains on."""
    from proxylab.retrieval.tasks import clear_cache

    task_names = sorted(set(task_names))
    for name in task_names:
        task_pool(name)
        calib_data(name)
    clear_cache()
    _log(progress, f"data ready for {len(task_names)} tasks")


def train_model(plan: ModelPlan) -> Tuple[Dict[str, Any], bytes]:
    """Train one planned model on one thread; returns (config, weights bytes). Same plan, same bytes."""
    import torch

    from proxylab.nets import count_params, train_net
    from proxylab.nets.train import evaluate
    from proxylab.retrieval.tasks import get_task

    with torch_threads(1):  # results must not depend on the worker's core count
        task = get_task(plan.task)
        pool_x, pool_y, test_x, test_y = task_pool(plan.task)
        train = (pool_x[:plan.train_size], pool_y[:plan.train_size])
        test = (test_x, test_y)
        # Per-channel statistics of the images the model trains on: its own input normalisation.
        mean = train[0].mean(dim=(0, 2, 3)).tolist()
        std = train[0].std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()
        config = {"format": ZOO_FORMAT, "id": plan.id, "name": plan.name, "task": plan.task, "family": task.family,
                  "arch": plan.arch, "kwargs": dict(plan.kwargs), "num_classes": task.num_classes,
                  "class_names": list(task.class_names), "in_channels": 3, "image_size": 32,
                  "mean": mean, "std": std, "epochs": plan.epochs, "train_size": int(len(train[1])),
                  "batch_size": BATCH_SIZE, "lr": LEARNING_RATE, "seed": plan.seed}
        torch.manual_seed(plan.seed)  # the initial weights
        model = build_module(config)
        task_data = _TaskData(task.dataset_name, task.num_classes, train, test)
        gate_x, gate_y = calib_data(plan.task)
        need = plan.gate_ratio / task.num_classes
        seconds = 0.0
        for rounds in range(1, plan.gate_rounds + 1):
            # Round 1 uses the plan's seed (so a model the gate passes at once is unchanged); later rounds
            # shuffle the data in another order.
            stats = train_net(model, task_data, epochs=plan.epochs, seed=plan.seed + (rounds - 1) * 2 ** 40,
                              batch_size=BATCH_SIZE, lr=LEARNING_RATE, progress=False, augment="none")
            seconds += float(stats["seconds"])
            gate_acc = evaluate(model, gate_x, gate_y)
            if plan.gate_ratio <= 0 or gate_acc >= need:
                break
        model.eval()
        buffer = io.BytesIO()
        torch.save({k: v.detach().cpu().clone() for k, v in model.state_dict().items()}, buffer)
        data = buffer.getvalue()
        config.update(epochs=plan.epochs * rounds, planned_epochs=plan.epochs, gate_ratio=plan.gate_ratio,
                      gate_max_rounds=plan.gate_rounds if plan.gate_ratio > 0 else 1, gate_rounds=rounds,
                      gate_acc=round(gate_acc, 6),
                      gate_passed=bool(gate_acc >= need) if plan.gate_ratio > 0 else None,  # None: no gate
                      params=int(count_params(model.net)), test_acc=round(float(stats["test_acc"]), 6),
                      train_loss=float(stats["train_loss"]), seconds=round(seconds, 3),
                      width=float(plan.kwargs.get("width", 1.0)), weights="weights.pt",
                      weights_sha256=sha256_bytes(data), torch=torch.__version__)
        return config, data


def _write_model(models_dir: Path, config: Dict[str, Any], data: bytes) -> None:
    """Write the model folder under a temporary name, then rename it into place in one step."""
    final = models_dir / config["name"]
    tmp = models_dir / f".{config['name']}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for fname, payload in (("weights.pt", data), ("config.json", (json.dumps(config, indent=2) + "\n").encode())):
        with open(tmp / fname, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
    if final.exists():  # another process finished the same model first: identical by construction
        shutil.rmtree(tmp)
        return
    os.replace(tmp, final)


# -- the build ----------------------------------------------------------------------------------------------
def _read_config(folder: Path) -> Dict[str, Any]:
    try:
        return json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ProxylabError(f"zoo model folder '{folder}' has no readable config.json ({e}); delete the folder "
                            "and rerun the build to retrain it") from None


def finished_models(zoo_dir: PathLike) -> Dict[int, Dict[str, Any]]:
    """id -> config of every complete model folder."""
    models = Path(zoo_dir) / "models"
    out: Dict[int, Dict[str, Any]] = {}
    if models.is_dir():
        for folder in sorted(models.iterdir()):
            if folder.is_dir() and not folder.name.startswith("."):
                config = _read_config(folder)
                out[int(config["id"])] = config
    return out


def write_manifest(zoo_dir: PathLike) -> Path:
    """manifest.csv from the finished model folders (the folders are the truth; this is their table)."""
    rows = [finished for _, finished in sorted(finished_models(zoo_dir).items())]
    path = Path(zoo_dir) / "manifest.csv"
    atomic_write_text(path, rows_to_csv(rows, MANIFEST_FIELDS))
    return path


_OPTION = {"seed": "--seed", "max_train_images": "--max-train-images", "gate_ratio": "--gate-ratio",
           "gate_max_rounds": "--gate-rounds"}


def _check_zoo_json(out: Path, seed: int, max_train_images: Optional[int], gate_ratio: float, gate_rounds: int) -> None:
    path = out / "zoo.json"
    settings = {"seed": int(seed), "max_train_images": max_train_images, "gate_ratio": float(gate_ratio),
                "gate_max_rounds": int(gate_rounds) if gate_ratio > 0 else 1}
    if path.exists():
        meta = json.loads(path.read_text())
        if "gate_ratio" not in meta:  # built before the quality gate: every model had one round
            meta.update(gate_ratio=0.0, gate_max_rounds=1)
        for key, value in settings.items():
            if meta.get(key) != value:
                how = f"without {_OPTION[key]}" if meta.get(key) is None else f"with {_OPTION[key]} {meta.get(key)}"
                raise ProxylabError(f"zoo '{out}' was built with {key}={meta.get(key)}, not {value}: rerun {how} "
                                    "to resume or grow it, or build into a new folder")
    else:
        atomic_write_json(path, {"format": ZOO_FORMAT, **settings,
                                 "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})


def _log(progress: bool, text: str) -> None:
    if progress:
        print(text, file=sys.stderr, flush=True)


def build_zoo(out_dir: PathLike, n_models: int = 200, seed: int = 0, scheduler: Optional[str] = None,
              progress: bool = True, signatures: bool = True, index: bool = True,
              max_train_images: Optional[int] = None, gate_ratio: float = GATE_RATIO,
              gate_rounds: int = GATE_MAX_ROUNDS) -> Path:
    """Train (or finish training) models 0..n_models-1 into `out_dir`, then capture their signatures and
    index them when those parts are available. Resumable; `scheduler` = Dask scheduler address.
    `max_train_images` caps every model's training set (tiny zoos for tests and demos). `gate_ratio`,
    `gate_rounds`: the quality gate (GATE_RATIO above; ratio 0 = none); a model still below it after
    `gate_rounds` rounds stays in the zoo with gate_passed False in the manifest, and the build says so."""
    require(isinstance(n_models, int) and n_models >= 1, f"n_models must be a positive integer, got {n_models!r}")
    require(max_train_images is None or (isinstance(max_train_images, int) and max_train_images >= BATCH_SIZE),
            f"max_train_images must be an integer >= {BATCH_SIZE} (one batch), got {max_train_images!r}")
    check_gate(gate_ratio, gate_rounds)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ProxylabError(f"zoo output '{out}' is a file: give a folder")
    (out / "models").mkdir(parents=True, exist_ok=True)
    _check_zoo_json(out, seed, max_train_images, gate_ratio, gate_rounds)
    for stale in (out / "models").glob(".*.tmp-*"):  # what a killed build left half-written
        shutil.rmtree(stale, ignore_errors=True)
    done = finished_models(out)
    todo = [plan_model(i, seed, max_train_images, gate_ratio, gate_rounds) for i in range(n_models) if i not in done]
    _log(progress, f"zoo {out}: {len(done)} models already built, {len(todo)} to train")
    start = time.perf_counter()

    def finished(k: int, config: Dict[str, Any], data: bytes) -> None:
        _write_model(out / "models", config, data)
        write_manifest(out)
        gate = "" if config["gate_rounds"] == 1 and config["gate_passed"] is not False else (
            f", {config['gate_rounds']} round(s), gate {'passed' if config['gate_passed'] else 'FAILED'}")
        _log(progress, f"[{k}/{len(todo)}] {config['name']}: test_acc {config['test_acc']:.3f}, calib "
                       f"{config['gate_acc']:.3f}{gate}, {config['params']} params, {config['seconds']:.1f} s "
                       f"(total {time.perf_counter() - start:.0f} s)")

    if scheduler:
        _train_on_dask(todo, scheduler, finished)
    else:
        prepare_pools(p.task for p in todo)
        for k, plan in enumerate(todo, 1):
            finished(k, *train_model(plan))
    write_manifest(out)
    failed = [r["name"] for r in finished_models(out).values() if r.get("gate_passed") is False]
    if failed:
        _log(progress, f"quality gate: {len(failed)} model(s) stayed below {gate_ratio}x chance on their calib split "
                       f"after {gate_rounds} rounds and are kept, marked gate_passed=False in manifest.csv: "
                       + ", ".join(failed))
    if signatures:
        build_signatures(out, progress=progress)
    if index:
        build_index(out, progress=progress)
    return out


def _train_on_dask(plans: List[ModelPlan], address: str, done: Callable[[int, Dict[str, Any], bytes], None]) -> None:
    try:
        from distributed import Client, as_completed
    except ImportError:
        from proxylab.errors import MissingDependencyError

        raise MissingDependencyError("distributed", "pip install 'dask[distributed]'", "--scheduler") from None
    try:
        client = Client(address, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError, ValueError) as e:
        raise ProxylabError(f"cannot reach the Dask scheduler at {address!r} ({e}); start one with `dask scheduler` "
                            "and `dask worker ADDRESS`, or leave --scheduler out") from None
    try:
        futures = client.map(train_model, plans, pure=False)
        for k, fut in enumerate(as_completed(futures), 1):
            config, data = fut.result()
            done(k, config, data)
    finally:
        client.close()


def _given_or_shipped(given, load_shipped, what: str, progress: bool):
    """``given``, else the shipped component; None (and a logged skip of ``what``) when it is not installed."""
    if given is not None:
        return given
    try:
        return load_shipped()
    except (ProxylabError, FileNotFoundError) as e:
        _log(progress, f"{what} skipped: {e}")
        return None


def build_signatures(zoo_dir: PathLike, progress: bool = True, seed: int = 0, extractor=None, pool=None) -> int:
    """Capture the black-box signature of every model that has none yet (or one of another extractor);
    returns how many were written. `extractor` default: the shipped one; `pool`: capture_signature's probe
    pool override (default: the shared pool). Skipped (0) while the shipped extractor is not available."""
    from proxylab.retrieval.features import FeatureExtractor
    from proxylab.retrieval.signature import capture_signature

    extractor = _given_or_shipped(extractor, FeatureExtractor.default, "signatures", progress)
    if extractor is None:
        return 0
    zoo = load_zoo(zoo_dir)
    out = Path(zoo_dir) / "signatures"
    out.mkdir(exist_ok=True)
    written = 0
    for row in zoo.manifest:
        path = out / f"{row['name']}.npz"
        if path.exists() and _signature_extractor(path) == extractor.id:
            continue  # a signature of another extractor is stale: its features live in another space
        sig = capture_signature(zoo.blackbox(row["id"]), extractor=extractor, seed=seed, pool=pool)
        sig.save(path)  # atomic: a killed capture leaves no file, so the rerun captures it again
        written += 1
        _log(progress, f"signature {row['name']}: {sig.calls} calls")
    return written


def _signature_extractor(path: Path) -> str:
    from proxylab.retrieval.signature import Signature

    try:
        return Signature.load(path).extractor
    except ProxylabError:  # unreadable: capture it again
        return ""


def build_index(zoo_dir: PathLike, progress: bool = True, encoders=None) -> int:
    """Add every signed model missing from zoo_dir/index (created on first use); returns how many were added.
    `encoders` default: the shipped ones. Skipped (0) while the index or the shipped encoders are not available.
    Models already indexed keep their vectors; the index records the encoders' id, so after retraining the
    encoders this raises EncoderMismatchError (delete zoo_dir/index and rerun to re-encode every model). An
    index made before ids were recorded is kept only when its stored signatures re-encode to its vectors
    (``legacy.adopt_if_vectors_match``); otherwise the same error."""
    from proxylab.retrieval.encoders import Encoders
    from proxylab.retrieval.index import ModelIndex

    encoders = _given_or_shipped(encoders, Encoders.default, "index", progress)
    if encoders is None:
        return 0
    zoo = load_zoo(zoo_dir)
    path = Path(zoo_dir) / "index"
    encoder_id = encoders.id
    from proxylab.retrieval.legacy import open_proven

    # an index made before encoder ids is proven by the zoo's signatures or refused
    idx = (open_proven(path, Path(zoo_dir) / "signatures", encoders) if _has_index(path)
           else ModelIndex.create(str(path), encoders.dim, encoder_id=encoder_id))
    present = {m["name"] for m in idx.list()}
    todo = [int(row["id"]) for row in zoo.manifest
            if row["name"] not in present and (Path(zoo_dir) / "signatures" / f"{row['name']}.npz").exists()]
    added = add_models(idx, zoo, encoders, todo, encoder_id)
    idx.save()
    _log(progress, f"index {path}: {added} models added, {len(idx)} in all")
    return added


def _has_index(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def add_models(idx, zoo: "Zoo", encoders, ids, encoder_id: str,
               extra: Optional[Callable[[Dict[str, Any]], Dict[str, Any]]] = None) -> int:
    """Encode the zoo models ``ids`` (their signatures) into ``idx``, each with ``index_metadata`` of its
    manifest row plus ``extra(row)``; ``encoder_id`` is ``encoders.id``, hashed once by the caller."""
    for i in ids:
        row = zoo.get(int(i))
        meta = index_metadata(row) if extra is None else {**index_metadata(row), **extra(row)}
        idx.add(encoders.encode_signature(zoo.signature(int(i))), meta, model_id=int(i), encoder_id=encoder_id)
    return len(ids)


def index_metadata(row: Dict[str, Any]) -> Dict[str, Any]:
    """The metadata a zoo model carries in a ModelIndex (contract fields + build details)."""
    return {"name": row["name"], "task": row["task"], "family": row["family"], "arch": row["arch"],
            "params": int(row["params"]), "num_classes": int(row["num_classes"]),
            "test_acc": float(row["test_acc"]), "width": float(row["width"])}


# -- reading a zoo ------------------------------------------------------------------------------------------
_INT_FIELDS = ("id", "params", "num_classes", "epochs", "train_size", "seed")
_FLOAT_FIELDS = ("test_acc", "width", "seconds")


class Zoo:
    """A built zoo: its manifest, each model as a black box (or as a white box for the oracles)."""

    def __init__(self, path: PathLike):
        self.path = Path(path)
        manifest = self.path / "manifest.csv"
        if not manifest.is_file():
            raise ProxylabError(f"'{self.path}' is not a zoo (no manifest.csv): build one with `proxylab zoo build --out DIR`")
        with open(manifest, newline="") as f:
            rows = list(csv.DictReader(f))
        for r in rows:
            for k in _INT_FIELDS:
                r[k] = int(r[k])
            for k in _FLOAT_FIELDS:
                r[k] = float(r[k])
            # The quality gate's columns: empty (None) in a zoo built before the gate.
            r["gate_acc"] = float(r["gate_acc"]) if r.get("gate_acc") else None
            r["gate_rounds"] = int(r["gate_rounds"]) if r.get("gate_rounds") else None
            r["gate_passed"] = {"True": True, "False": False}.get(r.get("gate_passed") or "")
        self.manifest: List[Dict[str, Any]] = rows
        self._by_id = {r["id"]: r for r in rows}

    def __len__(self) -> int:
        return len(self.manifest)

    def __contains__(self, model_id: int) -> bool:
        return int(model_id) in self._by_id

    @property
    def ids(self) -> List[int]:
        return [r["id"] for r in self.manifest]

    def get(self, model_id: int) -> Dict[str, Any]:
        try:
            return self._by_id[int(model_id)]
        except (KeyError, ValueError, TypeError):
            raise ProxylabError(f"zoo '{self.path}' has no model with id {model_id!r}; ids run "
                                f"{min(self._by_id, default='-')}..{max(self._by_id, default='-')} (see manifest.csv)") from None

    def find(self, name_or_id: Any) -> Dict[str, Any]:
        """A manifest row by id (int or digits) or by name."""
        if isinstance(name_or_id, (int, np.integer)) or str(name_or_id).isdigit():
            return self.get(int(name_or_id))
        for r in self.manifest:
            if r["name"] == name_or_id:
                return r
        raise ProxylabError(f"zoo '{self.path}' has no model named {name_or_id!r} (see manifest.csv)")

    def config(self, model_id: int) -> Dict[str, Any]:
        return _read_config(self.path / "models" / self.get(model_id)["name"])

    def module(self, model_id: int):
        """The trained network (canonical images -> logits), eval mode. WHITE BOX: for oracles only."""
        from proxylab.nets.checkpoint import load_weights, read_state_dict

        row = self.get(model_id)
        config = self.config(model_id)
        model = build_module(config)
        load_weights(model, read_state_dict(self.path / "models" / row["name"] / "weights.pt"),
                     source=f"zoo model '{row['name']}' weights")
        return model.eval()

    def blackbox(self, model_id: int):
        """The model as the retrieval method may see it: probabilities, calls counted (its ``features`` answer
        too, for the gray-box LogME re-ranking only; see blackbox)."""
        from proxylab.retrieval.blackbox import TorchBlackBox

        row = self.get(model_id)
        return TorchBlackBox(self.module(model_id), num_classes=row["num_classes"], name=row["name"])

    def signature(self, model_id: int):
        from proxylab.retrieval.signature import Signature

        row = self.get(model_id)
        path = self.path / "signatures" / f"{row['name']}.npz"
        if not path.is_file():
            raise ProxylabError(f"model {row['name']} has no signature yet ({path}): run `proxylab zoo build --out "
                                f"{self.path}` again (it captures missing signatures)")
        return Signature.load(path)

    @property
    def index(self):
        from proxylab.retrieval.index import ModelIndex

        return ModelIndex.open(str(self.path / "index"))


def load_zoo(path: PathLike) -> Zoo:
    return Zoo(path)
