"""How good are searched proxies? -> benchmarks/results/search_quality.csv

Settings (each over --seeds seeds):
  within         search on a table's search split, pick on its select split, report its test split
  leave_one_out  search (and pick) on the other tables, report the left-out table's test split
  no_dps / no_csp / no_osp   `within` with one part of the algorithm switched off (ablations)
Every row puts the searched proxy next to the best known proxy (the known proxy with the best select-split
Spearman on the tables the search saw), BParams and the table's noise ceiling; wall_s is the search's own
time (statistics are computed once per table beforehand and cached). Rows with seed 'mean' / 'std' summarise
the seeds of a (setting, table). Finished runs are kept in search_quality_runs.csv, so an interrupted
benchmark resumes where it stopped.

    python benchmarks/search_quality.py                       # the full run: pop 50, 1000 iterations, 5 seeds
    python benchmarks/search_quality.py --iters 200 --seeds 2 # a reduced run
"""
from __future__ import annotations

import argparse
import csv
import math
import sys
from collections import Counter
from pathlib import Path
from typing import Dict, List

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
SETTINGS = ("within", "leave_one_out", "no_dps", "no_csp", "no_osp")
ABLATION = {"no_dps": {"dps": False}, "no_csp": {"csp": False}, "no_osp": {"osp": False}}
KEY = ("setting", "table", "seed", "pop", "iters", "space")


def one_run(setting: str, held: int, seed: int, tables, stats, args) -> Dict:
    from proxylab.search import ProxySearch
    from proxylab.search.report import best_known, known_proxies, split_metrics

    if setting == "leave_one_out":
        train = [i for i in range(len(tables)) if i != held]
    else:
        train = [held]
    flags = ABLATION.get(setting, {})
    ps = ProxySearch(space=args.space, pop=args.pop, iters=args.iters, seed=seed, **flags).fit(
        [tables[i] for i in train], [stats[i] for i in train])
    target, st = tables[held], stats[held]
    searched = split_metrics(ps.best_proxy_, target, st, "test")
    known_name, known_select, _ = best_known([tables[i] for i in train], [stats[i] for i in train])
    known = split_metrics(known_proxies()[known_name], target, st, "test") if known_name else {}
    bparams = split_metrics(known_proxies()["bparams"], target, st, "test")
    best = ps.hall_of_fame_[0]
    return {
        "setting": setting, "table": target.name, "seed": seed, "pop": args.pop, "iters": args.iters,
        "space": args.space, "searched_on": "+".join(tables[i].name for i in train),
        "searched_proxy": ps.best_formula_,
        "searched_spearman": searched["spearman"], "searched_kendall": searched["kendall"],
        "best_known_proxy": known_name or "", "best_known_spearman": known.get("spearman", math.nan),
        "best_known_kendall": known.get("kendall", math.nan), "best_known_select": known_select,
        "bparams_spearman": bparams["spearman"], "noise_ceiling": float(target.noise_ceiling),
        "search_fitness": best["search_fitness"], "select_fitness": best["select_fitness"],
        "early_share": ps.rejections_["early_share"], "evaluations": ps.counters_["evaluations"],
        "wall_s": round(ps.wall_time_, 2),
    }


def summarise(rows: List[Dict]) -> List[Dict]:
    groups: Dict[tuple, List[Dict]] = {}
    for r in rows:
        groups.setdefault((r["setting"], r["table"], r["pop"], r["iters"], r["space"]), []).append(r)
    out = []
    numeric = [k for k, v in rows[0].items() if isinstance(v, (int, float)) and k not in ("seed", "pop", "iters")]
    for (setting, table, pop, iters, space), rs in groups.items():
        for stat, fn in (("mean", np.nanmean), ("std", np.nanstd)):
            row = {"setting": setting, "table": table, "seed": stat, "pop": pop, "iters": iters, "space": space,
                   "searched_on": rs[0]["searched_on"],
                   "searched_proxy": Counter(r["searched_proxy"] for r in rs).most_common(1)[0][0],
                   "best_known_proxy": Counter(r["best_known_proxy"] for r in rs).most_common(1)[0][0]}
            for k in numeric:
                row[k] = float(fn([float(r[k]) for r in rs]))
            row["n_seeds"] = len(rs)
            out.append(row)
    return out


def read_runs(path: Path) -> List[Dict]:
    if not path.is_file():
        return []
    rows = []
    for r in csv.DictReader(open(path)):
        for k, v in r.items():
            try:
                r[k] = int(v) if k in ("seed", "pop", "iters", "evaluations") else float(v)
            except ValueError:
                pass
        rows.append(r)
    return rows


def write_csv(path: Path, rows: List[Dict]) -> None:
    from proxylab.search.rundir import rows_to_csv
    from proxylab.utils import atomic_write_text

    atomic_write_text(path, rows_to_csv(rows))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tables", default=None, help="comma separated (default: every shipped table)")
    p.add_argument("--settings", default=",".join(SETTINGS))
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--pop", type=int, default=50)
    p.add_argument("--iters", type=int, default=1000)
    p.add_argument("--space", default="emq")
    p.add_argument("--out", default=str(RESULTS / "search_quality.csv"))
    p.add_argument("--ablation-tables", default=None,
                   help="comma separated tables for the no_dps/no_csp/no_osp settings (default: all of --tables)")
    args = p.parse_args(argv)

    from proxylab.bench import list_tables, load_table
    from proxylab.stats import stats_for_table

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

    out = Path(args.out)
    runs_path = out.with_name(out.stem + "_runs.csv")
    runs = read_runs(runs_path)
    done = {tuple(str(r[k]) for k in KEY) for r in runs}
    ablation_names = set(args.ablation_tables.split(",")) if args.ablation_tables else set(names)
    for setting in settings:
        for held in range(len(tables)):
            if setting in ABLATION and tables[held].name not in ablation_names:
                continue
            for seed in range(args.seeds):
                key = tuple(str(v) for v in (setting, tables[held].name, seed, args.pop, args.iters, args.space))
                if key in done:
                    continue
                row = one_run(setting, held, seed, tables, stats, args)
                runs.append(row)
                write_csv(runs_path, runs)
                print(f"{setting:13s} {row['table']:20s} seed {seed}: searched {row['searched_spearman']:.3f} "
                      f"vs {row['best_known_proxy']} {row['best_known_spearman']:.3f} "
                      f"(ceiling {row['noise_ceiling']:.3f}) in {row['wall_s']:.0f}s", flush=True)
    wanted = [r for r in runs if r["pop"] == args.pop and r["iters"] == args.iters and r["space"] == args.space
              and r["setting"] in settings and r["table"] in names and int(r["seed"]) < args.seeds]
    if wanted:
        write_csv(out, wanted + summarise(wanted))
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
