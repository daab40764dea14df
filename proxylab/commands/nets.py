"""`proxylab nets list` and `proxylab train`."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Dict, List

from proxylab.commands._base import Command
from proxylab.errors import ProxylabError
from proxylab.utils import check_out_not_a_file


def parse_net_args(items: List[str]) -> Dict[str, Any]:
    """['width=0.5', 'stem=small'] -> {'width': 0.5, 'stem': 'small'}; values are JSON when they parse as JSON
    (numbers, true/false, null, lists), plain strings otherwise."""
    out: Dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ProxylabError(f"--net-arg '{item}' must look like key=value, e.g. --net-arg width=0.5")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


class NetsList(Command):
    help = "list the registered networks"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("pattern", nargs="?", default="*", help="shell-style name filter, e.g. 'resnet*'")

    def run(self, args: argparse.Namespace) -> List[Dict[str, Any]]:
        from proxylab.nets import DEFAULT_INPUT, NETS, count_params, create_net, list_nets, net_options

        rows = []
        for name in list_nets(args.pattern):
            model = create_net(name, **DEFAULT_INPUT)
            rows.append({
                "name": name,
                "params": count_params(model),
                "options": " ".join(f"{k}={v}" for k, v in net_options(name).items()),
                "help": NETS.help(name),
            })
        if not rows:
            raise ProxylabError(f"no network matches '{args.pattern}'; known: {', '.join(list_nets())}")
        return rows


def check_fresh_out(path: str) -> None:
    """An --out folder must be new or empty: writing into one that holds files would replace or mix with
    someone's work (a previous checkpoint, a bench table's weights.pt)."""
    out = Path(path)
    check_out_not_a_file(out)
    if out.is_dir() and any(out.iterdir()):
        raise ProxylabError(f"output folder {out} already exists and is not empty: choose another --out, or delete it")


class Train(Command):
    help = "train a reference network on an offline data set"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--net", required=True, help="network name (see `proxylab nets list`)")
        parser.add_argument("--data", required=True, help="data set name (see `proxylab data list`)")
        parser.add_argument("--epochs", type=int, default=15)
        parser.add_argument("--seed", type=int, default=0, help="seeds the data split, the initial weights, shuffling and augmentation")
        parser.add_argument("--out", required=True, help="folder for weights.pt + config.json")
        parser.add_argument("--batch-size", type=int, default=64)
        parser.add_argument("--lr", type=float, default=None, help="peak SGD learning rate (default 0.1 * batch / 128)")
        parser.add_argument("--weight-decay", type=float, default=5e-4)
        parser.add_argument("--augment", default="auto", choices=("auto", "none", "crop", "crop_flip"),
                            help="auto: random shifts, none for position labels; never flips unless asked")
        parser.add_argument("--net-arg", action="append", default=[], metavar="KEY=VALUE",
                            help="network option, repeatable (e.g. --net-arg width=0.5 --net-arg stem=small)")
        parser.add_argument("--limit", type=int, default=None, help="train on a seeded random subset of N training images")
        parser.add_argument("--half", action="store_true", help="store the weights as fp16 (half the size)")
        parser.add_argument("--device", default="cpu")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")

    def run(self, args: argparse.Namespace) -> Dict[str, Any]:
        from proxylab.nets import NETS, count_params, create_net, save_checkpoint, train_net
        from proxylab.utils import seed_everything

        NETS.get(args.net)  # an unknown name fails before the data set is loaded
        if args.epochs < 1:
            raise ProxylabError(f"--epochs must be >= 1, got {args.epochs}")
        kwargs = parse_net_args(args.net_arg)
        check_fresh_out(args.out)  # before minutes of training, not after
        from proxylab.data import get_dataset

        ds = get_dataset(args.data, seed=args.seed)
        seed_everything(args.seed)  # initial weights
        model = create_net(args.net, ds.num_classes, in_channels=ds.in_channels, image_size=ds.image_size, **kwargs)
        result = train_net(model, ds, epochs=args.epochs, seed=args.seed, batch_size=args.batch_size, lr=args.lr,
                           device=args.device, progress=not args.no_progress, weight_decay=args.weight_decay,
                           augment=args.augment, limit=args.limit)
        config = {
            "net": args.net, "kwargs": kwargs, "num_classes": ds.num_classes, "in_channels": ds.in_channels,
            "image_size": ds.image_size, "data": args.data, "seed": args.seed, "epochs": args.epochs,
            # the network takes images normalised with these: whoever feeds it raw [0, 1] pixels (a zoo black box)
            # puts this normalisation in front (retrieval.blackbox._canonical_checkpoint)
            "mean": list(ds.mean), "std": list(ds.std),
            "batch_size": args.batch_size, "lr": result["lr"], "weight_decay": args.weight_decay,
            "augment": result["augment"], "limit": args.limit, "train_size": result["train_size"],
            "test_acc": result["test_acc"], "train_loss": result["train_loss"], "train_seconds": result["seconds"],
        }
        out = save_checkpoint(args.out, model.cpu(), config, half=args.half)
        return {
            "net": args.net, "data": args.data, "params": count_params(model), "epochs": args.epochs,
            "train_loss": result["train_loss"], "test_acc": result["test_acc"],
            "seconds": round(result["seconds"], 1),
            "seconds_per_epoch": round(result["seconds"] / args.epochs, 1), "out": str(out),
        }
