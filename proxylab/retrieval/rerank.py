"""Training-free transferability estimators and the second retrieval stage that uses them.

N target samples, Cs source classes, Ct target classes, D feature dims.
- ``leep(probs, labels)`` (Nguyen et al. 2020): black-box, needs only the source model's probabilities.
- ``nce(probs, labels)`` (Tran et al. 2019): -H(Y|Z) with Z the source model's argmax.
- ``logme(features, labels)`` (You et al. 2021): mean over target classes of the Bayesian linear regression
  log evidence / N, at the (alpha, beta) its fixed-point iteration converges to (gray-box: features).
- ``hscore(features, labels)`` (Bao et al. 2019): tr(cov(f)^+ cov(E[f|y])).
- ``rerank(hits, get_model, images, labels, method)``: re-score the index's top-k with LEEP or NCE (one
  black-box pass per model), or with LogME when every re-ranked model exposes features (gray-box:
  ``BlackBoxModel.supports_features``; one features pass per model), and report the calls (images) spent.
  The top-k is ordered by the estimator alone: fusing the index score into that order (z(index) + W z(estimator))
  was validated against it on train models and calib queries and did not beat it by the margin fixed before the
  run (benchmarks/retrieval_rerank_validation.py, which holds ``fuse_scores``), so it is not used; nor is
  z(LEEP) + z(NCE), which won on one set of validation queries and lost on fresh ones.

Labels may be any integers; only which samples share a label matters, so they are compacted to 0..Ct-1.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Dict, List, Sequence, Tuple

import numpy as np

from proxylab.errors import ProxylabError
from proxylab.registry import Registry


def _labels(labels: Any, n: int) -> Tuple[np.ndarray, int]:
    """Labels compacted to 0..Ct-1, validated against the number of samples."""
    y = np.asarray(labels)
    if y.ndim != 1 or y.shape[0] != n:
        raise ProxylabError(f"labels must be a 1-D array with one label per sample ({n}), got shape {list(y.shape)}")
    if n == 0:
        raise ProxylabError("no samples given: a transferability score needs labelled samples")
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.bool_)):
        if not (np.issubdtype(y.dtype, np.floating) and np.isfinite(y).all() and (y == np.round(y)).all()):
            raise ProxylabError(f"labels must be integers, got dtype {y.dtype}")
    classes, compact = np.unique(y, return_inverse=True)
    if classes.size < 2:
        raise ProxylabError(f"labels hold a single class ({classes[0]!r}): give samples of at least 2 classes")
    return compact.astype(np.int64), int(classes.size)


def _probs(probs: Any) -> np.ndarray:
    from proxylab.retrieval.blackbox import check_probabilities

    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ProxylabError(f"probabilities must be [N, source classes], got shape {list(p.shape)}")
    check_probabilities(p, p.shape[0], p.shape[1], source="probabilities")
    return p  # validated; kept in float64 (check_probabilities returns a float32 copy)


def _features(features: Any) -> np.ndarray:
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[1] == 0:
        raise ProxylabError(f"features must be [N, D], got shape {list(f.shape)}")
    if not np.isfinite(f).all():
        raise ProxylabError("features hold NaN or inf")
    return f


def leep(probs: Any, labels: Any) -> float:
    """LEEP = (1/N) sum_i log sum_z P(y_i | z) theta(x_i)_z with the empirical joint P(y, z)."""
    theta = _probs(probs)
    y, ct = _labels(labels, theta.shape[0])
    n = theta.shape[0]
    joint = np.zeros((ct, theta.shape[1]))
    np.add.at(joint, y, theta)  # row y accumulates theta of the samples labelled y
    joint /= n
    pz = joint.sum(axis=0)
    # a source class no sample puts mass on has P(z) = 0; its column never contributes (theta_z = 0 there)
    cond = np.divide(joint, pz, out=np.zeros_like(joint), where=pz > 0)
    eep = (theta * cond[y]).sum(axis=1)
    return float(np.mean(np.log(eep)))


def nce(probs: Any, labels: Any) -> float:
    """NCE = -H(Y | Z) = sum_{y,z} P(y, z) log P(y | z), Z = argmax of the source model's probabilities."""
    theta = _probs(probs)
    y, ct = _labels(labels, theta.shape[0])
    z = theta.argmax(axis=1)
    joint = np.zeros((ct, theta.shape[1]))
    np.add.at(joint, (y, z), 1.0)
    joint /= theta.shape[0]
    pz = joint.sum(axis=0, keepdims=True)
    nz = joint > 0
    return float(np.sum(joint[nz] * np.log((joint / np.where(pz > 0, pz, 1.0))[nz])))


@dataclass
class LogMEResult:
    score: float                 # mean over target classes of evidence / N
    alpha: np.ndarray            # [Ct] converged prior precision per class column
    beta: np.ndarray             # [Ct] converged noise precision per class column
    evidence: np.ndarray         # [Ct] log evidence per class column (not divided by N)
    iterations: np.ndarray       # [Ct] fixed-point steps taken


def logme_details(features: Any, labels: Any, tol: float = 1e-6, max_iter: int = 300) -> LogMEResult:
    """LogME with its per-class internals. One SVD of F, then per class column y (one-hot of a class) the
    evidence-maximising fixed point gamma = sum b s_i/(a + b s_i), a = gamma/|m|^2, b = (N-gamma)/|Fm-y|^2
    (s_i eigenvalues of F^T F, m the posterior mean); evidence
    L = D/2 log a + N/2 log b - N/2 log 2pi - b/2 |Fm - y|^2 - a/2 |m|^2 - 1/2 log|a I + b F^T F|."""
    f = _features(features)
    y, ct = _labels(labels, f.shape[0])
    n, d = f.shape
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    sig = s ** 2  # nonzero eigenvalues of F^T F (the other d - r are zero)
    alphas, betas, evid, iters = (np.zeros(ct) for _ in range(4))
    log_a_term = d - sig.size  # eigenvalues of F^T F that are zero contribute log(a) each to log|A|

    def evidence(a: float, b: float, z2: np.ndarray, outside: float) -> float:
        denom = a + b * sig
        m2 = float(np.sum(b ** 2 * sig * z2 / denom ** 2))        # |m|^2
        res2 = float(np.sum((a / denom) ** 2 * z2)) + outside     # |Fm - t|^2
        logdet = float(np.sum(np.log(denom))) + log_a_term * np.log(a)
        return (d / 2 * np.log(a) + n / 2 * np.log(b) - n / 2 * np.log(2 * np.pi)
                - b / 2 * res2 - a / 2 * m2 - 0.5 * logdet)

    for c in range(ct):
        t = (y == c).astype(np.float64)
        z = u.T @ t                       # t in the left singular basis
        z2 = z ** 2
        outside = max(float(t @ t - z2.sum()), 0.0)  # the part of t no linear map of F reaches
        a, b = 1.0, 1.0
        last = evidence(a, b, z2, outside)
        for it in range(1, max_iter + 1):
            denom = a + b * sig
            gamma = float(np.sum(b * sig / denom))
            m2 = float(np.sum(b ** 2 * sig * z2 / denom ** 2))
            res2 = float(np.sum((a / denom) ** 2 * z2)) + outside
            a_new = gamma / max(m2, 1e-300)
            b_new = (n - gamma) / max(res2, 1e-300)
            step = abs(a_new - a) / a < tol and abs(b_new - b) / b < tol
            a, b = a_new, b_new
            current = evidence(a, b, z2, outside)
            # When F interpolates t (N <= D) beta grows without bound while the evidence converges to its
            # supremum; so a settled evidence also ends the iteration.
            if step or abs(current - last) < tol * 1e-3 * n:
                last = current
                break
            last = current
        evid[c], alphas[c], betas[c], iters[c] = last, a, b, it
    return LogMEResult(float(np.mean(evid) / n), alphas, betas, evid, iters)


def logme(features: Any, labels: Any) -> float:
    """LogME score: mean over target classes of the maximised log evidence, divided by N (higher = better)."""
    return logme_details(features, labels).score


def hscore(features: Any, labels: Any) -> float:
    """H-score = tr(cov(f)^+ cov(E[f | y])), covariances unbiased (n - 1), pseudo-inverse for singular cov(f)."""
    f = _features(features)
    y, ct = _labels(labels, f.shape[0])
    if f.shape[0] < 2:
        raise ProxylabError("H-score needs at least 2 samples")
    cov_f = np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])
    means = np.zeros((ct, f.shape[1]))
    np.add.at(means, y, f)
    means /= np.bincount(y, minlength=ct)[:, None]
    g = means[y]  # every sample replaced by its class mean
    cov_g = np.cov(g, rowvar=False).reshape(f.shape[1], f.shape[1])
    return float(np.trace(np.linalg.pinv(cov_f, rcond=1e-10, hermitian=True) @ cov_g))


RERANKERS = Registry("re-ranking method")
RERANKERS.add("leep", leep, help="LEEP on the model's probabilities (black-box)")
RERANKERS.add("nce", nce, help="NCE (negative conditional entropy of labels given the model's argmax; black-box)")
# Estimators of a model's FEATURES (gray-box): only for models whose features() answers (blackbox module doc).
FEATURE_RERANKERS = Registry("feature-based re-ranking method")
FEATURE_RERANKERS.add("logme", logme, help="LogME on the model's classifier-input features (gray-box)")


def scorer(method: str) -> Tuple[Callable[[Any, Any], float], bool]:
    """(estimator, needs features) of a re-ranking method name; unknown names raise, listing every method."""
    if method in FEATURE_RERANKERS:
        return FEATURE_RERANKERS.get(method), True
    if method in RERANKERS:
        return RERANKERS.get(method), False
    raise ProxylabError(f"unknown re-ranking method {method!r}; choose from "
                        f"{', '.join(sorted(RERANKERS.names() + FEATURE_RERANKERS.names()))}")


def rerank(hits: Sequence[Any], get_model: Callable[[int], Any], images: Any, labels: Any,
           method: str = "leep") -> Tuple[List[Any], int]:
    """Re-score hits by running each hit's model once on the query images (probabilities for leep/nce,
    features for logme).

    Returns (hits re-sorted best first with ``score`` = the estimator's value; metadata gains
    ``index_score`` (the first-stage score) and ``rerank``: the method), calls spent = images sent in total).
    Ties keep the index order. Images, labels and (for logme) every model's feature support are checked before
    any model is called.
    """
    from proxylab.retrieval.canonical import check_images

    score_fn, needs_features = scorer(method)
    x = check_images(images, what="query images")
    _labels(labels, x.shape[0])
    # logme: every model's feature support is checked before any is called (so all are built first); leep/nce
    # build one model at a time
    models = [get_model(hit.id) for hit in hits] if needs_features else None
    for hit, model in zip(hits, models or ()):
        if not getattr(model, "supports_features", False):
            who = model.describe() if hasattr(model, "describe") else type(model).__name__
            raise ProxylabError(f"{method} needs the models' features, but model {hit.id} ({who}) exposes none (a "
                                "black box answers probabilities only; a torch model needs an nn.Linear classifier): "
                                "re-rank with leep or nce")
    spent = 0
    scored = []
    for rank, hit in enumerate(hits):
        model = models[rank] if models is not None else get_model(hit.id)
        before = model.calls
        try:
            out = model.features(x) if needs_features else model.predict_proba(x)
        finally:
            spent += model.calls - before
        value = score_fn(out, labels)
        metadata: Dict[str, Any] = dict(hit.metadata, index_score=hit.score, rerank=method)
        scored.append((-value, rank, replace(hit, score=float(value), metadata=metadata)))
    scored.sort(key=lambda t: (t[0], t[1]))
    return [h for _, _, h in scored], spent
