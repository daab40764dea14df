"""Known proxies from the literature, registered by name in KNOWN_PROXIES.

Sign convention: higher score = the configuration is predicted to be more accurate. Sensitivity measures
(a bigger perturbation is worse) are therefore negated. "Bit-weighted" follows EMQ's baselines: a
zero-cost saliency, which alone would be constant over bit configurations, is multiplied per layer by the
layer's bit-width. All but ``ompq`` and ``synflow`` are formulas in the proxy language, so they print, parse
and hash like any searched proxy; ``ompq`` needs cross-layer statistics and ``synflow`` a float64 statistic of
a differently linearized network (both from ``proxylab.stats.extras``), so they are written out below.
"""
from __future__ import annotations

import hashlib
import math

import numpy as np
import torch

from proxylab.proxy.core import BaseProxy, Proxy
from proxylab.proxy.errors import InvalidProxy
from proxylab.proxy.evaluate import bits_to_columns
from proxylab.proxy.parse import parse_node
from proxylab.registry import Registry

KNOWN_PROXIES = Registry("known proxy")


# Where a paper sums over a layer's n weights, these formulas write n x mean (sum|G*W| = params x mean|G*W|).
# proxylab's `params` is the size convention's count, which also holds the layer's bias and folded BatchNorm: it
# exceeds the weight count by a median 1% on ResNet-20 and 8% on MobileNetV2 (up to 22% and 25%, on stems and
# depthwise layers). The figures proxylab reports are those of the formulas as written here.
def _formula(name: str, formula: str, source: str) -> None:
    proxy = Proxy(parse_node(formula), name=name, source=source)
    KNOWN_PROXIES.add(name, proxy, help=source)


_formula(
    "bparams",
    "sum_layers(smul(bits, params))",
    "BParams, EMQ's baseline (Dong et al., ICCV 2023): bit-weighted parameter count = model size in bits; "
    "bigger predicts more accurate.",
)
_formula(
    "hawq",
    "sum_layers(sneg(smul(heig, smul(norm(Q), norm(Q)))))",
    "HAWQ (Dong et al., ICCV 2019): top Hessian eigenvalue x quantization perturbation ||W - Q_b(W)||^2, summed "
    "over layers, negated (less perturbation of sharp layers predicts more accurate).",
)
_formula(
    "hawqv2",
    "sum_layers(sneg(smul(sdiv(htrace, params), smul(norm(Q), norm(Q)))))",
    "HAWQ-V2 (Dong et al., NeurIPS 2020): average Hessian trace Tr(H)/n x ||W - Q_b(W)||^2, summed over layers, "
    "negated.",
)
_formula(
    "qe",
    "sum_layers(smul(params, ssub(slog(norm(W)), slog(norm(Q)))))",
    "Quantization entropy, after QE (Sun et al., NeurIPS 2022) and EMQ's qe baseline: the information the b-bit "
    "weights keep, n * log(||W|| / ||W - Q_b(W)||) nats per layer (rate-distortion of the weight signal against "
    "its quantization noise), summed; higher keeps more. Not the MAE-DET forward score EMQ ships, which needs a "
    "quantized forward pass per configuration.",
)
_formula(
    "snip",
    "sum_layers(smul(bits, smul(params, mean(abs(mul(G, W))))))",
    "Bit-weighted SNIP (Lee et al., ICLR 2019; EMQ's bsnip): sum over layers of b * sum|dL/dW * W|.",
)
_formula(
    "fisher",
    "sum_layers(smul(bits, smul(params, mean(F))))",
    "Bit-weighted Fisher (Theis et al. 2018; zero-cost NAS, Abdelfattah et al., ICLR 2021): sum over layers of "
    "b * sum of the empirical Fisher diagonal.",
)
_formula(
    "fit",
    "sum_layers(sneg(smul(params, mean(mul(F, pow2(Q))))))",
    "FIT (Zandonati et al., 2022): Fisher-weighted quantization noise sum F * (W - Q_b(W))^2, negated.",
)
_formula(
    "grad_norm",
    "sum_layers(smul(bits, norm(G)))",
    "Bit-weighted grad_norm (Abdelfattah et al., ICLR 2021): sum over layers of b * ||dL/dW||.",
)
_formula(
    "emq",
    "mean_layers(smul(mean(softmax(abslog(bV))), mean(sqrt(relu(bW)))))",
    "EMQ's published genotype (Dong et al., ICCV 2023; rank script, labelled 76.35%): inputs virtual gradient and "
    "weight, ops [[abslog, softmax], [relu, sqrt], product], mean over layers.",
)


def _common_acts(stats) -> list:
    """Each layer's output flattened per image, on the images every layer kept (the leading ones)."""
    acts = [stats.tensor(l, "act") for l in range(len(stats.layer_names))]
    n = min(a.shape[0] for a in acts)
    if n < 3:
        raise InvalidProxy(
            stats.layer_names[int(np.argmin([a.shape[0] for a in acts]))], "ompq",
            f"orthogonality needs activations of at least 3 images, the stats kept {n}: recompute them with more "
            "activation images",
        )
    return [a[:n].reshape(n, -1).to(torch.float64) for a in acts]


OMPQ_SOURCES = ("gram", "act")


def _grams(stats, source: str = "gram") -> list:
    """X_l X_l^T per layer [n, n] float64. source "gram": over the whole batch, from the stats extras
    (compute_stats makes them; stats without extras fall back to "act"); "act": from the images ``act`` kept."""
    if source == "gram" and "gram" in stats.extras:
        grams = [stats.gram(l).to(torch.float64) for l in range(len(stats.layer_names))]
        if grams[0].shape[0] < 3:
            raise InvalidProxy(stats.layer_names[0], "ompq",
                               f"orthogonality needs at least 3 images, the batch had {grams[0].shape[0]}")
        return grams
    return [x @ x.T for x in _common_acts(stats)]


class _NamedKnown(BaseProxy):
    """A known proxy with no formula in the language: printed, parsed and hashed by its registered name
    (``variant`` tells apart versions of it that score differently)."""

    name = ""
    variant = ""

    @property
    def hash(self) -> str:
        return hashlib.sha256(f"known:{self.name}{self.variant}".encode()).hexdigest()

    @property
    def formula(self) -> str:
        return self.name

    def __str__(self) -> str:
        return self.name


class OMPQ(_NamedKnown):
    """OMPQ (Ma et al., AAAI 2023), bit-weighted as in EMQ's baseline.

    Definition (proxylab): for each layer l, X_l is its output on the calibration batch's n images (64 by
    default), flattened per image; K_l = X_l X_l^T is centred (H K H); the orthogonality between layers is
    linear CKA, c(l, j) = <K_l, K_j>_F / (||K_l||_F ||K_j||_F); gamma_l = sum over j != l of c(l, j) (how
    redundant layer l's features are with the others'); the layer's importance is exp(-gamma_l) (OMPQ's e^{-x}
    with beta = 1); the score is mean over layers of exp(-gamma_l) * b_l. Higher predicts more accurate.
    ``source="gram"`` (default, the registered known proxy and the ompq allocator) takes the Gram matrices
    from ``stats.gram`` (all n images); stats without them fall back to ``source="act"``: the few images the
    ``act`` tensor kept (at least 3 needed; 2 on ResNet-20, hence the NaN this proxy used to be), which is
    what every OMPQ figure computed before the stats extras existed used.
    """

    def __init__(self, source: str = "gram"):
        if source not in OMPQ_SOURCES:
            raise ValueError(f"OMPQ source must be one of {OMPQ_SOURCES}, got {source!r}")
        self.source_kind = source
        self.variant = "" if source == "gram" else ":act"

    name = "ompq"
    aggregator = "mean_layers"
    source = (
        "OMPQ (Ma et al., AAAI 2023), bit-weighted like EMQ's baseline: mean over layers of exp(-gamma_l) * b_l, "
        "gamma_l = sum of linear-CKA similarities of layer l's outputs with every other layer's (over the "
        "calibration batch)."
    )

    def __repr__(self) -> str:
        return f"OMPQ(source={self.source_kind!r})"

    def importance(self, stats) -> np.ndarray:
        """exp(-gamma_l) per layer, all layers' Gram matrices compared in one matrix product."""
        raw = _grams(stats, self.source_kind)
        n = raw[0].shape[0]
        centre = torch.eye(n, dtype=torch.float64) - 1.0 / n
        grams = torch.stack([centre @ k @ centre for k in raw]).reshape(len(raw), -1)
        norms = torch.linalg.vector_norm(grams, dim=1)
        zero = torch.nonzero(norms == 0)
        if len(zero):
            raise InvalidProxy(stats.layer_names[int(zero[0])], "ompq", "the layer's outputs are constant over images")
        unit = grams / norms[:, None]
        sim = unit @ unit.T
        gamma = sim.sum(dim=1) - sim.diagonal()
        return torch.exp(-gamma).numpy()

    def layer_table(self, stats, dtype=torch.float64, threads=1) -> np.ndarray:
        imp = self.importance(stats)
        return imp[:, None] * np.asarray(stats.bit_choices, dtype=np.float64)[None, :]

    def score_naive(self, stats, bits_row) -> float:
        """From scratch with numpy, one pair of layers at a time (the oracle for ``layer_table``)."""
        bits = np.asarray(bits_row).ravel()
        bits_to_columns(bits[None], stats.bit_choices, stats.layer_names)  # same validation as the fast path

        def centred(k):
            return k - k.mean(0)[None, :] - k.mean(1)[:, None] + k.mean()

        grams = [centred(k.numpy()) for k in _grams(stats, self.source_kind)]
        total = 0.0
        for l, kl in enumerate(grams):
            gamma = 0.0
            for j, kj in enumerate(grams):
                if j != l:
                    gamma += float((kl * kj).sum() / (np.linalg.norm(kl) * np.linalg.norm(kj)))
            total += math.exp(-gamma) * float(bits[l])
        return total / len(grams)


def _synflow_logs(stats) -> np.ndarray:
    """log(params * mean|V * W|) per layer: the float64 extras when present, else from the float32 ``V``."""
    if "synflow_log" in stats.extras:
        return stats.synflow_log()
    from proxylab.stats.extras import synflow_logs_from

    layers = range(len(stats.layer_names))
    return np.array(synflow_logs_from([stats.tensor(l, "weight") for l in layers],
                                      [stats.tensor(l, "virtual_grad") for l in layers], stats.params),
                    dtype=np.float64)


class SynFlow(_NamedKnown):
    """Bit-weighted SynFlow (Tanaka et al., NeurIPS 2020; EMQ's bsynflow): sum over layers of
    b_l * params_l * mean|V_l * W_l|, V the virtual gradient (all-ones input, sum of logits) of the network with
    every affine map made positive. Bounded activations (ReLU6) are taken as ReLUs there, as SynFlow assumes
    (see proxylab.stats.collect.synflow_grads: kept as ReLU6, MobileNetV2's gradient is zero below the head).

    The saliencies arrive as logs and are divided by the largest one, exp(s_l - max s): one positive factor
    for every configuration, so ranks are those of the raw sum while nothing overflows or underflows.
    Equal, up to that factor and float32 rounding of V, to the formula
    sum_layers(smul(bits, smul(params, mean(abs(mul(V, W)))))). Higher predicts more accurate.
    """

    name = "synflow"
    aggregator = "sum_layers"
    source = (
        "Bit-weighted SynFlow (Tanaka et al., NeurIPS 2020; EMQ's bsynflow): sum over layers of b * sum|V * W| with V "
        "the virtual gradient (all-ones input, sum of logits, positive-linearized float64 network, ReLU6 as ReLU)."
    )

    def __repr__(self) -> str:
        return "SynFlow()"

    def saliency(self, stats) -> np.ndarray:
        """exp(s_l - max s) per layer [L]; InvalidProxy when a value is NaN/+inf or every layer is zero."""
        logs = _synflow_logs(stats)
        bad = np.flatnonzero(np.isnan(logs) | (logs == np.inf))
        if len(bad):
            raise InvalidProxy(stats.layer_names[int(bad[0])], "synflow", f"log saliency is {logs[bad[0]]}")
        if not np.isfinite(logs).any():
            raise InvalidProxy(stats.layer_names[0], "synflow", "every layer's virtual gradient is zero")
        return np.exp(logs - logs[np.isfinite(logs)].max())

    def layer_table(self, stats, dtype=torch.float64, threads=1) -> np.ndarray:
        return self.saliency(stats)[:, None] * np.asarray(stats.bit_choices, dtype=np.float64)[None, :]

    def score_naive(self, stats, bits_row) -> float:
        """Per configuration, in the log domain: log-sum-exp of log b_l + s_l, minus the largest s."""
        bits = np.asarray(bits_row).ravel()
        bits_to_columns(bits[None], stats.bit_choices, stats.layer_names)
        logs = _synflow_logs(stats)
        top = logs[np.isfinite(logs)].max()
        terms = [math.log(float(b)) + s - top for b, s in zip(bits, logs) if np.isfinite(s)]
        peak = max(terms)
        return math.exp(peak) * sum(math.exp(t - peak) for t in terms)


KNOWN_PROXIES.add("ompq", OMPQ(), help=OMPQ.source)
KNOWN_PROXIES.add("synflow", SynFlow(), help=SynFlow.source)
