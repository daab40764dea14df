"""``proxylab allocate``: per-layer weight bits for a network under a size / BitOps budget."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

from proxylab.commands._base import Command, announce_stats, parse_bits_list
from proxylab.commands._network import add_network_arguments, load_network
from proxylab.errors import ProxylabError


class Allocate(Command):
    help = "choose per-layer bits under a size / BitOps budget"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_network_arguments(parser, data_help="data set for the statistics and --measure")
        parser.add_argument("--proxy", help="a known proxy's name or a formula (needed by the proxylab allocator)")
        parser.add_argument("--proxy-file", metavar="FILE",
                            help="read the proxy from a file instead, e.g. a search's runs/NAME/best_proxy.txt")
        parser.add_argument("--budget", action="append", required=True, metavar="KEY=VALUE",
                            help="size_mb=X and/or bitops=Y (repeat the flag or separate with commas)")
        parser.add_argument("--bits", default="2,3,4", help="allowed weight bit-widths (default 2,3,4)")
        parser.add_argument("--act-bits", type=int, default=8, help="activation bits used for BitOps (default 8)")
        parser.add_argument("--allocator", default="proxylab",
                            help="proxylab (default), uniform, hawq_v2, ompq, bparams, random, or 'all' to compare them")
        parser.add_argument("--measure", action="store_true", help="also measure test accuracy of the allocation (PTQ)")
        parser.add_argument("--protocol", help="PTQ protocol for --measure (default: the table's with --bench, else rtn)")
        parser.add_argument("--batch-size", type=int, default=64, help="calibration batch for the statistics (default 64)")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--act-max-elements", type=int, default=65536,
                            help="activation values kept per layer (OMPQ needs >= 3 images' worth on wide layers)")
        parser.add_argument("--no-cache", action="store_true", help="recompute the statistics instead of using the cache")
        parser.add_argument("--out", help="folder to write allocation.json (the answer and the resolved arguments)")
        parser.add_argument("--plot", metavar="FILE.png",
                            help="with --measure: size vs accuracy per allocator and the Pareto front (PNG)")

    def run(self, args: argparse.Namespace) -> Any:
        from proxylab.allocate import ALLOCATORS, AllocationProblem, parse_budget, run_allocator

        from proxylab.allocate.problem import validate_bit_choices

        if args.plot:
            if not args.measure:
                raise ProxylabError("--plot draws measured accuracy: add --measure")
            from proxylab.plots import check_plot_path

            check_plot_path(args.plot)  # fail before the slow statistics pass, not after
        args.proxy = _proxy_argument(args.proxy, args.proxy_file)
        budget = parse_budget(args.budget)
        bits = validate_bit_choices(parse_bits_list(args.bits))
        if args.allocator != "all":
            ALLOCATORS.get(args.allocator)  # unknown name -> error listing the known ones
        names = (sorted(ALLOCATORS.names(), key=lambda n: n != "proxylab") if args.allocator == "all"
                 else [args.allocator])
        if args.allocator == "all" and args.proxy is None:
            names = [n for n in names if n != "proxylab"]
        if "proxylab" in names and args.proxy is None:
            raise ProxylabError("the proxylab allocator needs --proxy NAME or --proxy 'formula' (see `proxylab proxy list`)")
        proxy_needs_hessian = False
        if args.proxy is not None:
            from proxylab.allocate import resolve_proxy

            proxy = resolve_proxy(args.proxy)  # a bad formula fails before the slow statistics pass
            proxy_needs_hessian = "proxylab" in names and proxy.uses_hessian

        model, dataset, source = load_network(args)
        _check_budget_cheaply(model, dataset, bits, args.act_bits, budget)
        # HAWQ-V2 and any proxy over htrace / heig (hawqv2, or a search's pick) need the Hessian statistics
        needs_hessian = "hawq_v2" in names or proxy_needs_hessian
        stats = _stats(model, dataset, bits, args, needs_hessian)
        problem = AllocationProblem.from_stats(stats, bits, args.act_bits)
        problem.check_feasible(budget)

        qn = None
        if args.measure:
            from proxylab.quant import QuantizedNetwork

            protocol = args.protocol or (_table_protocol(args.bench) if args.bench else "rtn")
            args.protocol = protocol  # resolved: allocation.json's arguments say how it was measured
            qn = QuantizedNetwork(model, dataset.calib.x, calib_size=256, bit_choices=tuple(problem.bit_choices),
                                  act_bits=args.act_bits, protocol=protocol)
        rows: List[Dict[str, Any]] = []
        answers = []
        for name in names:
            t0 = time.perf_counter()
            res = run_allocator(name, problem, budget, proxy=args.proxy, seed=args.seed)
            row = {"allocator": name, "method": res.method, "size_mb": res.size_mb, "bitops": res.bitops,
                   "score": res.score if res.score is not None else float("nan"),
                   "seconds": round(time.perf_counter() - t0, 3)}
            if qn is not None:
                qn.apply(list(res.bits))
                row["acc"] = float(qn.evaluate(dataset.test.x, dataset.test.y))
            row["bits"] = " ".join(str(b) for b in res.bits)
            rows.append(row)
            answers.append((res, row))

        if args.out:
            _write(Path(args.out), args, source, budget, answers)
        if args.plot:
            _plot(args, source, budget, rows)
        if len(answers) == 1:
            res, row = answers[0]
            out: Dict[str, Any] = {"network": source, "budget": budget.describe()}
            if qn is not None:
                out["protocol"] = args.protocol
            if res.extra.get("proxy"):
                out["proxy"] = res.extra["proxy"]
            out.update({k: v for k, v in row.items() if k != "bits"})
            out["layers"] = [{"layer": n, "params": int(p), "bits": b}
                             for n, p, b in zip(problem.layer_names, problem.params, res.bits)]
            return out
        return rows


def _proxy_argument(proxy, proxy_file):
    """--proxy or --proxy-file (the first non-empty, non-comment line of the file), never both."""
    if proxy_file is None:
        return proxy
    if proxy is not None:
        raise ProxylabError("give --proxy or --proxy-file, not both")
    path = Path(proxy_file)
    if path.is_dir():
        inside = path / "best_proxy.txt"
        hint = f": did you mean {inside}?" if inside.is_file() else "; a search writes one as <out>/best_proxy.txt"
        raise ProxylabError(f"--proxy-file {path} is a folder, not a file{hint}")
    if not path.is_file():
        raise ProxylabError(f"--proxy-file {path} does not exist; a search writes one as <out>/best_proxy.txt")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ProxylabError(f"--proxy-file {path} is not a text file: it must hold one proxy formula "
                            "(or known proxy name), like a search's <out>/best_proxy.txt") from None
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if not lines:
        raise ProxylabError(f"--proxy-file {path} holds no formula; write one proxy formula (or known name) in it")
    if len(lines) > 1:  # which one was meant? never guess
        raise ProxylabError(f"--proxy-file {path} holds {len(lines)} formulas; keep one (lines starting with # "
                            "are comments)")
    return lines[0]


def _table_protocol(name: str) -> str:
    from proxylab.bench import load_table

    return str(load_table(name).meta.get("protocol", {}).get("name", "rtn"))


def _check_budget_cheaply(model, dataset, bits, act_bits, budget) -> None:
    """An infeasible budget fails in a second, before the statistics pass (which can take minutes)."""
    from proxylab.allocate import AllocationProblem
    from proxylab.quant import layer_info

    info = layer_info(model, dataset.calib.x[:1])
    AllocationProblem([i.params for i in info], [i.macs for i in info], bits, act_bits).check_feasible(budget)


def _stats(model, dataset, bits, args, hessian: bool):
    from proxylab.stats import compute_stats, default_cache_dir

    announce_stats(f"{args.batch_size} calibration images of {dataset.name}", hessian, cached=not args.no_cache)
    return compute_stats(model, dataset.calib.x, dataset.calib.y, bit_choices=tuple(bits),
                         batch_size=args.batch_size, seed=args.seed, hessian=hessian,
                         act_max_elements=args.act_max_elements,
                         cache_dir=None if args.no_cache else default_cache_dir())


def _plot(args, source: str, budget, rows) -> None:
    from proxylab.plots import pareto

    background = None
    if args.bench:  # every configuration of the table in grey shows where the allocations sit among them
        from proxylab.bench import load_table

        t = load_table(args.bench)
        ours = (int(args.act_bits), args.protocol or _table_protocol(args.bench), tuple(parse_bits_list(args.bits)))
        theirs = (int(t.meta.get("act_bits", -1)), _table_protocol(args.bench), tuple(t.bit_choices))
        if ours == theirs:
            background = (t.size_mb, t.acc)
        else:  # accuracies measured under other settings would mislead as a backdrop
            print(f"plot: the table's configurations are left out (measured with act bits, protocol, bits {theirs}; "
                  f"these allocations with {ours})", file=sys.stderr)
    pareto(rows, args.plot, background=background, title=f"{source}: {budget.describe()}")


def _write(out: Path, args, source: str, budget, answers) -> None:
    from proxylab.utils import atomic_write_json

    resolved = {k: v for k, v in vars(args).items() if not callable(v)}
    payload = {
        "network": source,
        "budget": budget.to_dict(),
        "arguments": resolved,
        "allocations": [dict(res.to_dict(), **({"acc": row["acc"]} if "acc" in row else {})) for res, row in answers],
    }
    atomic_write_json(out / "allocation.json", payload)
