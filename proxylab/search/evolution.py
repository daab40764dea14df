"""``ProxySearch``: EMQ-style evolution of proxy formulas, as an explicit loop.

Per iteration: sort the population by fitness; draw two parents from the top half; uniform crossover
(p=0.5 per gene) then mutation (p=0.5, each gene resampled with p=0.5). With diversity-prompting selection
(DPS) a fresh random newcomer competes with the offspring; the better enters and the worst member leaves.
A rejected candidate is replaced by the next of ``tries`` drawn up front, so an iteration normally adds one
valid proxy; drawing them up front keeps the random stream independent of which ones fail (and lets a Dask
cluster evaluate them all at once with identical results).

Honest evaluation: fitness uses each table's SEARCH split, the run's best is the hall-of-fame member with
the best SELECT-split fitness (over several tables: the worst table's by default, ``select_by``), and only
the report (proxylab.search.report) touches the TEST split.
"""
from __future__ import annotations

import math
import sys
import time
from typing import Any, Dict, Optional, Sequence

import numpy as np

from proxylab.allocate.proxy_allocator import resolve_proxy
from proxylab.errors import ProxylabError
from proxylab.search.alloc_check import (DEFAULT_FRACTIONS, Candidate, allocation_check, calib_measures,
                                         check_fractions, chosen_row)
from proxylab.search.dispatch import Dispatcher, make_dispatcher
from proxylab.search.evaluate import FitnessEvaluator, Outcome
from proxylab.search.genome import Genome, GenomeSampler
from proxylab.search.rundir import RunFolder, run_fingerprint, stats_digest
from proxylab.search.space import SearchSpace, load_space
from proxylab.search.state import Individual, SearchState


def _positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ProxylabError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_hessian(space, tables, stats) -> None:
    """A space that samples htrace / heig needs every table's stats computed with the Hessian: refuse now, not
    when the first candidate that uses them comes up, minutes into the run."""
    wanted = sorted(n for n in space.group("scalar_inputs") if n in ("htrace", "heig"))
    if not wanted or (space.scalar_head <= 0 and "scalar" not in space.structures):
        return  # scalar inputs are drawn only by a scalar head or the scalar structure
    lacking = [t.name for t, st in zip(tables, stats) if not st.has_hessian]
    if lacking:
        raise ProxylabError(f"search space '{space.name}' samples {' and '.join(wanted)}, but the statistics of "
                            f"{', '.join(lacking)} were computed without the Hessian: recompute them with "
                            f"hessian=True, or use a space without those inputs")


class ProxySearch:
    """Evolve a proxy formula against bench tables (scikit-learn style: the constructor only stores).

    ``fitness`` combines per-table search-split Spearman during evolution; ``select_by`` combines per-table
    select-split Spearman when the run's best is picked from the hall of fame (both 'mean' or 'min'), or is
    'allocation': the hall of fame (ranked by the worst table's select Spearman) and the known proxies allocate
    bits at ``alloc_fractions`` of the size range on every table's network, and the candidate whose allocations
    are the most accurate on the calib split is the answer (proxylab.search.alloc_check).
    After ``fit``: ``best_proxy_`` (Proxy), ``best_formula_``, ``best_row_`` (the chosen candidate's row),
    ``best_origin_`` ('searched' or 'known'), ``hall_of_fame_`` (rows, best first by select fitness),
    ``allocation_check_`` (rows, or None), ``history_`` (one row per iteration), ``rejections_`` (counts by
    stage and reason, and ``early_share``), ``counters_``, ``wall_time_``.
    """

    def __init__(self, space="emq", pop: int = 50, iters: int = 1000, seed: int = 0, fitness: str = "mean",
                 select_by: str = "min", dps: bool = True, csp: bool = True, osp: bool = True, tries: int = 8,
                 hof_size: int = 20, probe_configs: int = 32, max_init_samples: Optional[int] = None, checkpoint_every: int = 10,
                 out_dir=None, resume: bool = False, scheduler: Optional[str] = None, progress: bool = False,
                 alloc_fractions: Sequence[float] = DEFAULT_FRACTIONS):
        self.space = space
        self.pop = pop
        self.iters = iters
        self.seed = seed
        self.fitness = fitness
        self.select_by = select_by
        self.dps = dps
        self.csp = csp
        self.osp = osp
        self.tries = tries
        self.hof_size = hof_size
        self.probe_configs = probe_configs
        self.max_init_samples = max_init_samples
        self.checkpoint_every = checkpoint_every
        self.out_dir = out_dir
        self.resume = resume
        self.scheduler = scheduler
        self.progress = progress
        self.alloc_fractions = alloc_fractions

    # ------------------------------------------------------------------------------------------ config
    def _validate(self) -> SearchSpace:
        _positive_int("pop", self.pop, 2)
        _positive_int("iters", self.iters, 0)
        _positive_int("tries", self.tries)
        _positive_int("hof_size", self.hof_size)
        _positive_int("probe_configs", self.probe_configs, 3)
        _positive_int("checkpoint_every", self.checkpoint_every)
        _positive_int("seed", self.seed, 0)
        if self.fitness not in ("mean", "min"):
            raise ProxylabError(f"fitness must be 'mean' or 'min' (how per-table Spearman combine), got {self.fitness!r}")
        if self.select_by not in ("mean", "min", "allocation"):
            raise ProxylabError(f"select_by must be 'mean' or 'min' (how per-table select-split Spearman combine "
                                f"to pick the run's best) or 'allocation', got {self.select_by!r}")
        if self.select_by == "allocation":
            check_fractions(self.alloc_fractions)
        return load_space(self.space)

    def config(self, space: SearchSpace, tables: Sequence) -> Dict[str, Any]:
        """The resolved configuration (written as config.yaml; its result-relevant part is the fingerprint)."""
        from proxylab.search.rundir import table_fingerprint

        return {
            "space": space.to_dict(),
            "tables": [{"name": t.name, "fingerprint": table_fingerprint(t)} for t in tables],
            "pop": int(self.pop), "iters": int(self.iters), "seed": int(self.seed), "fitness": self.fitness,
            "select_by": self.select_by,
            # only allocation selection reads the budget grid (other runs keep their fingerprints)
            **({"alloc_fractions": list(check_fractions(self.alloc_fractions))} if self.select_by == "allocation" else {}),
            "dps": bool(self.dps), "csp": bool(self.csp), "osp": bool(self.osp), "tries": int(self.tries),
            "hof_size": int(self.hof_size), "probe_configs": int(self.probe_configs),
            "max_init_samples": self._init_budget(),
            # below: how the run is executed, not what it computes
            "checkpoint_every": int(self.checkpoint_every), "scheduler": self.scheduler,
        }

    @property
    def select_combine(self) -> str:
        """How per-table select Spearman combine to rank the hall of fame (allocation selection: the worst)."""
        return "min" if self.select_by == "allocation" else self.select_by

    def _init_budget(self) -> int:
        return int(self.max_init_samples) if self.max_init_samples else max(2000, 100 * int(self.pop))

    # --------------------------------------------------------------------------------------------- fit
    def fit(self, tables: Sequence, stats: Optional[Sequence] = None,
            measures: Optional[Sequence] = None) -> "ProxySearch":
        """tables: BenchTables (or one); stats: their NetworkStats (default: proxylab.stats.stats_for_table);
        measures: with select_by='allocation', per table ``bits -> accuracy`` of an allocation (default: the
        table's network quantized with its protocol, measured on its data set's calib split)."""
        tables = [tables] if hasattr(tables, "split") else list(tables)
        if not tables:
            raise ProxylabError("ProxySearch.fit needs at least one bench table")
        space = self._validate()
        if stats is not None and len(stats) != len(tables):
            raise ProxylabError(f"got {len(stats)} NetworkStats for {len(tables)} tables: give one per table")
        if self.select_by == "allocation":  # a table that cannot be measured fails now, before any folder or evolution
            measures = list(measures) if measures is not None else calib_measures(tables)
            if len(measures) != len(tables):
                raise ProxylabError(f"got {len(measures)} measures for {len(tables)} tables: give one per table")
        config = self.config(space, tables)
        fingerprint = run_fingerprint(config)
        # the folder is checked (and refused) before the statistics, which can take minutes, are computed
        folder = RunFolder(self.out_dir, config, fingerprint, self.resume) if self.out_dir else None
        if stats is None:
            from proxylab.stats import stats_for_table

            stats = [stats_for_table(t) for t in tables]
            source = "default"
        else:
            stats = list(stats)
            source = "given"
        if folder:
            folder.start_session([{"source": source, "digest": stats_digest(st)} for st in stats])
        _check_hessian(space, tables, stats)
        # The search's own time (statistics are computed once and cached), over every session of a resumed run.
        earlier = folder.wall_time() if folder else 0.0
        started = time.perf_counter()
        state = folder.load_state() if folder else None
        state = state or SearchState(rng=np.random.default_rng(int(self.seed)))

        sampler = GenomeSampler(space, osp=self.osp)
        for ind in state.population:
            sampler.check(ind.genome)
        evaluator = FitnessEvaluator.for_tables(tables, stats, combine=self.fitness, csp=self.csp,
                                                probe_configs=self.probe_configs, probe_seed=int(self.seed))
        dispatcher = make_dispatcher(evaluator, state, space.max_size, self.scheduler)
        save = ((lambda: folder.save_state(state, earlier + time.perf_counter() - started)) if folder
                else (lambda: None))
        try:
            if state.iteration < 0:
                self._initialise(state, sampler, dispatcher)
                self._record(state, 0)
                state.iteration = 0
                save()
            self._evolve(state, sampler, dispatcher, save)
        finally:
            dispatcher.close()

        self._finalise(state, tables, stats, dispatcher, measures)
        self.wall_time_ = earlier + time.perf_counter() - started
        if folder:
            folder.write_outputs(self, tables, stats)
        return self

    # ----------------------------------------------------------------------------------------- phases
    def _admit(self, state: SearchState, genome: Genome, formula: str, out: Outcome, key: str, iteration: int) -> Individual:
        if key not in state.hall:
            state.hall[key] = {"formula": formula, "structure": genome.structure, "fitness": out.fitness,
                               "per_table": list(out.per_table), "iteration": iteration, "order": len(state.hall)}
        return Individual(genome, formula, key, out.fitness, out.per_table, out.probe_key)

    def _initialise(self, state: SearchState, sampler: GenomeSampler, dispatcher: Dispatcher) -> None:
        """Valid random population. Genomes are drawn in chunks of 2*pop (a Dask batch); any failure to find
        enough valid proxies within the sample budget means the space (or the tables) allow almost none."""
        budget, chunk = self._init_budget(), 2 * int(self.pop)
        while len(state.population) < self.pop:
            if state.init_samples >= budget:
                raise ProxylabError(
                    f"only {len(state.population)} distinct valid proxies in {state.init_samples} random samples of "
                    f"search space '{sampler.space.name}' (need pop={self.pop}): the space allows no (or almost "
                    f"no) valid tree for these tables. Widen the space (more inputs/ops) or lower --pop")
            genomes = [sampler.sample(state.rng) for _ in range(chunk)]
            formulas = [sampler.formula(g) for g in genomes]
            dispatcher.prefetch(formulas)
            for g, f in zip(genomes, formulas):
                if len(state.population) >= self.pop or state.init_samples >= budget:
                    break
                state.init_samples += 1
                member = self._valid_newcomer(state, dispatcher, g, f, 0)
                if member is not None:
                    state.population.append(member)

    def _valid_newcomer(self, state: SearchState, dispatcher: Dispatcher, genome: Genome, formula: str,
                        iteration: int) -> Optional[Individual]:
        """The candidate as a population member, or None when it is rejected or behaves exactly like a
        member already there (a clone adds nothing but would let one proxy take the population over)."""
        out, key = dispatcher.resolve(formula)
        if not out.valid:
            return None
        ind = self._admit(state, genome, formula, out, key, iteration)
        if ind.identity in {m.identity for m in state.population}:
            state.counters["duplicates"] += 1
            return None
        return ind

    def _first_valid(self, dispatcher: Dispatcher, genomes, formulas, state, iteration) -> Optional[Individual]:
        for g, f in zip(genomes, formulas):
            ind = self._valid_newcomer(state, dispatcher, g, f, iteration)
            if ind is not None:
                return ind
        return None

    def _evolve(self, state: SearchState, sampler: GenomeSampler, dispatcher: Dispatcher, save) -> None:
        from tqdm.auto import tqdm

        rng, pop = state.rng, state.population
        n_parents = max(2, int(self.pop) // 2)
        bar = tqdm(total=int(self.iters), initial=state.iteration, disable=not self.progress,
                   desc="search", unit="it", dynamic_ncols=True)
        try:
            for it in range(state.iteration + 1, int(self.iters) + 1):
                order = np.argsort([-ind.fitness for ind in pop], kind="stable")
                top = order[:n_parents]
                children = []
                for _ in range(self.tries):
                    i, j = rng.choice(top, size=2, replace=False)
                    child = sampler.crossover(pop[i].genome, pop[j].genome, rng)
                    children.append(sampler.mutate(child, rng))
                newcomers = [sampler.sample(rng) for _ in range(self.tries)] if self.dps else []
                child_f = [sampler.formula(g) for g in children]
                new_f = [sampler.formula(g) for g in newcomers]
                dispatcher.prefetch(child_f + new_f)
                entrants = [self._first_valid(dispatcher, children, child_f, state, it),
                            self._first_valid(dispatcher, newcomers, new_f, state, it)]
                entrants = [e for e in entrants if e is not None]
                if entrants:
                    best = max(entrants, key=lambda e: e.fitness)  # ties: the offspring (first) wins
                    pop.append(best)
                    worst = int(np.argmin([ind.fitness for ind in pop]))  # ties: the oldest leaves
                    pop.pop(worst)
                state.iteration = it
                self._record(state, it)
                if it % self.checkpoint_every == 0 or it == self.iters:
                    save()
                bar.update(1)
                row = state.history[-1]
                bar.set_postfix(best=f"{row['best_fitness']:.4f}", rejected=f"{row['rejected_share']:.0%}",
                                cache_hits=row["cache_hits"], refresh=False)
        finally:
            bar.close()

    def _record(self, state: SearchState, iteration: int) -> None:
        fit = np.array([ind.fitness for ind in state.population])
        best = state.population[int(np.argmax(fit))]
        c = state.counters
        early, full = state.rejected_total("early"), state.rejected_total("full")
        state.history.append({
            "iteration": iteration, "best_fitness": float(fit.max()), "mean_fitness": float(fit.mean()),
            "best_formula": best.formula, "unique": len({ind.key for ind in state.population}),
            "candidates": c["candidates"], "evaluations": c["evaluations"], "cache_hits": c["cache_hits"],
            "equivalent_hits": c["equivalent_hits"], "duplicates": c["duplicates"], "rejected_early": early, "rejected_full": full,
            "rejected_share": (early + full) / c["candidates"] if c["candidates"] else 0.0,
        })

    def _finalise(self, state: SearchState, tables, stats, dispatcher: Dispatcher, measures=None) -> None:
        """Re-rank the hall of fame on the SELECT split; the best there is the run's answer.

        With several tables the pick is by ``select_by`` (default: the worst table's select Spearman): a proxy
        that is merely good on average may owe it to one table, while one that holds on every seen table is
        the better bet for an unseen one (measured in benchmarks/search_quality.py, leave_one_out). With
        select_by='allocation' the answer is the allocation check's (``_select_by_allocation``)."""
        ranked = sorted(state.hall.items(), key=lambda kv: (-kv[1]["fitness"], kv[1]["order"]))[: self.hof_size]
        select = FitnessEvaluator.for_tables(tables, stats, split="select", combine=self.select_combine, csp=False)
        rows = []
        for rank, (key, rec) in enumerate(ranked):
            proxy, _ = dispatcher.parse(rec["formula"])
            out = select.evaluate(proxy)
            row = {"search_rank": rank + 1, "formula": rec["formula"], "hash": key, "structure": rec["structure"],
                   "search_fitness": rec["fitness"], "select_fitness": out.fitness if out.valid else math.nan,
                   "iteration": rec["iteration"]}
            for t, rho in zip(tables, rec["per_table"]):
                row[f"search_{t.name}"] = rho
            rows.append(row)
        order = sorted(range(len(rows)), key=lambda i: (-_finite_or(rows[i]["select_fitness"]), i))
        self.hall_of_fame_ = [rows[i] for i in order]
        best, self.best_origin_, self.allocation_check_ = self.hall_of_fame_[0], "searched", None
        if self.select_by == "allocation":
            best = self._select_by_allocation(tables, stats, measures)
        self.best_row_ = best
        self.best_formula_ = best["formula"]
        self.best_proxy_ = resolve_proxy(best["formula"])
        self.history_ = list(state.history)
        self.rejections_ = state.rejection_summary()
        self.counters_ = dict(state.counters, init_samples=state.init_samples)
        self.population_ = [ind.formula for ind in state.population]


    def _select_by_allocation(self, tables, stats, measures) -> Dict[str, Any]:
        """The hall-of-fame member or known proxy whose allocations are the most accurate (alloc_check)."""
        from proxylab.search.report import best_known, known_proxies

        _, _, known_select = best_known(tables, stats, self.select_combine)
        searched = [r["formula"] for r in self.hall_of_fame_]
        candidates = [Candidate(r["formula"], "searched", r["select_fitness"]) for r in self.hall_of_fame_]
        known = known_proxies()  # a known proxy the hall of fame already holds (same formula) is not checked twice
        candidates += [Candidate(name, "known", fit) for name, fit in known_select.items()
                       if str(known[name]) not in searched]
        if self.progress:  # minutes of ILPs and PTQ after the progress bar has finished: say what is running
            print(f"allocation check: {len(candidates)} candidates x {len(self.alloc_fractions)} budgets on "
                  f"{len(tables)} table(s), each allocation quantized and measured on the calib split...",
                  file=sys.stderr, flush=True)
        rows = allocation_check(candidates, tables, stats, self.alloc_fractions, measures, seed=int(self.seed))
        self.allocation_check_ = rows
        chosen = chosen_row(rows)
        self.best_origin_ = chosen["origin"]
        hof = next((r for r in self.hall_of_fame_ if r["formula"] == chosen["formula"]), None)
        if hof is None:  # a known proxy won: its search-split fitness, by the search's own rule, for comparison
            on_search = FitnessEvaluator.for_tables(tables, stats, split="search", combine=self.fitness, csp=False)
            out = on_search.evaluate(resolve_proxy(chosen["formula"]))
            hof = {"formula": chosen["formula"], "search_fitness": out.fitness if out.valid else math.nan,
                   "select_fitness": chosen["select_fitness"]}
        return {**dict(hof), "alloc_acc": chosen["alloc_acc"]}


def _finite_or(x: float, default: float = -math.inf) -> float:
    return x if math.isfinite(x) else default
