"""Build an MQ-Bench table: train (or load) a reference network, sample configurations, measure each one.

The output folder is the build's whole state: ``weights.pt`` is written before any row, ``meta.json``
(status "building") records the settings that define the table, and ``table.csv`` grows one durable row per
configuration. Rerunning the same command resumes; rerunning with other settings is refused before anything
is touched. When every row is in, the csv is rewritten sorted by cfg_id and meta.json gets its sha256 and
summary (noise ceiling, accuracy range, Spearman of size vs accuracy).
"""
from __future__ import annotations

import dataclasses
import json
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from proxylab.bench import format as fmt
from proxylab.bench.measure import MeasureSpec, measurer_for
from proxylab.bench.progress import RowWriter, missing_ids, read_progress, stderr_log
from proxylab.bench.table import DEFAULT_SPLITS, BenchTable, summarize
from proxylab.bench.weights import WEIGHT_DTYPES, build_network, load_weights_into, round_weights_, save_weights
from proxylab.errors import ProxylabError, require
from proxylab.utils import atomic_write_json, atomic_write_text, check_out_not_a_file, sha256_file

ENUMERATE_LIMIT = 2_000_000  # below this many configurations, sample codes without replacement directly
AUTO_PROTOCOL = "auto"
TRIAL_CONFIGS = 24
MIN_RELIABILITY = 0.9


def reliability(acc: np.ndarray, n_test: int) -> float:
    """Share of the accuracy variance over configurations that is not binomial test-set noise: the classical
    reliability of the measurement, which bounds any rank correlation against it (the noise ceiling)."""
    acc = np.asarray(acc, dtype=float)
    var = acc.var(ddof=1) if len(acc) > 1 else 0.0
    if var <= 0:
        return 0.0
    return float(1.0 - np.mean(acc * (1 - acc) / n_test) / var)


def pick_protocol(trial: List[Dict[str, Any]], min_reliability: float = MIN_RELIABILITY) -> str:
    """Among protocols whose accuracies are reliable enough to rank, the one that keeps the typical sampled
    configuration most accurate (furthest from collapsing to chance); if none is reliable, the most reliable."""
    reliable = [t for t in trial if t["reliability"] >= min_reliability]
    if reliable:
        return max(reliable, key=lambda t: (t["sampled_median"], t["reliability"]))["protocol"]
    return max(trial, key=lambda t: t["reliability"])["protocol"]


def _choose_protocol(spec_for, settings: "BuildSettings", log):
    """Measure every registered protocol on the plan's first configurations and pick one (``pick_protocol``):
    accuracies must spread reliably (not all equal to float) without collapsing to chance."""
    from proxylab.bench.measure import Measurer
    from proxylab.quant import PROTOCOLS

    trial, rows_by_protocol = [], {}
    plan = None
    for name in PROTOCOLS.names():
        m = Measurer(spec_for(name))
        if plan is None:
            plan = plan_configs(len(m.qn.layer_names), settings.bits, min(settings.n, TRIAL_CONFIGS), settings.seed)
        rows = {i: m.measure(bits) for i, bits in enumerate(plan)}
        acc = np.array([r[0] for r in rows.values()])
        sampled = acc[len(settings.bits):]
        rel = reliability(sampled if len(sampled) > 2 else acc, len(m.y))
        trial.append({"protocol": name, "configs": len(plan), "reliability": round(rel, 4),
                      "sampled_median": float(np.median(sampled if len(sampled) else acc)),
                      "acc_min": float(acc.min()), "acc_median": float(np.median(acc)), "acc_max": float(acc.max()),
                      "uniform_acc": [float(a) for a in acc[:len(settings.bits)]]})
        rows_by_protocol[name] = rows
        log(f"protocol trial {name}: reliability {rel:.3f}, accuracy {acc.min():.3f}..{acc.max():.3f}")
    best = pick_protocol(trial)
    log(f"protocol auto -> {best}")
    return best, trial, rows_by_protocol[best]


def _weights_file(checkpoint: str) -> Path:
    p = Path(checkpoint)
    path = p / fmt.WEIGHTS_FILE if p.is_dir() else p
    if not path.is_file():
        raise ProxylabError(f"no checkpoint weights at {path}: give a folder holding weights.pt + config.json")
    return path


@dataclass
class BuildSettings:
    """Everything that decides a table's content. Two builds with equal settings give the same table."""

    net: Optional[str]
    data: str
    bits: Tuple[int, ...] = (2, 3, 4)
    act_bits: int = 8
    n: int = 1000
    seed: int = 0
    epochs: int = 15
    checkpoint: Optional[str] = None
    protocol: str = "rtn"
    per_channel: bool = True
    net_kwargs: Dict[str, Any] = field(default_factory=dict)
    data_seed: int = 0
    weights_dtype: str = "float32"
    calib_size: int = 256
    train_batch_size: int = 64
    name: Optional[str] = None

    def validate(self) -> None:
        require(len(self.bits) >= 1 and len(set(self.bits)) == len(self.bits),
                f"--bits must list distinct bit-widths such as 2,3,4; got {list(self.bits)}")
        require(all(1 <= b <= 16 for b in self.bits), f"--bits must lie in 1..16; got {list(self.bits)}")
        require(1 <= self.act_bits <= 16, f"--act-bits must lie in 1..16; got {self.act_bits}")
        require(self.n >= 0, f"--n must be >= 0; got {self.n}")
        require(self.epochs >= 1, f"--epochs must be >= 1; got {self.epochs}")
        require(self.weights_dtype in WEIGHT_DTYPES,
                f"--weights-dtype must be one of {', '.join(WEIGHT_DTYPES)}; got {self.weights_dtype}")
        require(self.net is not None or self.checkpoint is not None, "give --net (to train) or --checkpoint DIR")
        from proxylab.quant import PROTOCOLS

        if self.protocol != AUTO_PROTOCOL:
            PROTOCOLS.get(self.protocol)  # unknown name -> error listing the known ones

    def identity(self) -> Dict[str, Any]:
        """The settings a resumed build must share with the first run (name and checkpoint path excluded:
        the checkpoint is identified by its weights' sha256 instead)."""
        d = dataclasses.asdict(self)
        d.pop("name")
        d.pop("checkpoint")
        d["bits"] = sorted(int(b) for b in self.bits)
        if self.checkpoint is not None:  # the checkpoint's own config decides the network
            for key in ("net", "net_kwargs", "epochs", "train_batch_size"):
                d.pop(key)
            d["checkpoint_sha256"] = sha256_file(_weights_file(self.checkpoint))
        return json.loads(json.dumps(d))

    def command(self, out: Path) -> str:
        parts = ["proxylab", "bench", "build"]
        if self.checkpoint:
            parts += ["--checkpoint", str(self.checkpoint)]
        if self.net:
            parts += ["--net", self.net]
        parts += ["--data", self.data, "--bits", ",".join(map(str, self.bits)), "--act-bits", str(self.act_bits),
                  "--n", str(self.n), "--seed", str(self.seed), "--protocol", self.protocol]
        if not self.checkpoint:
            parts += ["--epochs", str(self.epochs)]
            if self.train_batch_size != 64:
                parts += ["--train-batch-size", str(self.train_batch_size)]
        for k, v in sorted(self.net_kwargs.items()):
            parts += ["--net-arg", f"{k}={v}"]
        if not self.per_channel:
            parts.append("--per-tensor")
        if self.data_seed != 0:
            parts += ["--data-seed", str(self.data_seed)]
        if self.weights_dtype != "float32":
            parts += ["--weights-dtype", self.weights_dtype]
        if self.calib_size != 256:
            parts += ["--calib-size", str(self.calib_size)]
        if self.name:
            parts += ["--name", self.name]
        parts += ["--out", str(out)]
        return " ".join(shlex.quote(p) for p in parts)


def plan_configs(n_layers: int, bit_choices: Sequence[int], n: int, seed: int) -> List[Tuple[int, ...]]:
    """The uniform configurations (cfg_id 0..k-1) followed by ``n`` distinct configurations drawn uniformly
    from the rest of the space with a seeded generator."""
    choices = sorted(int(b) for b in bit_choices)
    k = len(choices)
    uniform = [tuple([b] * n_layers) for b in choices]
    space = k ** n_layers
    if n > space - len(uniform):
        raise ProxylabError(f"--n {n} asks for more configurations than exist: {k} bit choices over {n_layers} "
                            f"layers give {space} in all, {len(uniform)} of them uniform; lower --n")
    rng = np.random.default_rng(seed)
    taken = set(uniform)
    sampled: List[Tuple[int, ...]] = []
    if space <= ENUMERATE_LIMIT:
        for code in rng.permutation(space):
            digits = np.unravel_index(int(code), (k,) * n_layers)
            cfg = tuple(choices[int(d)] for d in digits)
            if cfg not in taken:
                taken.add(cfg)
                sampled.append(cfg)
                if len(sampled) == n:
                    break
    else:
        while len(sampled) < n:
            # a fixed draw size keeps a smaller plan the prefix of a larger one with the same seed
            for row in rng.integers(0, k, size=(256, n_layers)):
                cfg = tuple(choices[int(d)] for d in row)
                if cfg not in taken:
                    taken.add(cfg)
                    sampled.append(cfg)
                    if len(sampled) == n:
                        break
    return uniform + sampled


# Written before training: a folder holding it (and no meta.json yet) is a build of these settings killed early.
BUILD_MARK = ".build-settings.json"


def _read_mark(out: Path) -> Optional[Dict[str, Any]]:
    try:
        return json.loads((out / BUILD_MARK).read_text())
    except (OSError, ValueError):
        return None


def _check_resume(out: Path, settings: BuildSettings) -> Optional[Dict[str, Any]]:
    """The meta.json of the build in ``out`` to resume, or None for a new build; a folder holding anything
    else (a search run, a checkpoint) is refused, so a build never mixes with or replaces other files."""
    check_out_not_a_file(out)
    meta_path = out / fmt.META_FILE
    if not meta_path.exists():
        if (out / fmt.TABLE_FILE).exists():
            raise ProxylabError(f"{out / fmt.TABLE_FILE} exists without {fmt.META_FILE}: the folder is not a "
                                "proxylab build; choose an empty --out")
        mark = _read_mark(out)
        if mark is not None:  # a build killed before meta.json (training, protocol trial): ours to start again
            if mark != json.loads(json.dumps(settings.identity())):
                raise ProxylabError(f"{out} holds the start of a build with other settings; rerun that build's "
                                    "command to continue it, or choose another --out")
            return None
        # a kill mid atomic write leaves only a hidden .tmp file: that folder is still ours to start in
        held = sorted(p.name for p in out.iterdir() if not (p.name.startswith(".") and p.name.endswith(".tmp"))) \
            if out.is_dir() else []
        if held:  # a search run, a checkpoint, someone's weights.pt: never mixed with or overwritten
            raise ProxylabError(f"output folder {out} already exists and is not empty, with no {fmt.META_FILE} of a "
                                f"build to resume: choose another --out, or delete it")
        return None
    meta = fmt.read_meta(out)
    old = meta.get("build_settings")
    new = settings.identity()
    if old != new:
        keys = sorted(set(old or {}) | set(new))
        diffs = [f"{k}: {(old or {}).get(k)!r} -> {new.get(k)!r}" for k in keys if (old or {}).get(k) != new.get(k)]
        raise ProxylabError(f"{out} holds a build with other settings ({'; '.join(diffs)}); nothing was changed. "
                            f"Rerun its own command ({meta.get('command', '?')}) to resume it, or choose another --out")
    return meta


def _prepare_network(out: Path, settings: BuildSettings, meta: Optional[Dict[str, Any]], progress: bool, log):
    """(network recipe, model, training record) with weights.pt in ``out`` matching what will be measured."""
    from proxylab.data import get_dataset
    from proxylab.utils import seed_everything

    weights_path = out / fmt.WEIGHTS_FILE
    if meta is not None:  # resuming: the measured weights are already on disk, never retrain
        expected = (meta.get("sha256") or {}).get(fmt.WEIGHTS_FILE)
        if expected is None or not weights_path.exists() or sha256_file(weights_path) != expected:
            raise ProxylabError(f"{weights_path} is missing or differs from the sha256 in {fmt.META_FILE}; the rows "
                                "already measured cannot be trusted: delete the folder and rebuild")
        model = build_network(meta["network"])
        load_weights_into(model, weights_path)
        return meta["network"], model, meta.get("training", {})

    ds = get_dataset(settings.data, seed=settings.data_seed)
    if settings.checkpoint:
        from proxylab.nets import load_checkpoint

        model, config = load_checkpoint(settings.checkpoint)
        if not config.get("net"):
            raise ProxylabError(f"checkpoint {settings.checkpoint} holds a user network ({config.get('factory')}); "
                                "bench build needs a registered network (see `proxylab nets list`) so that "
                                "load_network can rebuild it")
        if config.get("data") not in (None, settings.data):
            raise ProxylabError(f"checkpoint {settings.checkpoint} was trained on '{config.get('data')}', "
                                f"not on --data {settings.data}")
        if settings.net and config.get("net") != settings.net:
            raise ProxylabError(f"checkpoint {settings.checkpoint} holds '{config.get('net')}', not --net {settings.net}")
        network = {"name": config["net"], "kwargs": dict(config.get("kwargs") or {}),
                   "num_classes": int(config["num_classes"]), "in_channels": int(config["in_channels"]),
                   "image_size": int(config["image_size"])}
        training = {"checkpoint": str(settings.checkpoint), "checkpoint_config": config}
    else:
        from proxylab.nets import train_net

        network = {"name": settings.net, "kwargs": dict(settings.net_kwargs), "num_classes": int(ds.num_classes),
                   "in_channels": int(ds.in_channels), "image_size": int(ds.image_size)}
        seed_everything(settings.seed)
        model = build_network(network)
        log(f"training {settings.net} on {settings.data} for {settings.epochs} epoch{'s' * (settings.epochs != 1)} (seed {settings.seed})")
        result = train_net(model, ds, epochs=settings.epochs, seed=settings.seed,
                           batch_size=settings.train_batch_size, progress=progress)
        training = {"epochs": settings.epochs, "seed": settings.seed, "batch_size": settings.train_batch_size,
                    "seconds": round(float(result["seconds"]), 1), "train_loss": float(result["train_loss"]),
                    "test_acc_before_rounding": float(result["test_acc"])}
    network["weights_dtype"] = settings.weights_dtype
    model.eval()
    round_weights_(model, settings.weights_dtype)  # measure exactly the weights that ship
    save_weights(model, weights_path, settings.weights_dtype)
    return network, model, training




def build_table(out, settings: BuildSettings, scheduler: Any = None, progress: bool = True, batch_size: int = 500,
                chunk: int = 4, log: Callable[[str], None] = stderr_log, scheduler_timeout: float = 20.0) -> BenchTable:
    """Build (or resume, or just open when finished) the table in ``out``. ``scheduler`` is a Dask scheduler
    address or a ``dask.distributed`` cluster / Client; None measures in this process."""
    out = Path(out)
    settings.bits = tuple(int(b) for b in settings.bits)
    settings.validate()
    meta = _check_resume(out, settings)
    resumed = meta is not None
    out.mkdir(parents=True, exist_ok=True)
    if meta is None:
        atomic_write_json(out / BUILD_MARK, settings.identity())
    if meta is not None and meta.get("status") == "complete":
        log(f"{out}: the table is already complete ({meta['summary']['n_rows']} rows)")
        return BenchTable.load(out)

    network, model, training = _prepare_network(out, settings, meta, progress, log)

    def spec_for(protocol: str) -> MeasureSpec:
        return MeasureSpec(network=network, weights=(out / fmt.WEIGHTS_FILE).read_bytes(), data=settings.data,
                           data_seed=settings.data_seed, bit_choices=tuple(sorted(settings.bits)),
                           act_bits=settings.act_bits, protocol=protocol, per_channel=settings.per_channel,
                           calib_size=settings.calib_size, halves_seed=settings.seed, batch_size=batch_size)

    trial: List[Dict[str, Any]] = []
    trial_rows: Dict[int, Tuple[float, float, float]] = {}
    if meta is not None:
        protocol = meta["protocol"]["name"]  # an "auto" build resumes with the protocol it chose
    elif settings.protocol == AUTO_PROTOCOL:
        protocol, trial, trial_rows = _choose_protocol(spec_for, settings, log)
    else:
        protocol = settings.protocol
    spec = spec_for(protocol)
    measurer = measurer_for(spec)  # local even with a scheduler: float accuracy, layer table, sizes
    qn = measurer.qn
    plan = plan_configs(len(qn.layer_names), settings.bits, settings.n, settings.seed)
    if meta is None:
        meta = _initial_meta(out, settings, network, qn, measurer, training, len(plan))
        if trial:
            meta["protocol"]["requested"] = AUTO_PROTOCOL
            meta["protocol_trial"] = trial
        atomic_write_json(out / fmt.META_FILE, meta)
        (out / BUILD_MARK).unlink(missing_ok=True)  # meta.json now says what this folder holds
        if trial_rows:  # the chosen protocol's trial configurations are the plan's first rows: keep them
            sizes, ops = qn.size_mb(np.array(plan, dtype=np.int64)), qn.bitops(np.array(plan, dtype=np.int64))
            with RowWriter(out / fmt.TABLE_FILE) as writer:
                for i, (acc, acc_a, acc_b) in sorted(trial_rows.items()):
                    writer.write(i, plan[i], float(sizes[i]), float(ops[i]), acc, acc_a, acc_b)
    elif meta["layer_names"] != list(qn.layer_names):
        raise ProxylabError(f"{out / fmt.META_FILE} lists other layers than the network has; delete the folder and rebuild")

    done = read_progress(out / fmt.TABLE_FILE, plan, log=log)
    todo = missing_ids(done, len(plan))
    if done and resumed:  # (a fresh --protocol auto build starts with its trial's rows: not a resume)
        log(f"{out}: resuming, {len(done)} of {len(plan)} configurations already measured")
    elif done:
        log(f"{out}: {len(done)} of {len(plan)} configurations measured by the protocol trial")
    sizes = qn.size_mb(np.array(plan, dtype=np.int64))
    ops = qn.bitops(np.array(plan, dtype=np.int64))
    start = time.perf_counter()
    with RowWriter(out / fmt.TABLE_FILE) as writer, _bar(len(plan), len(done), meta["name"], progress) as bar:
        def record(result) -> None:
            cfg_id, acc, acc_a, acc_b = result
            writer.write(cfg_id, plan[cfg_id], float(sizes[cfg_id]), float(ops[cfg_id]), acc, acc_a, acc_b)
            bar.update(1)

        jobs = [(i, plan[i]) for i in todo]
        if scheduler is None:
            for i, bits in jobs:
                record((i, *measurer.measure(bits)))
        else:
            from proxylab.bench.distributed import measure_on_cluster

            measure_on_cluster(scheduler, spec, jobs, record, chunk=chunk, timeout=scheduler_timeout)
    seconds = time.perf_counter() - start
    return _finish(out, plan, meta, seconds, len(todo), scheduler, log)


def _bar(total: int, initial: int, name: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=f"bench {name}", unit="cfg", disable=not enabled,
                dynamic_ncols=True, smoothing=0.1)


def _initial_meta(out: Path, settings: BuildSettings, network, qn, measurer, training, n_planned: int) -> Dict[str, Any]:
    import torch

    from proxylab import __version__

    name = settings.name or f"{network['name']}-{settings.data}"
    n_test = len(measurer.y)
    n_a = int(measurer.mask_a.sum())
    return {
        "schema_version": fmt.SCHEMA_VERSION,
        "name": name,
        "status": "building",
        "network": network,
        "dataset": {"name": settings.data, "seed": settings.data_seed, "test_size": n_test,
                    "calib_split_images_used": settings.calib_size},
        "layer_names": list(qn.layer_names),
        "params": [int(p) for p in qn.params],
        "params_convention": "weight (+ bias) + folded BatchNorm affine parameters (proxylab.quant.layer_info)",
        "macs": [int(m) for m in qn.macs],
        "bit_choices": sorted(int(b) for b in settings.bits),
        "act_bits": settings.act_bits,
        "protocol": {"name": qn.protocol.name, "clip": qn.protocol.clip, "bias_correction": qn.protocol.bias_correction,
                     "per_channel": settings.per_channel, "calib_size": settings.calib_size,
                     "description": qn.protocol.description},
        "float_acc": measurer.float_accuracy(),
        "training": training,
        "seeds": {"train": settings.seed, "sample": settings.seed, "halves": settings.seed,
                  "splits": settings.seed, "data": settings.data_seed},
        "n_configs": n_planned,
        "n_uniform": len(settings.bits),
        "n_sampled": settings.n,
        "sampling": "the uniform configurations, then distinct configurations drawn uniformly at random",
        "halves": {"seed": settings.seed, "size_a": n_a, "size_b": n_test - n_a,
                   "note": "acc_half_a / acc_half_b: accuracy on two disjoint random halves of the test split"},
        "has_halves": True,
        "splits": {"seed": settings.seed, "fractions": dict(DEFAULT_SPLITS["fractions"])},
        "weights": fmt.WEIGHTS_FILE,
        "weights_dtype": settings.weights_dtype,
        "build_settings": settings.identity(),
        "command": settings.command(out),
        "sha256": {fmt.WEIGHTS_FILE: sha256_file(out / fmt.WEIGHTS_FILE)},
        "versions": {"proxylab": __version__, "torch": torch.__version__},
    }


def _finish(out: Path, plan, meta: Dict[str, Any], seconds: float, measured: int, scheduler, log) -> BenchTable:
    table_path = out / fmt.TABLE_FILE
    columns = fmt.read_table_csv(table_path, len(meta["layer_names"]))
    ids = set(columns["cfg_id"].tolist())
    missing = [i for i in range(len(plan)) if i not in ids]
    if missing:  # a worker failure surfaces as an exception earlier; this guards against silent gaps
        raise ProxylabError(f"{table_path}: {len(missing)} configurations are still missing (e.g. cfg_id {missing[0]}); "
                            "rerun the same command to measure them")
    atomic_write_text(table_path, fmt.table_csv_text(columns))
    meta = dict(meta)
    meta["status"] = "complete"
    meta["sha256"] = {**meta.get("sha256", {}), fmt.TABLE_FILE: sha256_file(table_path)}
    meta["summary"] = summarize(columns)
    last = {"configs_measured": measured, "seconds": round(seconds, 1),
            "configs_per_min": round(measured / seconds * 60, 1) if seconds > 0 and measured else None,
            "scheduler": None if scheduler is None else str(scheduler if isinstance(scheduler, str) else type(scheduler).__name__)}
    meta["build"] = last
    atomic_write_json(out / fmt.META_FILE, meta)
    s = meta["summary"]
    log(f"{out}: {s['n_rows']} rows, accuracy {s['acc_min']:.3f}..{s['acc_max']:.3f}, "
        f"noise ceiling {s['noise_ceiling'] if s['noise_ceiling'] is None else round(s['noise_ceiling'], 4)}")
    return BenchTable.load(out)
