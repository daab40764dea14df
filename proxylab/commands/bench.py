"""`proxylab bench list | show | build | import`."""
from __future__ import annotations

from typing import Any, Dict, List

from proxylab.commands._base import Command, parse_bits_list
from proxylab.errors import ProxylabError


def parse_key_values(items: List[str], flag: str) -> Dict[str, Any]:
    """['width=0.25', 'stem=small'] -> {'width': 0.25, 'stem': 'small'} (ints, floats, true/false typed)."""
    out: Dict[str, Any] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ProxylabError(f"{flag} '{item}' must look like key=value, e.g. {flag} width=0.25")
        value: Any = text
        if text.lower() in ("true", "false"):
            value = text.lower() == "true"
        else:
            for cast in (int, float):
                try:
                    value = cast(text)
                    break
                except ValueError:
                    pass
        out[key] = value
    return out


def _table_row(t) -> Dict[str, Any]:
    s = t.meta.get("summary") or {}
    net = t.meta.get("network") or {}
    return {"name": t.name, "network": net.get("name", t.meta.get("network_description", "-")),
            "data": (t.meta.get("dataset") or {}).get("name", "-"), "rows": len(t), "layers": len(t.layer_names),
            "bits": ",".join(map(str, t.bit_choices)), "protocol": (t.meta.get("protocol") or {}).get("name", "-"),
            "acc_min": s.get("acc_min"), "acc_max": s.get("acc_max"), "noise_ceiling": s.get("noise_ceiling")}


class BenchList(Command):
    help = "list the shipped MQ-Bench tables"

    def run(self, args):
        from proxylab.bench import list_tables, load_table

        return [_table_row(load_table(name)) for name in list_tables()]


class BenchShow(Command):
    help = "describe one table: network, splits, noise ceiling"

    def add_arguments(self, parser):
        parser.add_argument("name", help="a shipped table name (see `proxylab bench list`) or a table folder")
        parser.add_argument("--layers", action="store_true", help="also list the layers with parameters and MACs")

    def run(self, args):
        from proxylab.bench import load_table

        t = load_table(args.name)
        m = t.meta
        out: Dict[str, Any] = _table_row(t)
        out["folder"] = str(t.folder)
        out["act_bits"] = m["act_bits"]
        out["float_acc"] = m.get("float_acc")
        out["acc_mean"] = (m.get("summary") or {}).get("acc_mean")
        out["spearman_size_acc"] = (m.get("summary") or {}).get("spearman_size_acc")
        out["size_mb_range"] = f"{t.size_mb.min():.4f}..{t.size_mb.max():.4f}"
        out["splits"] = " ".join(f"{s}={len(t.split(s))}" for s in ("search", "select", "test"))
        out["weights"] = m.get("weights") or "none (load_network unavailable)"
        out["command"] = m.get("command", "-")
        if args.layers:
            out["layers_table"] = [{"layer": n, "params": int(p), "macs": int(c)}
                                   for n, p, c in zip(t.layer_names, t.params, t.macs)]
        return out


class BenchBuild(Command):
    help = "build a table: quantize sampled configs, measure accuracy"
    interrupted = "interrupted; measured rows are saved: rerun the same command to continue"

    def add_arguments(self, parser):
        parser.add_argument("--net", help="a registered network to train (see `proxylab nets list`)")
        parser.add_argument("--data", required=True, help="an offline data set (see `proxylab data list`)")
        parser.add_argument("--bits", default="2,3,4", help="weight bit choices per layer (default 2,3,4)")
        parser.add_argument("--act-bits", type=int, default=8, help="activation bits (default 8)")
        parser.add_argument("--n", type=int, default=1000, help="sampled configurations besides the uniform ones")
        parser.add_argument("--seed", type=int, default=0, help="training, sampling, halves and splits seed")
        parser.add_argument("--out", required=True, help="output folder (resumed when it holds the same build)")
        parser.add_argument("--epochs", type=int, default=15, help="training epochs (ignored with --checkpoint)")
        parser.add_argument("--checkpoint", help="use a trained checkpoint folder (weights.pt + config.json)")
        parser.add_argument("--protocol", default="rtn", help="PTQ protocol from proxylab.quant.PROTOCOLS, or 'auto': try each on a few "
                            "configurations and keep the one whose accuracies spread most reliably")
        parser.add_argument("--per-tensor", action="store_true", help="one weight scale per tensor (default per channel)")
        parser.add_argument("--net-arg", action="append", default=[], metavar="KEY=VALUE",
                            help="network option, repeatable (e.g. --net-arg width=0.25 --net-arg stem=small)")
        parser.add_argument("--data-seed", type=int, default=0, help="data set split seed")
        parser.add_argument("--weights-dtype", default="float32", choices=("float32", "float16"),
                            help="storage of the shipped weights; float16 rounds the network before measuring")
        parser.add_argument("--calib-size", type=int, default=256, help="calibration images for activation ranges")
        parser.add_argument("--train-batch-size", type=int, default=64)
        parser.add_argument("--batch-size", type=int, default=500, help="evaluation batch size")
        parser.add_argument("--name", help="table name recorded in meta.json (default NET-DATA)")
        parser.add_argument("--scheduler", help="Dask scheduler address to spread configurations over a cluster")
        parser.add_argument("--chunk", type=int, default=4, help="configurations per Dask task")
        parser.add_argument("--threads", type=int, help="torch threads for this build (1 is fastest on a busy machine)")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")

    def run(self, args):
        from proxylab.bench.builder import BuildSettings, build_table

        if args.threads is not None:
            import torch

            if args.threads < 1:
                raise ProxylabError(f"--threads must be >= 1, got {args.threads}")
            torch.set_num_threads(args.threads)  # this command's process only
        settings = BuildSettings(
            net=args.net, data=args.data, bits=tuple(parse_bits_list(args.bits)), act_bits=args.act_bits, n=args.n,
            seed=args.seed, epochs=args.epochs, checkpoint=args.checkpoint, protocol=args.protocol,
            per_channel=not args.per_tensor, net_kwargs=parse_key_values(args.net_arg, "--net-arg"),
            data_seed=args.data_seed, weights_dtype=args.weights_dtype, calib_size=args.calib_size,
            train_batch_size=args.train_batch_size, name=args.name)
        t = build_table(args.out, settings, scheduler=args.scheduler, progress=not args.no_progress,
                        batch_size=args.batch_size, chunk=args.chunk)
        out = _table_row(t)
        out["folder"] = str(t.folder)
        out["float_acc"] = t.meta.get("float_acc")
        out["build_seconds"] = (t.meta.get("build") or {}).get("seconds")
        return out


class BenchImport(Command):
    help = "import an MQ-Bench-101 release pickle"

    def add_arguments(self, parser):
        parser.add_argument("pickle", help="the release file: {idx: {'bit_cfg': '(4, 3, ...)', 'acc': top-1 %%}}")
        parser.add_argument("--out", required=True, help="output table folder")
        parser.add_argument("--trust-pickle", action="store_true",
                            help="required: unpickling can run code, so only load a file you trust")
        parser.add_argument("--name", default="mqbench101-resnet18")
        parser.add_argument("--acc-scale", choices=("percent", "fraction"), default="percent")
        parser.add_argument("--on-duplicate", choices=("error", "mean", "first"), default="error")
        parser.add_argument("--split-seed", type=int, default=0)
        parser.add_argument("--overwrite", action="store_true", help="replace an existing table in --out")

    def run(self, args):
        from proxylab.bench.importer import import_mqbench101

        t = import_mqbench101(args.pickle, args.out, trust_pickle=args.trust_pickle, name=args.name,
                              acc_scale=args.acc_scale, on_duplicate=args.on_duplicate, split_seed=args.split_seed,
                              overwrite=args.overwrite)
        out = _table_row(t)
        out["folder"] = str(t.folder)
        return out
