"""``proxylab proxy list`` and ``proxylab proxy eval``."""
from __future__ import annotations

import argparse
from typing import Any

from proxylab.commands._base import Command, announce_stats
from proxylab.errors import ProxylabError


class ProxyList(Command):
    help = "list the known proxies and the proxy primitives"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--primitives", action="store_true", help="list the proxy language instead")

    def run(self, args: argparse.Namespace) -> Any:
        from proxylab.proxy import KNOWN_PROXIES, describe_primitives

        if args.primitives:
            return describe_primitives()
        rows = []
        for name in KNOWN_PROXIES.names():
            p = KNOWN_PROXIES.get(name)
            rows.append({
                "name": name,
                "formula": str(p),
                "aggregator": p.aggregator,
                "decomposable": p.decomposable,
                "source": p.source,
            })
        return rows


class ProxyEval(Command):
    help = "rank correlations of a proxy against a table"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--bench", required=True, help="shipped table name (proxylab bench list) or table folder")
        what = parser.add_mutually_exclusive_group(required=True)
        what.add_argument("--proxy", help="a known proxy's name or a formula, e.g. 'mean_layers(mean(abs(bW)))'")
        what.add_argument("--all-known", action="store_true", help="every known proxy, side by side")
        parser.add_argument("--split", default="test", choices=("test", "select", "search", "all"),
                            help="which configurations of the table to rank (default: test)")
        parser.add_argument("--net", help="your own network: path/file.py:factory, or a registered name with "
                                          "--weights (default: the table's network)")
        parser.add_argument("--weights", help="state_dict file for --net")
        parser.add_argument("--data", help="data set for the statistics with --net (default: the table's)")
        parser.add_argument("--batch-size", type=int, default=64, help="calibration images for the statistics")
        parser.add_argument("--seed", type=int, default=0, help="seed of the calibration batch")
        parser.add_argument("--no-cache", action="store_true", help="recompute the statistics, do not read/write the cache")
        parser.add_argument("--plot", metavar="FILE.png",
                            help="also draw proxy score against accuracy (one panel per valid proxy) into FILE.png")

    def run(self, args: argparse.Namespace) -> Any:
        from proxylab.bench import load_table
        from proxylab.proxy import KNOWN_PROXIES, parse_proxy
        from proxylab.proxy.report import evaluate_many

        if args.plot:  # a missing matplotlib or a bad file name fails before the statistics pass
            from proxylab.plots import check_plot_path

            check_plot_path(args.plot)
        table = load_table(args.bench)
        proxies = [KNOWN_PROXIES.get(n) for n in KNOWN_PROXIES.names()] if args.all_known else [parse_proxy(args.proxy)]
        hessian = any(p.uses_hessian for p in proxies)
        stats = self._stats(args, table, hessian)
        rows = evaluate_many(proxies, table, stats, args.split)
        plotted = self._plot(args, proxies, rows, table, stats) if args.plot else False
        if args.all_known:
            return rows
        row = dict(rows[0])
        row["formula"] = str(proxies[0])
        if not row["valid"]:
            row["note"] = "invalid proxy: " + row["reason"]
        if args.plot:
            row["plot"] = args.plot if plotted else "not written: an invalid proxy has no scores to draw"
        return row

    def _plot(self, args, proxies, rows, table, stats) -> bool:
        """Scatter of every valid proxy's scores on the split against the measured accuracies."""
        import sys

        from proxylab.plots import proxy_scatter
        from proxylab.proxy.report import scores_on_table

        panels = {}
        for proxy, row in zip(proxies, rows):
            if not row["valid"]:
                continue
            formula = str(proxy)
            name = row["proxy"] if row["proxy"] == formula else f"{row['proxy']}: {formula}"
            panels[name] = scores_on_table(proxy, table, stats, args.split)
        skipped = [r["proxy"] for r in rows if not r["valid"]]
        if not panels:
            print(f"no picture written: no valid proxy to draw ({', '.join(skipped)})", file=sys.stderr)
            return False
        acc = table.acc[table.split(args.split)]
        proxy_scatter(panels, acc, args.plot, title=f"{table.name}: {args.split} split",
                      noise_ceiling=rows[0]["noise_ceiling"])
        note = f" (left out, invalid here: {', '.join(skipped)})" if skipped else ""
        print(f"wrote {args.plot}{note}", file=sys.stderr)
        return True

    def _stats(self, args, table, hessian: bool):
        from proxylab.stats import compute_stats, default_cache_dir, stats_for_table

        cache = None if args.no_cache else default_cache_dir()
        options = dict(batch_size=args.batch_size, seed=args.seed, hessian=hessian)
        if not args.net:
            if args.weights or args.data:
                raise ProxylabError("--weights and --data go with --net (your own network); drop them or add --net")
            if table.meta.get("weights"):  # (a table without them fails at once, with its own message)
                announce_stats(f"{table.name}'s network", hessian, cached=cache is not None)
            return stats_for_table(table, cache_dir=cache, **options)
        from proxylab.commands._network import network_from_spec
        from proxylab.data import get_dataset, list_datasets

        data_name = args.data or (table.meta.get("dataset") or {}).get("name")
        if not data_name:
            raise ProxylabError(f"table '{table.name}' names no data set: give --data for your network's statistics")
        if not args.data and data_name.partition("@")[0].strip() not in list_datasets():  # an MQ-Bench imagenet
            raise ProxylabError(f"table '{table.name}' was measured on '{data_name}', which proxylab has no offline "
                                f"copy of: give --data NAME for your network's statistics (see `proxylab data list`)")
        ds = get_dataset(data_name, seed=int((table.meta.get("dataset") or {}).get("seed", 0)))
        model = network_from_spec(args.net, args.weights, ds)
        announce_stats(f"{args.net}", hessian, cached=cache is not None)
        stats = compute_stats(model, ds.calib.x, ds.calib.y, bit_choices=table.bit_choices, cache_dir=cache, **options)
        if list(stats.layer_names) != list(table.layer_names):
            raise ProxylabError(
                f"your network's quantizable layers ({len(stats.layer_names)}) are not the table's "
                f"({len(table.layer_names)}): evaluate against a table measured on this network"
            )
        return stats
