"""Fitness of one proxy formula against the search split of one or more tables, with compatibility screening.

Cost model: nearly all the time of a candidate goes into its per-layer score table (the proxy's ops on every
layer's tensors at every bit choice); turning that table into scores for hundreds of configurations is a
gather, and Spearman is one argsort. So the screening stages are ordered by what they save:

- early (compatibility screening, CSP): the first table's layer table, which stops at the first bad layer
  (InvalidProxy); then the scores on a small fixed probe set of configurations: constant -> rejected.
  The probe scores, z-normalised and rounded, are the functional-equivalence key: two proxies that rank the
  probe set identically up to an affine map are the same proxy for the search and are scored once.
- full: every table's layer table, the scores of every search configuration, Spearman per table, combined
  by mean or min; constant scores or a NaN correlation reject here.

Without CSP the same checks happen, but only after every table has been evaluated (no early exit, no
equivalence key), which is what the ablation measures. Every method is a pure function of the formula, so a
Dask worker holding a copy of the evaluator returns exactly what the local one would.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from proxylab.errors import ProxylabError

EARLY, FULL = "early", "full"
PROBE_CONFIGS = 32
_CONST_RTOL = 1e-6   # float32 statistics: relative spread below this is rounding noise, not a ranking
_KEY_DECIMALS = 5


@dataclass(frozen=True)
class Outcome:
    """What evaluating one proxy gave. ``fitness`` is NaN for a rejected proxy."""

    valid: bool
    fitness: float = math.nan
    per_table: Tuple[float, ...] = ()
    stage: str = ""          # where a rejected proxy was caught: "early" or "full"
    reason: str = ""         # invalid | constant | nan_corr | too_big
    probe_key: str = ""      # functional-equivalence key ("" without CSP or when rejected before it)

    def to_json(self) -> list:
        return [self.valid, None if math.isnan(self.fitness) else self.fitness, list(self.per_table),
                self.stage, self.reason, self.probe_key]

    @classmethod
    def from_json(cls, d: Sequence) -> "Outcome":
        return cls(bool(d[0]), math.nan if d[1] is None else float(d[1]), tuple(float(x) for x in d[2]),
                   str(d[3]), str(d[4]), str(d[5]))


def rejected(stage: str, reason: str, probe_key: str = "") -> Outcome:
    return Outcome(False, stage=stage, reason=reason, probe_key=probe_key)


def is_constant(scores: np.ndarray) -> bool:
    if not np.isfinite(scores).all():
        return True
    spread = float(scores.max() - scores.min())
    return spread <= _CONST_RTOL * float(np.abs(scores).max()) or spread == 0.0


def equivalence_key(scores: np.ndarray) -> str:
    s = scores / np.abs(scores).max()  # scale first: the std of huge scores would overflow
    z = (s - s.mean()) / s.std()
    rounded = np.round(z, _KEY_DECIMALS) + 0.0  # + 0.0 folds -0.0 into 0.0
    return hashlib.sha1(rounded.astype(np.float64).tobytes()).hexdigest()[:20]


class _TableView:
    """One table's search rows, as column indices into the stats' bit choices plus the rank target."""

    def __init__(self, name: str, stats, bits: np.ndarray, acc: np.ndarray):
        from proxylab.metrics import RankTarget

        self.name = name
        self.stats = stats
        self.cols = bit_columns(stats, bits, name)
        self.target = RankTarget(acc)


def bit_columns(stats, bits: np.ndarray, name: str = "table") -> np.ndarray:
    """[N, L] bit values -> [N, L] column indices of the proxy's layer table (stats.bit_choices order)."""
    from proxylab.proxy.evaluate import bits_to_columns

    bits = np.asarray(bits, dtype=np.int64)
    if bits.ndim != 2 or bits.shape[1] != len(stats.layer_names):
        raise ProxylabError(f"table '{name}' has configurations of {bits.shape[-1]} layers but its statistics "
                            f"have {len(stats.layer_names)}: they describe different networks")
    return bits_to_columns(bits, stats.bit_choices, stats.layer_names)


def config_scores(layer_table: np.ndarray, cols: np.ndarray, aggregator: str) -> Optional[np.ndarray]:
    """Scores of configurations from a layer table (the proxy module's gather + aggregate); None on overflow."""
    from proxylab.proxy import InvalidProxy
    from proxylab.proxy.evaluate import scores_from_table

    try:
        return scores_from_table(layer_table, cols, aggregator)
    except InvalidProxy:
        return None


class FitnessEvaluator:
    """Scores proxy formulas against tables' search splits. ``combine``: 'mean' or 'min' over tables."""

    def __init__(self, views: List[_TableView], combine: str = "mean", csp: bool = True,
                 probe_configs: int = PROBE_CONFIGS, probe_seed: int = 0):
        if combine not in ("mean", "min"):
            raise ProxylabError(f"fitness must be 'mean' or 'min' over tables, got {combine!r}")
        self.views = views
        self.combine = combine
        self.csp = csp
        first = views[0].cols
        pick = np.random.default_rng(probe_seed).permutation(len(first))[:min(probe_configs, len(first))]
        self.probe_cols = first[np.sort(pick)]

    @classmethod
    def for_tables(cls, tables: Sequence, stats: Sequence, split: str = "search", **kw) -> "FitnessEvaluator":
        views = []
        for t, st in zip(tables, stats):
            idx = t.split(split)
            if len(idx) < 3:
                raise ProxylabError(f"table '{t.name}' has {len(idx)} rows in its {split} split: a rank "
                                    f"correlation needs at least 3; use a bigger table")
            views.append(_TableView(t.name, st, t.bits[idx], t.acc[idx]))
        return cls(views, **kw)

    # -- the two stages ---------------------------------------------------------------------------------
    @staticmethod
    def _layer_table(proxy, stats) -> Optional[np.ndarray]:
        from proxylab.proxy import InvalidProxy

        try:
            lt = np.asarray(proxy.layer_table(stats), dtype=np.float64)
        except InvalidProxy:
            return None
        return lt if np.isfinite(lt).all() else None

    def early(self, proxy) -> Tuple[Optional[Outcome], Optional[np.ndarray], str]:
        """(rejection or None, first table's layer table, equivalence key)."""
        lt = self._layer_table(proxy, self.views[0].stats)
        if lt is None:
            return rejected(EARLY, "invalid"), None, ""
        probe = config_scores(lt, self.probe_cols, proxy.aggregator)
        if probe is None:
            return rejected(EARLY, "invalid"), None, ""
        if is_constant(probe):
            return rejected(EARLY, "constant"), None, ""
        return None, lt, equivalence_key(probe)

    def full(self, proxy, first_table: Optional[np.ndarray] = None, probe_key: str = "") -> Outcome:
        tables = [first_table] + [None] * (len(self.views) - 1)
        correlations = []
        failure = ""
        for view, lt in zip(self.views, tables):
            if lt is None:
                lt = self._layer_table(proxy, view.stats)
            if lt is None:
                failure = failure or "invalid"
                if self.csp:
                    break
                continue
            scores = config_scores(lt, view.cols, proxy.aggregator)
            if scores is None:
                failure = failure or "invalid"
                if self.csp:
                    break
                continue
            if is_constant(scores):
                failure = failure or "constant"
                if self.csp:
                    break
                continue
            rho = view.target.spearman(scores)
            if not math.isfinite(rho):
                failure = failure or "nan_corr"
                if self.csp:
                    break
                continue
            correlations.append(rho)
        if failure:
            return rejected(FULL, failure, probe_key)
        fitness = float(np.mean(correlations)) if self.combine == "mean" else float(np.min(correlations))
        return Outcome(True, fitness, tuple(correlations), probe_key=probe_key)

    def evaluate(self, proxy) -> Outcome:
        """Both stages as the search runs them (early exit and equivalence key only with CSP)."""
        if not self.csp:
            return self.full(proxy)
        early, lt, key = self.early(proxy)
        if early is not None:
            return early
        return self.full(proxy, lt, key)

    def scores(self, proxy, view_index: int = 0) -> np.ndarray:
        view = self.views[view_index]
        lt = self._layer_table(proxy, view.stats)
        scores = None if lt is None else config_scores(lt, view.cols, proxy.aggregator)
        return np.full(len(view.cols), np.nan) if scores is None else scores


def remote_evaluate(evaluator: FitnessEvaluator, formula: str) -> Outcome:
    """Module-level so Dask can ship it; the evaluator arrives on the worker once (scattered)."""
    from proxylab.proxy import parse_proxy

    return evaluator.evaluate(parse_proxy(formula))
