"""Black-box models: the only view of a zoo model the retrieval method ever gets.

A model takes canonical images (see ``canonical``) and returns class probabilities; nothing else (no weights;
features only in the gray-box option below). A "call" is ONE image sent to a model, so every model-call budget
in proxylab counts images; ``BlackBoxModel.calls`` counts them, including images whose answer later fails
validation (they were sent).

Gray-box option: a model whose ``supports_features`` is True also answers ``features(images)``, the input of
its classifier layer [N, D] (counted as calls like predictions), and ``predict_with_features(images)``, both
answers from one pass. Only the optional LogME re-ranking (``rerank.rerank(method="logme")``) and the benchmark's
gray-box rows (``evaluate.evaluate_zoo``) ask for them; the index, the signatures and the LEEP/NCE re-ranking
never do.
``TorchBlackBox`` (and so ``CheckpointBlackBox``) supports it when the network has an ``nn.Linear``; an HTTP
model does not (the npz protocol carries probabilities only).

Adapters: ``TorchBlackBox`` (an in-process ``nn.Module`` mapping canonical images to logits),
``CheckpointBlackBox`` (a ``file.py:factory`` spec or a proxylab checkpoint folder) and ``HTTPBlackBox``
(a user's own model server speaking the npz protocol that ``model_server.serve_model`` implements).
"""
from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, List, Optional

import numpy as np

from proxylab.errors import ProxylabError, network_errors
from proxylab.utils import npz_bytes, read_npz
from proxylab.retrieval.canonical import check_images

PROB_TOLERANCE = 1e-3


def check_probabilities(p: Any, n: int, num_classes: int, source: str = "model", quote: bool = True) -> np.ndarray:
    """Validate a model's answer for `n` images: float32 [n, num_classes], finite, >= 0, rows summing to 1.

    ``quote=False`` keeps the answer's values out of the messages (the service calling URLs its clients chose:
    an error must not read a server's content back to the client)."""
    try:
        if isinstance(p, np.ndarray) and p.dtype.kind not in "biuf":  # e.g. strings that would parse as numbers
            raise TypeError
        arr = np.asarray(p, dtype=np.float64)
    except (TypeError, ValueError):
        raise ProxylabError(f"{source} returned {type(p).__name__} values that are not numbers; "
                            "a model must return class probabilities") from None
    if arr.shape != (n, num_classes):
        raise ProxylabError(f"{source} returned probabilities of shape {list(arr.shape)}, expected [{n}, {num_classes}] "
                            f"(one row of {num_classes} class probabilities per image)")
    if not np.isfinite(arr).all():
        raise ProxylabError(f"{source} returned NaN or inf probabilities")
    if (arr < 0).any():
        shown = f" (min {arr.min():.4g})" if quote else ""
        raise ProxylabError(f"{source} returned negative probabilities{shown}; apply a softmax to its logits")
    sums = arr.sum(axis=1)
    bad = np.abs(sums - 1.0) > PROB_TOLERANCE
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        shown = f" (row {i} sums to {sums[i]:.6g})" if quote else ""
        raise ProxylabError(f"{source} returned rows that do not sum to 1{shown}; "
                            "a model must return class probabilities, e.g. softmax(logits)")
    return arr.astype(np.float32)


def check_features(f: Any, n: int, source: str = "model") -> np.ndarray:
    """Validate a model's features for `n` images: a finite float array [n, D] with D >= 1 (float64 copy)."""
    try:
        arr = np.asarray(f, dtype=np.float64)
    except (TypeError, ValueError):
        raise ProxylabError(f"{source} returned features that are not numbers") from None
    if arr.ndim != 2 or arr.shape[0] != n or arr.shape[1] < 1:
        raise ProxylabError(f"{source} returned features of shape {list(arr.shape)}, expected [{n}, D] "
                            "(one row per image)")
    if not np.isfinite(arr).all():
        raise ProxylabError(f"{source} returned NaN or inf features")
    return arr


def penultimate_features(module, images, batch_size: int = 256) -> np.ndarray:
    """The input of the network's LAST nn.Linear (the classifier) for every image: float64 [N, D].

    "Last" is the last one registered (``module.modules()`` order), which is the classifier in every zoo and
    timm network. The hook keeps only the passes of the calling thread, so a prediction running at the same time
    in another thread (a model server) adds nothing to the captured rows."""
    return classifier_pass(module, images, batch_size, keep_outputs=False)[1]


def classifier_pass(module, images, batch_size: int = 256, keep_outputs: bool = True):
    """(outputs, features) of ONE eval-mode, no-grad pass: the module's output tensors of every batch concatenated
    (None when not `keep_outputs`) and ``penultimate_features``' float64 [N, D] array, so a caller that needs both
    never runs the network twice."""
    import torch
    import torch.nn as nn

    from proxylab.nets.hooks import measuring

    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ProxylabError(f"{type(module).__name__} has no nn.Linear classifier whose input could serve as features")
    head = linears[-1]
    captured: List[torch.Tensor] = []
    outputs = []
    me = threading.get_ident()

    def keep(_m, inputs, _out):
        if threading.get_ident() == me:
            captured.append(inputs[0].detach().flatten(1))

    with measuring(module, [head.register_forward_hook(keep)]):
        for i in range(0, len(images), batch_size):
            out = module(images[i:i + batch_size])
            if keep_outputs:
                outputs.append(out)
    if not captured:
        raise ProxylabError(f"the last nn.Linear of {type(module).__name__} was never called in its forward pass, so "
                            "it is not the classifier whose input could serve as features")
    features = torch.cat(captured).double().cpu().numpy()
    if not keep_outputs:
        return None, features
    if len(outputs) == 1:
        return outputs[0], features
    try:
        return torch.cat(outputs), features
    except (TypeError, RuntimeError) as e:  # outputs that are not tensors, or whose shapes do not stack
        raise ProxylabError(f"{type(module).__name__} must return one logits tensor [N, K] per batch: its batches' "
                            f"outputs do not join ({e})") from None


class BlackBoxModel(ABC):
    """predict_proba(images) -> float32 [N, num_classes]; `calls` counts images sent so far.

    Subclasses set ``num_classes`` and implement ``_predict(x)`` for one batch of validated canonical images
    (a CPU float32 tensor); the base class validates inputs, batches, counts and checks every answer.
    """

    num_classes: int
    name: str = ""
    batch_size: int = 256
    quotes_answers = True  # whether answer-check errors may show the answer's values (see check_probabilities)
    supports_features = False  # gray-box: whether features() answers (module doc)

    def __init__(self) -> None:
        self.calls = 0
        self._count_lock = threading.Lock()  # a model served over HTTP is called from several threads

    @abstractmethod
    def _predict(self, x) -> np.ndarray:
        """Probabilities for one batch of canonical images (validated by the caller)."""

    def describe(self) -> str:
        return f"model '{self.name}'" if self.name else f"{type(self).__name__}"

    def _batched(self, images, answer):
        """`answer(batch, n) -> checked array` (or a tuple of them) over batches of the validated images, each image
        counted as sent; the answers joined over batches (a tuple of joined arrays for tuple answers)."""
        x = check_images(images)
        out = []
        for start in range(0, x.shape[0], self.batch_size):
            batch = x[start:start + self.batch_size]
            with self._count_lock:
                self.calls += int(batch.shape[0])
            out.append(answer(batch, int(batch.shape[0])))
        if isinstance(out[0], tuple):  # several answers per batch (predict_with_features)
            return tuple(np.concatenate(parts, axis=0) for parts in zip(*out))
        return np.concatenate(out, axis=0)

    def predict_proba(self, images) -> np.ndarray:
        return self._batched(images, lambda batch, n: check_probabilities(
            self._predict(batch), n, self.num_classes, source=self.describe(), quote=self.quotes_answers))

    def _features(self, x) -> np.ndarray:
        """Features of one batch of canonical images (validated by the caller); only when supports_features."""
        raise NotImplementedError

    def features(self, images) -> np.ndarray:
        """Gray-box: float64 [N, D] features of the images (the classifier layer's input), counted as calls.
        A model that does not expose features raises before anything is sent."""
        self._require_features()
        return self._batched(images, lambda batch, n: check_features(self._features(batch), n,
                                                                     source=self.describe()))

    def _predict_with_features(self, x):
        """(probabilities, features) of one batch from ONE pass; only when supports_features. A subclass that can
        answer both at once (TorchBlackBox) overrides it."""
        raise NotImplementedError

    def predict_with_features(self, images):
        """Gray-box: ``(predict_proba(images), features(images))``, both checked as those two methods check them.
        From one pass, each image counted once, when the subclass overrides ``_predict_with_features``; otherwise
        the two calls, each image counted twice (it is sent twice)."""
        self._require_features()
        if type(self)._predict_with_features is BlackBoxModel._predict_with_features:
            return self.predict_proba(images), self.features(images)
        return self._batched(images, lambda batch, n: self._checked_pair(self._predict_with_features(batch), n))

    def _checked_pair(self, pair, n: int):
        probs, feats = pair
        return (check_probabilities(probs, n, self.num_classes, source=self.describe(), quote=self.quotes_answers),
                check_features(feats, n, source=self.describe()))

    def _require_features(self) -> None:
        if not self.supports_features:
            raise ProxylabError(f"{self.describe()} exposes no features (it answers probabilities only): re-rank it "
                                "with leep or nce, or give a model whose network ends in an nn.Linear")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, num_classes={self.num_classes}, calls={self.calls})"


def forward_errors(what: str):
    """A network that fails on canonical images says what it was given and what it must take instead
    (ModelForwardError: a model server answers 500 for it)."""
    return network_errors(lambda cause: f"{what} failed on canonical images [N, 3, 32, 32] with pixels in [0, 1] "
                                        f"({cause}): a model must take 3-channel 32x32 images and normalise them "
                                        "inside itself (a `proxylab train` checkpoint of a 1-channel or 28 px data "
                                        "set cannot: train it on e.g. --data 'digits@32px,3ch')", ModelForwardError)


class ModelForwardError(ProxylabError):
    """The model's own forward pass failed on valid canonical images (a model server answers 500, not 400)."""


def _infer_num_classes(module) -> int:
    """Width of the module's output on one blank canonical image (white-box setup, not a counted call)."""
    import torch

    from proxylab.retrieval.canonical import IMAGE_SHAPE

    with torch.no_grad(), forward_errors(type(module).__name__):
        out = module(torch.zeros((1, *IMAGE_SHAPE)))
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        raise ProxylabError("the module must map images [N, 3, 32, 32] to logits [N, K]; "
                            f"it returned {type(out).__name__} of shape {list(getattr(out, 'shape', []))}")
    return int(out.shape[1])


class TorchBlackBox(BlackBoxModel):
    """An in-process nn.Module that maps canonical images to logits; softmax applied, eval mode, no_grad."""

    def __init__(self, module, num_classes: Optional[int] = None, batch_size: int = 256, name: str = "",
                 device: str = "cpu"):
        import torch.nn as nn

        super().__init__()
        if not isinstance(module, nn.Module):
            raise ProxylabError(f"TorchBlackBox needs a torch.nn.Module, got {type(module).__name__}")
        if int(batch_size) < 1:
            raise ProxylabError(f"batch_size must be >= 1, got {batch_size}")
        self.module = module.to(device).eval()
        self.device = device
        self.batch_size = int(batch_size)
        self.name = name
        self.num_classes = int(num_classes) if num_classes is not None else _infer_num_classes(self.module)
        if self.num_classes < 2:
            raise ProxylabError(f"a classifier needs at least 2 classes, got num_classes={self.num_classes}")
        self.supports_features = any(isinstance(m, nn.Linear) for m in self.module.modules())

    def _predict(self, x) -> np.ndarray:
        import torch

        with torch.no_grad(), forward_errors(self.describe()):
            logits = self.module(x.to(self.device))
        return self._softmax(logits)

    def _softmax(self, logits) -> np.ndarray:
        import torch

        if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
            raise ProxylabError(f"{self.describe()} must return logits [N, K], got {type(logits).__name__} "
                                f"of shape {list(getattr(logits, 'shape', []))}")
        return torch.softmax(logits.float(), dim=1).cpu().numpy()

    def _features(self, x) -> np.ndarray:
        with forward_errors(self.describe()):
            return penultimate_features(self.module, x.to(self.device), batch_size=max(int(x.shape[0]), 1))

    def _predict_with_features(self, x):
        with forward_errors(self.describe()):
            logits, feats = classifier_pass(self.module, x.to(self.device), batch_size=max(int(x.shape[0]), 1))
        return self._softmax(logits), feats


class CheckpointBlackBox(TorchBlackBox):
    """A network from a ``path/file.py:factory`` spec (+ optional state_dict `weights`) or a proxylab checkpoint
    folder (weights.pt + config.json). The network must take canonical images (normalising inside itself)."""

    def __init__(self, spec: str, weights=None, num_classes: Optional[int] = None, batch_size: int = 256,
                 name: str = "", device: str = "cpu"):
        path = Path(str(spec))
        if path.is_dir() and (path.parent.parent / "zoo.json").is_file() and path.parent.name == "models":
            zoo = path.parent.parent
            raise ProxylabError(f"'{spec}' is a model of the zoo '{zoo}', not a checkpoint: give it as --zoo {zoo} "
                                f"--model {path.name} (Python: load_zoo('{zoo}').blackbox(model id))")
        if path.exists():
            from proxylab.nets.checkpoint import load_checkpoint

            if weights is not None:
                raise ProxylabError(f"'{spec}' is a checkpoint that holds its own weights; pass weights only with a "
                                    "file.py:factory spec")
            module, config = load_checkpoint(path)
            module = _canonical_checkpoint(module, config, str(spec))
            if num_classes is None and "num_classes" in config:
                num_classes = int(config["num_classes"])
        elif ":" in str(spec):
            from proxylab.nets.user import load_user_network, warn_if_untrained

            warn_if_untrained(str(spec), weights)
            module = load_user_network(str(spec), weights=weights)
        else:
            raise ProxylabError(f"'{spec}' is neither a checkpoint folder nor a path/to/file.py:factory spec")
        super().__init__(module, num_classes=num_classes, batch_size=batch_size, name=name or str(spec), device=device)


def _canonical_checkpoint(module, config, spec: str):
    """A proxylab checkpoint's network, taking canonical images: `proxylab train` trains on images normalised with
    the train split's per-channel mean/std (recorded in its config; for a checkpoint written before they were,
    recomputed from its data set and seed), so that normalisation is put in front of the network. A `factory`
    config, or one with neither, is a network that takes canonical images itself, as the class doc asks. Wrong
    input channels or size are refused here, before any image is sent."""
    from proxylab.retrieval.canonical import IMAGE_SHAPE
    from proxylab.retrieval.zoo import canonical_net

    channels, size = config.get("in_channels"), config.get("image_size")
    if (channels is not None and int(channels) != IMAGE_SHAPE[0]) or (size is not None and int(size) != IMAGE_SHAPE[1]):
        base = str(config.get("data", "DATA")).split("@")[0]
        raise ProxylabError(f"checkpoint '{spec}' takes {channels}-channel {size} px images, but models are sent "
                            f"canonical 3-channel 32 px images: retrain it on 3-channel 32 px data (`proxylab "
                            f"train ... --data '{base}@32px,3ch'`)")
    if "factory" in config:  # a user's network: it takes canonical images itself (the class doc)
        return module
    if "mean" in config and "std" in config:
        return canonical_net(module, config["mean"], config["std"])
    if "data" in config:
        from proxylab.data import get_dataset

        ds = get_dataset(str(config["data"]), seed=int(config.get("seed", 0)))
        return canonical_net(module, ds.mean, ds.std)
    return module


def _error_text(body: bytes) -> str:
    try:
        return str(json.loads(body.decode("utf-8")).get("error", "")) or body[:200].decode("utf-8", "replace")
    except (ValueError, AttributeError, UnicodeDecodeError):
        return body[:200].decode("utf-8", "replace")


class HTTPBlackBox(BlackBoxModel):
    """A model behind HTTP: GET {url}/info -> {"num_classes": K, "name": ...};
    POST {url}/predict with npz bytes {"images": float32 [N,3,32,32]} -> npz bytes {"probs": float32 [N,K]}."""

    def __init__(self, url: str, num_classes: Optional[int] = None, timeout: float = 30.0, batch_size: int = 256,
                 name: str = ""):
        super().__init__()
        if not str(url).startswith(("http://", "https://")):
            raise ProxylabError(f"model URL '{url}' must start with http:// or https://")
        self.url = str(url).rstrip("/")
        self.timeout = float(timeout)
        self.batch_size = int(batch_size)
        info = self._info()
        try:
            served = int(info["num_classes"])
        except (KeyError, TypeError, ValueError):
            raise ProxylabError(f"{self.url}/info must return JSON with an integer 'num_classes', got {info!r}") from None
        if num_classes is not None and int(num_classes) != served:
            raise ProxylabError(f"the model at {self.url} serves {served} classes, but num_classes={num_classes} was given")
        self.num_classes = served
        self.name = name or str(info.get("name") or self.url)

    def _request(self, path: str, data: Optional[bytes] = None) -> bytes:
        req = urllib.request.Request(self.url + path, data=data, method="POST" if data is not None else "GET",
                                     headers={"Content-Type": "application/octet-stream"} if data is not None else {})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.read()
        except urllib.error.HTTPError as e:
            raise ProxylabError(f"model server {self.url}{path} answered HTTP {e.code}: {_error_text(e.read())}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise ProxylabError(f"cannot reach the model server at {self.url} ({reason}); is it running?") from None

    def _info(self) -> dict:
        body = self._request("/info")
        try:
            info = json.loads(body.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            raise ProxylabError(f"{self.url}/info did not return JSON") from None
        if not isinstance(info, dict):
            raise ProxylabError(f"{self.url}/info must return a JSON object, got {type(info).__name__}")
        return info

    def _predict(self, x) -> np.ndarray:
        body = self._request("/predict", npz_bytes(images=x.numpy().astype(np.float32, copy=False)))
        arrays = read_npz(body, f"the answer of {self.url}/predict")
        if "probs" not in arrays:
            raise ProxylabError(f"{self.url}/predict answered an npz without a 'probs' array")
        return arrays["probs"]
