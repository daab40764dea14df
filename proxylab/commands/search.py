"""`proxylab search`: evolve a proxy against one or more bench tables and write the run folder."""
from __future__ import annotations

import argparse
from typing import Any, Dict

from proxylab.commands._base import Command, announce_stats
from proxylab.search.alloc_check import DEFAULT_FRACTIONS


class Search(Command):
    help = "evolve a proxy against one or more tables"
    interrupted = "interrupted; the search is saved at its last checkpoint: rerun the same command with --resume"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--bench", required=True,
                            help="table name(s) or folder(s), comma separated (see `proxylab bench list`)")
        parser.add_argument("--space", default="emq",
                            help="search space: a preset name (emq, extended) or a YAML file (default: emq)")
        parser.add_argument("--pop", type=int, default=50, help="population size (default 50)")
        parser.add_argument("--iters", type=int, default=1000, help="iterations (default 1000)")
        parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
        parser.add_argument("--out", required=True, help="output folder (must not exist unless --resume)")
        parser.add_argument("--resume", action="store_true", help="continue the search saved in --out")
        parser.add_argument("--scheduler", default=None,
                            help="Dask scheduler address (tcp://host:8786): evaluate fitness on that cluster")
        parser.add_argument("--fitness", choices=("mean", "min"), default="mean",
                            help="combine per-table search-split Spearman by mean or min (default mean)")
        parser.add_argument("--select-by", choices=("mean", "min", "allocation"), default="min",
                            help="pick the run's best from the hall of fame by the mean or the worst (min) "
                                 "per-table select-split Spearman (default min; the same rule picks the best "
                                 "known proxy it is compared with), or by allocation: the hall of fame and the "
                                 "known proxies allocate bits on each table's network and the most accurate "
                                 "allocations on the calib split win (for `proxylab allocate`; needs tables that "
                                 "ship their weights)")
        parser.add_argument("--alloc-fractions", default=None,
                            help="with --select-by allocation: size budgets as fractions of the way from "
                                 "all-lowest to all-highest bits (default "
                                 f"{','.join(f'{f:g}' for f in DEFAULT_FRACTIONS)})")
        parser.add_argument("--no-dps", action="store_true", help="ablation: no diversity-prompting newcomer")
        parser.add_argument("--no-csp", action="store_true",
                            help="ablation: no compatibility screening (no early rejection, no equivalence check)")
        parser.add_argument("--no-osp", action="store_true", help="ablation: uniform operation sampling")
        parser.add_argument("--tries", type=int, default=8,
                            help="candidates drawn per iteration for the offspring and for the newcomer (default 8)")
        parser.add_argument("--hof-size", type=int, default=20, help="hall of fame re-ranked on the select split")
        parser.add_argument("--checkpoint-every", type=int, default=10, help="iterations between checkpoints")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")
        parser.add_argument("--plot", metavar="FILE.png", help="also draw the fitness by iteration (PNG)")

    def run(self, args: argparse.Namespace) -> Dict[str, Any]:
        from proxylab.bench import load_table
        from proxylab.errors import ProxylabError
        from proxylab.search import ProxySearch, load_space

        names = [n.strip() for n in args.bench.split(",") if n.strip()]
        if not names:
            raise ProxylabError("--bench is empty: give at least one table name or folder")
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:  # it would count twice in the mean fitness
            raise ProxylabError(f"--bench names {', '.join(repeated)} more than once: give each table once")
        if args.alloc_fractions is not None and args.select_by != "allocation":
            raise ProxylabError("--alloc-fractions sets the budgets of --select-by allocation: add that, or drop it")
        load_space(args.space)  # a bad space file fails before any table or statistic is loaded
        if args.plot:
            from proxylab.plots import check_plot_path

            check_plot_path(args.plot)  # fail now, not after the search
        fractions = _fractions(args.alloc_fractions) if args.alloc_fractions is not None else DEFAULT_FRACTIONS
        tables = [load_table(n) for n in names]
        announce_stats(", ".join(f"{t.name}'s network" for t in tables), hessian=True)
        search = ProxySearch(
            space=args.space, pop=args.pop, iters=args.iters, seed=args.seed, fitness=args.fitness,
            select_by=args.select_by, dps=not args.no_dps, csp=not args.no_csp, osp=not args.no_osp, tries=args.tries,
            hof_size=args.hof_size, checkpoint_every=args.checkpoint_every, out_dir=args.out,
            resume=args.resume, scheduler=args.scheduler, progress=not args.no_progress, alloc_fractions=fractions,
        ).fit(tables)
        if args.plot:
            from proxylab.plots import search_history

            search_history(search, args.plot, title=f"proxy search on {args.bench}")
        best = search.best_row_
        rej = search.rejections_
        keep = ("table", "proxy", "role", "spearman", "kendall", "select_spearman", "noise_ceiling")
        return {
            "best_proxy": search.best_formula_,
            "best_origin": search.best_origin_,
            **({"allocation_acc_calib": best["alloc_acc"]} if "alloc_acc" in best else {}),
            "search_fitness": best["search_fitness"],
            "select_fitness": best["select_fitness"],
            "rejected_early": sum(rej["early"].values()),
            "rejected_full": sum(rej["full"].values()),
            "early_share": rej["early_share"],
            "evaluations": search.counters_["evaluations"],
            "wall_s": round(search.wall_time_, 1),
            "out": str(args.out),
            "test_split": [{k: r[k] for k in keep} for r in search.results_],
        }


def _fractions(text: str) -> tuple:
    from proxylab.errors import ProxylabError
    from proxylab.search.alloc_check import check_fractions

    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ProxylabError(f"--alloc-fractions must be comma-separated numbers in (0, 1), got {text!r}") from None
    return check_fractions(values)
