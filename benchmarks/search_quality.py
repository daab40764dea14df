"""How good are searched proxies? -> benchmarks/results/search_quality.csv (+ _summary.csv, search_default_wall.csv)

Settings (each over --seeds seeds):
  within         search on a table's search split, pick on its select split, report its test split
  leave_one_out  search (and pick) on the other tables, report the left-out table's test split
  no_dps / no_csp / no_osp   `within` with one part of the algorithm switched off (ablations)
Every row puts the searched proxy next to the best known proxy (the known proxy with the best select-split
Spearman on the tables the search saw, combined by the search's select_by rule), BParams and the test split's
noise ceiling; wall_s is the search's own time (statistics are computed once per table beforehand and cached).

Outputs:
  search_quality.csv          one row per finished run; the benchmark resumes from it (finished runs are
                              skipped), so a killed benchmark loses at most the run in progress
  search_quality_summary.csv  mean and std over seeds per (setting, table), with n_seeds next to the planned
                              number (a `note` says when a setting ran with fewer seeds)
  search_default_wall.csv     the screening figure (share of rejections made before full evaluation, over every
                              run with screening) and the wall time of the default searches (`within` rows)

The best-known columns are recomputed for every row each time the files are written, so every row compares
with the known proxies as they are now (a known proxy that becomes valid can change the winner).

    python benchmarks/search_quality.py                                   # pop 50, 1000 iterations, 5 seeds
    python benchmarks/search_quality.py --settings no_dps,no_csp,no_osp --seeds 3   # reduced ablations
    python benchmarks/search_quality.py --settings leave_one_out --fitness min      # transfer, worst-table fitness
"""
from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
SETTINGS = ("within", "leave_one_out", "no_dps", "no_csp", "no_osp")
ABLATION = {"no_dps": {"dps": False}, "no_csp": {"csp": False}, "no_osp": {"osp": False}}
# searched_on is part of a run's identity: a leave-one-out row searched on another table set is another run
KEY = ("setting", "table", "searched_on", "seed", "pop", "iters", "space", "fitness", "select_by")
INT_COLUMNS = ("seed", "pop", "iters", "evaluations", "rejected_early", "rejected_full")
WALL_TARGET_S = 15 * 60
SCREEN_TARGET = 0.90


def train_indices(setting: str, held: int, n: int) -> List[int]:
    return [i for i in range(n) if i != held] if setting == "leave_one_out" else [held]


def one_run(setting: str, held: int, seed: int, tables, stats, args) -> Dict:
    from proxylab.search import ProxySearch
    from proxylab.search.report import split_metrics

    train = train_indices(setting, held, len(tables))
    flags = ABLATION.get(setting, {})
    cpu = time.process_time()  # single-threaded: CPU seconds are the wall time on an idle core
    ps = ProxySearch(space=args.space, pop=args.pop, iters=args.iters, seed=seed, fitness=args.fitness,
                     select_by=args.select_by, **flags).fit([tables[i] for i in train], [stats[i] for i in train])
    cpu = time.process_time() - cpu
    target, st = tables[held], stats[held]
    searched = split_metrics(ps.best_proxy_, target, st, "test")
    best = ps.hall_of_fame_[0]
    rej = ps.rejections_
    return {
        "setting": setting, "table": target.name, "seed": seed, "pop": args.pop, "iters": args.iters,
        "space": args.space, "fitness": args.fitness, "select_by": args.select_by,
        "searched_on": "+".join(tables[i].name for i in train),
        "searched_proxy": ps.best_formula_,
        "searched_spearman": searched["spearman"], "searched_kendall": searched["kendall"],
        "search_fitness": best["search_fitness"], "select_fitness": best["select_fitness"],
        "rejected_early": sum(rej["early"].values()), "rejected_full": sum(rej["full"].values()),
        "early_share": rej["early_share"], "evaluations": ps.counters_["evaluations"],
        "wall_s": round(ps.wall_time_, 2), "cpu_s": round(cpu, 2),
    }


class KnownColumns:
    """Best-known-proxy, BParams and noise-ceiling columns per (tables searched on, test table), memoised.
    Tables a row names that this invocation did not load (an earlier one with other --tables) are loaded."""

    def __init__(self, tables, stats, select_by: str):
        self.loaded = {t.name: (t, s) for t, s in zip(tables, stats)}
        self.select_by = select_by
        self._memo: Dict[Tuple[str, str], Dict] = {}

    def _table(self, name: str):
        if name not in self.loaded:
            from proxylab.bench import load_table
            from proxylab.stats import stats_for_table

            t = load_table(name)
            self.loaded[name] = (t, stats_for_table(t))
        return self.loaded[name]

    def __call__(self, searched_on: str, table: str) -> Dict:
        key = (searched_on, table)
        if key not in self._memo:
            self._memo[key] = self._compute(searched_on.split("+"), table)
        return self._memo[key]

    def _compute(self, train: Sequence[str], held: str) -> Dict:
        from proxylab.search.report import best_known, known_proxies, split_metrics

        pairs = [self._table(n) for n in train]
        name, select, _ = best_known([t for t, _ in pairs], [s for _, s in pairs], self.select_by)
        t, st = self._table(held)
        known = split_metrics(known_proxies()[name], t, st, "test") if name else {}
        bparams = split_metrics(known_proxies()["bparams"], t, st, "test")
        return {"best_known_proxy": name or "", "best_known_spearman": known.get("spearman", math.nan),
                "best_known_kendall": known.get("kendall", math.nan), "best_known_select": select,
                "bparams_spearman": bparams["spearman"],
                "noise_ceiling": float(t.subset(t.split("test")).noise_ceiling)}


def with_known(rows: List[Dict], known: KnownColumns) -> List[Dict]:
    out = []
    for r in rows:
        r = {**r, **known(str(r["searched_on"]), str(r["table"]))}
        r["beats_known"] = bool(r["searched_spearman"] > r["best_known_spearman"])
        out.append(r)
    return out


SUMMARY_NUMERIC = ("searched_spearman", "searched_kendall", "best_known_spearman", "best_known_kendall",
                   "bparams_spearman", "noise_ceiling", "search_fitness", "select_fitness", "early_share",
                   "evaluations", "wall_s", "cpu_s")


def summarise(rows: List[Dict], planned_seeds: int) -> List[Dict]:
    groups: Dict[tuple, List[Dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in ("setting", "table", "pop", "iters", "space", "fitness", "select_by")),
                          []).append(r)
    out = []
    for (setting, table, pop, iters, space, fitness, select_by), rs in groups.items():
        n = len(rs)
        row = {"setting": setting, "table": table, "pop": pop, "iters": iters, "space": space, "fitness": fitness,
               "select_by": select_by,
               "searched_on": rs[0]["searched_on"], "n_seeds": n, "planned_seeds": planned_seeds,
               "note": "" if n >= planned_seeds else f"reduced: {n} of {planned_seeds} seeds (time budget)",
               "best_known_proxy": Counter(r["best_known_proxy"] for r in rs).most_common(1)[0][0],
               "most_common_searched_proxy": Counter(r["searched_proxy"] for r in rs).most_common(1)[0][0]}
        for k in SUMMARY_NUMERIC:
            vals = np.array([_num(r.get(k)) for r in rs])
            row[f"{k}_mean"] = float(np.nanmean(vals))
            row[f"{k}_std"] = float(np.nanstd(vals))  # population std over the seeds run
        row["seeds_beating_known"] = sum(bool(r["beats_known"]) for r in rs)
        row["target_met"] = bool(row["searched_spearman_mean"] > row["best_known_spearman_mean"])
        out.append(row)
    return out


def _num(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):  # a column an older row lacks
        return math.nan


def screening_and_wall(rows: List[Dict]) -> List[Dict]:
    """The two performance targets: early share of rejections (runs with screening) and default-search wall time."""
    screened = [r for r in rows if r["setting"] != "no_csp"]
    early = sum(int(r["rejected_early"]) for r in screened)
    full = sum(int(r["rejected_full"]) for r in screened)
    share = early / (early + full) if early + full else math.nan
    out = [{"metric": "early_rejection_share", "value": share, "target": f">= {SCREEN_TARGET}",
            "met": bool(share >= SCREEN_TARGET), "n_runs": len(screened),
            "detail": f"{early} early / {early + full} rejections, every setting with screening"}]
    default = [r for r in rows if r["setting"] == "within"]
    for r_pop_iters in sorted({(r["pop"], r["iters"], r["space"]) for r in default}):
        walls = np.array([float(r["wall_s"]) for r in default if (r["pop"], r["iters"], r["space"]) == r_pop_iters])
        pop, iters, space = r_pop_iters
        out.append({"metric": f"within_search_wall_s (pop {pop}, {iters} iters, space {space})",
                    "value": float(walls.mean()), "std": float(walls.std()), "max": float(walls.max()),
                    "target": f"< {WALL_TARGET_S}", "met": bool(walls.max() < WALL_TARGET_S), "n_runs": len(walls),
                    "detail": "search time only (statistics cached), on the shared 2-core machine under load"})
        cpus = np.array([_num(r.get("cpu_s")) for r in default
                         if (r["pop"], r["iters"], r["space"]) == r_pop_iters])
        out.append({"metric": f"within_search_cpu_s (pop {pop}, {iters} iters, space {space})",
                    "value": float(np.nanmean(cpus)), "std": float(np.nanstd(cpus)), "max": float(np.nanmax(cpus)),
                    "target": f"< {WALL_TARGET_S}", "met": bool(np.nanmax(cpus) < WALL_TARGET_S), "n_runs": len(cpus),
                    "detail": "CPU seconds of the single-threaded search (fit): about its wall time on one "
                              "idle core, free of the other developers' load"})
    return out


def read_runs(path: Path) -> List[Dict]:
    if not path.is_file():
        return []
    rows = []
    with open(path, newline="") as fh:
        for r in csv.DictReader(fh):
            if not str(r.get("seed", "")).isdigit():  # summary rows of an older layout
                continue
            for k, v in r.items():
                try:
                    r[k] = int(v) if k in INT_COLUMNS else float(v)
                except (TypeError, ValueError):
                    pass
            rows.append(r)
    return rows


def write_csv(path: Path, rows: List[Dict]) -> None:
    """Every key of every row (older rows may lack newer columns), unlike _results.write_csv's first-row keys."""
    from proxylab.utils import atomic_write_text, rows_to_csv

    atomic_write_text(path, rows_to_csv(rows))


def run_key(r: Dict) -> tuple:
    return tuple(str(r[k]) for k in KEY)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tables", default=None, help="comma separated (default: every shipped table)")
    p.add_argument("--settings", default=",".join(SETTINGS))
    p.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 of each setting to run")
    p.add_argument("--planned-seeds", type=int, default=5, help="seeds the summary calls complete (default 5)")
    p.add_argument("--pop", type=int, default=50)
    p.add_argument("--iters", type=int, default=1000)
    p.add_argument("--space", default="extended")
    p.add_argument("--fitness", default=None, help="per-table search combination (default: ProxySearch's)")
    p.add_argument("--select-by", default=None, help="per-table select combination (default: ProxySearch's)")
    p.add_argument("--out", default=str(RESULTS / "search_quality.csv"))
    p.add_argument("--wall-out", default=str(RESULTS / "search_default_wall.csv"))
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(1)  # a shared machine; the search itself is numpy on small arrays
    from proxylab.bench import list_tables, load_table
    from proxylab.search import ProxySearch
    from proxylab.stats import stats_for_table

    args.fitness = args.fitness or ProxySearch().fitness
    args.select_by = args.select_by or ProxySearch().select_by
    names = args.tables.split(",") if args.tables else list_tables()
    if not names:
        print("no shipped tables found; build them first (proxylab bench build) or pass --tables", file=sys.stderr)
        return 2
    settings = [s for s in args.settings.split(",") if s]
    bad = [s for s in settings if s not in SETTINGS]
    if bad:
        print(f"unknown setting(s) {bad}; choose from {SETTINGS}", file=sys.stderr)
        return 2
    if "leave_one_out" in settings and len(names) < 2:
        settings.remove("leave_one_out")
    tables = [load_table(n) for n in names]
    stats = [stats_for_table(t) for t in tables]
    known = KnownColumns(tables, stats, args.select_by)

    out = Path(args.out)
    summary_path = out.with_name(out.stem + "_summary.csv")
    runs = read_runs(out)
    done = {run_key(r) for r in runs}
    for setting in settings:
        for held in range(len(tables)):
            for seed in range(args.seeds):
                row = {"setting": setting, "table": tables[held].name, "seed": seed, "pop": args.pop,
                       "iters": args.iters, "space": args.space, "fitness": args.fitness, "select_by": args.select_by,
                       "searched_on": "+".join(tables[i].name for i in train_indices(setting, held, len(tables)))}
                if run_key(row) in done:
                    continue
                row = one_run(setting, held, seed, tables, stats, args)
                runs.append(row)
                runs = with_known(runs, known)
                write_csv(out, runs)  # after every run: a killed benchmark resumes from here
                print(f"{setting:13s} {row['table']:20s} seed {seed}: searched {row['searched_spearman']:.3f} "
                      f"vs {runs[-1]['best_known_proxy']} {runs[-1]['best_known_spearman']:.3f} "
                      f"in {row['wall_s']:.0f}s", flush=True)
    if runs:
        runs = with_known(runs, known)
        write_csv(out, runs)
        budget = [r for r in runs if (r["pop"], r["iters"], r["space"]) == (args.pop, args.iters, args.space)]
        same = [r for r in budget if (r["fitness"], r["select_by"]) == (args.fitness, args.select_by)]
        # the summary keeps every fitness / select rule run at this budget, one line each (fitness is a column)
        write_csv(summary_path, summarise(budget, args.planned_seeds))
        write_csv(Path(args.wall_out), screening_and_wall(same))
        print(f"wrote {out}, {summary_path}, {args.wall_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
