"""Allocation-aware choice of a search's answer (``ProxySearch(select_by="allocation")``).

Why: a proxy's rank correlation over sampled configurations does not tell how well it allocates bits. On
mobilenetv2-animal the hall-of-fame member with the best select Spearman allocated 8 points worse than HAWQ-V2,
and no rank correlation, random or in the allocation regime, picked a better one
(benchmarks/results/allocation_regime.csv). A user of the search wants the proxy whose allocations are the
most accurate, so that is what this check measures, on data the tables' accuracies never came from:

- candidates: the hall of fame (select order), then the known proxies (a search should never hand its user a
  proxy that allocates worse than one it already knew);
- every candidate allocates bits (proxylab's allocator: the exact ILP for mean/sum_layers) at a grid of size
  budgets, ``fractions`` of the way from all-lowest to all-highest bits, on every table's network;
- each allocation is quantized with the table's PTQ protocol and its accuracy measured on the table data set's
  CALIB split (PTQ reads calib images for activation ranges but never their labels; no test image is used);
- the candidate with the best mean accuracy over tables and budgets is the answer; ties keep the earlier
  candidate (hall of fame first), so a known proxy is chosen only when it allocates strictly better.

The grid (default 20/35/50/65/80%) is deliberately not benchmarks/allocation.py's 25/50/75% budgets.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from proxylab.errors import ProxylabError

DEFAULT_FRACTIONS = (0.2, 0.35, 0.5, 0.65, 0.8)
# An ILP that cannot prove optimality quickly (a proxy that ranks layers like their size turns the program
# into subset-sum) keeps its best configuration found: the check ranks proxies, it need not prove optima.
# Such a candidate's configuration then depends on the machine's speed (``ilp_optimal`` False in its row); in
# the shipped runs only bparams hit the cap, far below every winner.
ILP_SECONDS = 10.0

Measure = Callable[[Sequence[int]], float]


@dataclass(frozen=True)
class Candidate:
    formula: str  # a formula, or a known proxy's name (both are what `proxylab allocate --proxy` takes)
    origin: str  # "searched" or "known"
    select_fitness: float


def check_fractions(fractions: Sequence[float]) -> tuple:
    try:
        values = tuple(float(f) for f in fractions)
    except (TypeError, ValueError):
        raise ProxylabError(f"allocation budget fractions must be numbers in (0, 1), got {fractions!r}") from None
    if not values:
        raise ProxylabError("give at least one allocation budget fraction in (0, 1), e.g. 0.2,0.5,0.8")
    bad = [f for f in values if not (0.0 < f < 1.0)]
    if bad:
        raise ProxylabError(f"allocation budget fractions must lie strictly between 0 (all lowest bits) and 1 "
                            f"(all highest bits), got {bad[0]}")
    return tuple(sorted(set(values)))


def calib_measures(tables: Sequence) -> List[Measure]:
    """Per table, bits -> PTQ accuracy on its data set's calib split (the table's network, weights and protocol)."""
    from proxylab.bench.measure import Measurer, spec_from_table

    out = []
    for t in tables:
        try:
            spec = spec_from_table(t)
        except ProxylabError as e:
            raise ProxylabError(f"selecting by allocation quantizes each table's network, but {e}; use "
                                f"--select-by min (or mean) for this table") from None
        measurer = Measurer(spec, split="calib")
        out.append(lambda bits, m=measurer: m.measure(bits)[0])
    return out


def allocation_check(candidates: Sequence[Candidate], tables: Sequence, stats: Sequence,
                     fractions: Sequence[float] = DEFAULT_FRACTIONS, measures: Optional[Sequence[Measure]] = None,
                     seed: int = 0) -> List[Dict]:
    """One row per candidate (in the given order): its mean calib accuracy over tables and budgets
    (``alloc_acc``, NaN when it cannot allocate on some table), per table, and whether it was chosen."""
    from proxylab.allocate import AllocationProblem, budget_between
    from proxylab.allocate.proxy_allocator import allocate_with_proxy

    fractions = check_fractions(fractions)
    if not candidates:
        raise ProxylabError("the allocation check needs at least one candidate proxy")
    measures = list(measures) if measures is not None else calib_measures(tables)
    if len(measures) != len(tables) or len(stats) != len(tables):
        raise ProxylabError(f"got {len(tables)} tables, {len(stats)} statistics and {len(measures)} measures: "
                            f"give one of each per table")
    problems = [AllocationProblem.from_stats(st, t.bit_choices, int(t.meta.get("act_bits", 8)))
                for t, st in zip(tables, stats)]
    budgets = [[budget_between(p, f) for f in fractions] for p in problems]
    measured: Dict[tuple, float] = {}  # (table, bits): candidates often agree, measure each config once

    rows = []
    for cand in candidates:
        row = {"formula": cand.formula, "origin": cand.origin, "select_fitness": cand.select_fitness}
        per_table, note, proven = [], "", True
        for i, (t, problem) in enumerate(zip(tables, problems)):
            accs = []
            for frac, budget in zip(fractions, budgets[i]):
                try:
                    res = allocate_with_proxy(problem, cand.formula, budget, seed=seed, ilp_time_limit=ILP_SECONDS)
                except ProxylabError as e:
                    note = f"{t.name}: {e}"
                    break
                # an evolutionary allocation (min/max_layers proxies) proves nothing either
                proven = proven and bool(res.extra.get("optimal", False))
                key = (i, tuple(int(b) for b in res.bits))
                if key not in measured:
                    measured[key] = float(measures[i](key[1]))
                accs.append(measured[key])
                row[f"acc_{t.name}_{frac:g}"] = measured[key]
            if note:
                break
            per_table.append(float(np.mean(accs)))
            row[f"alloc_acc_{t.name}"] = per_table[-1]
        row["alloc_acc"] = float(np.mean(per_table)) if not note else math.nan
        row["ilp_optimal"] = proven
        row["note"] = note
        rows.append(row)

    best = pick_best([r["alloc_acc"] for r in rows])
    if best is None:
        raise ProxylabError("no candidate proxy could allocate bits on every table; first reason: "
                            + rows[0]["note"])
    for i, r in enumerate(rows):
        r["chosen"] = i == best
    return rows


def pick_best(scores: Sequence[float]) -> Optional[int]:
    """Index of the best finite score, the first of equals (None when none is finite). Scores are rounded to
    1e-9 first: equal accuracy sums can differ in the last bit of their float means, and such a tie must keep
    the earlier candidate (the hall of fame before the known proxies)."""
    keyed = [round(v, 9) if math.isfinite(v) else -math.inf for v in scores]
    if not keyed or max(keyed) == -math.inf:
        return None
    return int(np.argmax(keyed))  # argmax returns the first maximum


def chosen_row(rows: List[Dict]) -> Dict:
    return next(r for r in rows if r["chosen"])
