"""The shared fixed feature extractor: one small CNN that maps canonical images to D-dim features.

Model signatures (anchor and boundary images) and queries (few labelled images) meet in this one feature
space, so the extractor is trained once, here, on offline data, and shipped (fp16, ~0.3 MB). It is trained
ONLY on the zoo's source-task data (train splits), never on the held-out query classes or tasks, so the
evaluation's "tasks no model saw" are unseen by the extractor too.

Training is multi-task: a shared trunk, one linear head per source data set, batches drawn round-robin from
the data sets. The heads are thrown away; the trunk's pooled activations are the features.

Rebuild the shipped weights (30 epochs, 2000 images per source task; about 2 minutes at one thread here):
    python -m proxylab.retrieval.features --rebuild

Why 30 epochs (session 5; 10 before). The 10-epoch trunk hardly sees texture: 5-shot nearest-class-mean accuracy
0.33 on shapes-texture's calib split (chance 0.25; its training head, as `--rebuild --epochs 10` prints it, 0.51).
Four recipes were screened on validation data only (``benchmarks/retrieval_extractor_screen.py``: kernel-only
ranking of the 95 train models, calib-split queries): 30 epochs lifts texture (kernel-only R@5 0.71 -> 0.82)
without losing top-1 (0.867 -> 0.878); 6000 images per source lifts texture more (0.96) but costs shapes-size
and top-1 (0.847); both together cost top-1 (0.829). The 10- and 30-epoch extractors were then compared by the
cross-fit validation (``train_encoders --validate``; see its docstring); a cross-fit run of 30 epochs + 6000
images was stopped after one direction at top-1 0.69-0.70.
"""
from __future__ import annotations

import argparse
import functools
import io
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from proxylab.errors import ProxylabError
from proxylab.utils import PathLike, atomic_write_bytes, seed_everything, sha256_bytes

SHIPPED_DIR = Path(__file__).resolve().parent / "shipped"
SHIPPED_EXTRACTOR = SHIPPED_DIR / "extractor.pt"
FEATURE_DIM = 128
_WIDTHS = (24, 48, 96, FEATURE_DIM)
# The first conv has stride 2: a query's images are embedded on the query path, whose latency budget is
# ~20 ms for a few dozen images on one CPU thread; stride 2 made the trunk ~8x cheaper than stride 1 here.
_FIRST_STRIDE = 2
# Fixed chunk size: CPU kernels may pick different algorithms for different batch shapes, so embedding the
# same image always in the same-sized chunks keeps features identical byte for byte.
EMBED_CHUNK = 256
SHIPPED_EPOCHS = 30  # training of the shipped extractor (``rebuild_shipped``; chosen on validation, see below)
SHIPPED_MAX_PER_SOURCE = 2000


def _build_trunk():
    import torch.nn as nn

    layers: List[nn.Module] = []
    cin = 3
    for i, w in enumerate(_WIDTHS):
        stride = _FIRST_STRIDE if i == 0 else 1
        layers += [nn.Conv2d(cin, w, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
        if i < len(_WIDTHS) - 1:
            layers.append(nn.MaxPool2d(2))
        cin = w
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers)


class FeatureExtractor:
    """A frozen trunk in eval mode. ``embed`` validates canonical images and returns float32 [N, D]."""

    def __init__(self, trunk, id: str):
        import torch

        self.trunk = trunk.eval().to(memory_format=torch.channels_last)
        for p in self.trunk.parameters():
            p.requires_grad_(False)
        self.id = id
        self.dim = FEATURE_DIM
        self._torch = torch

    def embed(self, images) -> np.ndarray:
        from proxylab.retrieval.canonical import check_images

        x = check_images(images)
        torch = self._torch
        out = []
        with torch.no_grad():
            for start in range(0, x.shape[0], EMBED_CHUNK):
                # channels-last input runs the convolutions about 2x faster on CPU (query latency is mostly
                # this); outputs differ from NCHW by float rounding only (~1e-6)
                chunk = x[start:start + EMBED_CHUNK].contiguous(memory_format=torch.channels_last)
                out.append(self.trunk(chunk).numpy())
        return np.ascontiguousarray(np.concatenate(out).astype(np.float32))

    # ---- persistence ----
    def to_bytes(self) -> bytes:
        import torch

        # contiguous: the file keeps the NCHW layout whatever the in-memory one (its hash is the extractor's id)
        state = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in self.trunk.state_dict().items()}
        buf = io.BytesIO()
        torch.save({"format": "proxylab-extractor-1", "widths": list(_WIDTHS), "first_stride": _FIRST_STRIDE,
                    "state": state}, buf)
        return buf.getvalue()

    def save(self, path: PathLike) -> None:
        atomic_write_bytes(path, self.to_bytes())

    @classmethod
    def load(cls, path: PathLike) -> "FeatureExtractor":
        import torch

        path = Path(path)
        if not path.is_file():
            raise ProxylabError(f"feature extractor file {path} does not exist; rebuild the shipped one with "
                                "`python -m proxylab.retrieval.features --rebuild`")
        data = path.read_bytes()
        try:
            blob = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            if (blob.get("format") != "proxylab-extractor-1" or tuple(blob["widths"]) != _WIDTHS
                    or blob.get("first_stride") != _FIRST_STRIDE):
                raise ValueError("format or widths differ")
            trunk = _build_trunk()
            trunk.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in blob["state"].items()})
        except Exception as exc:  # any unreadable/mismatched file is the user's (or a stale file's) problem
            raise ProxylabError(f"{path} is not a proxylab feature extractor ({exc}); rebuild it with "
                                "`python -m proxylab.retrieval.features --rebuild`") from None
        # The id names the exact weights, so a signature records which extractor produced its features.
        return cls(trunk, id="fx-" + sha256_bytes(data)[:16])

    @classmethod
    @functools.lru_cache(maxsize=1)
    def default(cls) -> "FeatureExtractor":
        """The shipped extractor, loaded once per process (``FeatureExtractor.default.cache_clear()`` after a
        rebuild)."""
        return cls.load(SHIPPED_EXTRACTOR)


def default_sources() -> list:
    """The data the extractor may learn from: the zoo's SOURCE tasks (proxylab.retrieval.tasks), one head each.

    One head per source task (not per data set) means the extractor never sees a label that separates
    classes of two different source tasks (e.g. MNIST 1 vs 5), which is exactly what the held-out query
    tasks (odd digits, all classes, colour subsets) ask; the held-out shapes labellings (shape kind,
    position) are never used.
    """
    from proxylab.retrieval.tasks import SOURCE_TASKS

    return list(SOURCE_TASKS.values())


def load_source_images(sources: Sequence, split: str = "train", max_per_source: Optional[int] = None, seed: int = 0):
    """[(task name, canonical images, labels 0..C-1, C)] of each source task's `split` (seeded subset if capped)."""
    out = []
    for task in sources:
        x, y = task.data(split, limit=max_per_source, seed=seed)
        out.append((task.name, x, y.clone(), task.num_classes))
    return out


def train_extractor(sources: Optional[Sequence] = None, epochs: int = 10, seed: int = 0,
                    batch_size: int = 128, lr: float = 3e-3, max_per_source: Optional[int] = 2000,
                    progress: bool = True) -> Tuple[FeatureExtractor, Dict[str, float]]:
    """Train the trunk multi-task on source tasks' train splits (Task objects); returns it and calib accuracies.

    Deterministic for a given seed and thread count. Light augmentation (random 2-pixel shifts) keeps the
    features from memorising pixel positions, which matters because boundary samples are image blends.
    """
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    sources = list(default_sources() if sources is None else sources)
    if not sources:
        raise ProxylabError("train_extractor needs at least one source data set")
    seed_everything(seed)
    data = load_source_images(sources, "train", max_per_source=max_per_source, seed=seed)
    trunk = _build_trunk()
    heads = nn.ModuleList([nn.Linear(FEATURE_DIM, k) for _, _, _, k in data])
    params = list(trunk.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    steps_per_epoch = sum(-(-len(x) // batch_size) for _, x, _, _ in data)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        trunk.train()
        heads.train()
        # Interleave batches of all sources in one seeded order, so every step is single-task (own head).
        batches = []
        for s, (_, x, _, _) in enumerate(data):
            perm = torch.randperm(len(x), generator=gen)
            batches += [(s, perm[i:i + batch_size]) for i in range(0, len(x), batch_size)]
        order = torch.randperm(len(batches), generator=gen).tolist()
        total = 0.0
        for b in order:
            s, idx = batches[b]
            x, y = data[s][1][idx], data[s][2][idx]
            shift = torch.randint(-2, 3, (2,), generator=gen).tolist()
            x = torch.roll(x, shifts=shift, dims=(2, 3))
            loss = F.cross_entropy(heads[s](trunk(x)), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        if progress:
            print(f"extractor epoch {epoch + 1}/{epochs}: loss {total / len(order):.4f} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    trunk.eval()
    heads.eval()
    accs: Dict[str, float] = {}
    with torch.no_grad():
        for s, (name, x, y, _) in enumerate(load_source_images(sources, "calib")):
            accs[name] = float((heads[s](trunk(x)).argmax(1) == y).float().mean())
    fx = FeatureExtractor(trunk, id="unsaved")
    return fx, accs


def rebuild_shipped(path: PathLike = SHIPPED_EXTRACTOR, seed: int = 0, epochs: int = SHIPPED_EPOCHS,
                    max_per_source: Optional[int] = SHIPPED_MAX_PER_SOURCE) -> Dict[str, float]:
    """Retrain the shipped extractor from scratch (deterministic at one thread) and write it atomically."""
    import torch

    torch.set_num_threads(1)
    fx, accs = train_extractor(seed=seed, epochs=epochs, max_per_source=max_per_source)
    fx.save(path)
    FeatureExtractor.default.cache_clear()
    return accs


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rebuild", action="store_true", help="retrain and overwrite the shipped extractor")
    parser.add_argument("--out", default=str(SHIPPED_EXTRACTOR))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=SHIPPED_EPOCHS)
    parser.add_argument("--max-per-source", type=int, default=SHIPPED_MAX_PER_SOURCE,
                        help="training images per source task (a seeded draw of its train split)")
    args = parser.parse_args(argv)
    if not args.rebuild:
        parser.error("nothing to do: pass --rebuild")
    if args.epochs < 1 or args.max_per_source < 1:
        parser.error(f"--epochs and --max-per-source must be >= 1, got {args.epochs} and {args.max_per_source}")
    accs = rebuild_shipped(args.out, seed=args.seed, epochs=args.epochs, max_per_source=args.max_per_source)
    print("calib accuracy of the training heads:", {k: round(v, 4) for k, v in accs.items()})
    print(f"wrote {args.out} ({Path(args.out).stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
