"""The network a command works on, from exactly one of --net / --checkpoint / --bench (quantize, allocate)."""
from __future__ import annotations

import argparse
from typing import Any, Tuple

from proxylab.errors import ProxylabError


def add_network_arguments(parser: argparse.ArgumentParser, data_help: str) -> None:
    src = parser.add_argument_group("network (one of)")
    src.add_argument("--net", help="a registered network name (with --weights and --data) or path/file.py:factory")
    src.add_argument("--checkpoint", help="a checkpoint folder written by `proxylab train` (weights.pt + config.json)")
    src.add_argument("--bench", help="a bench table's reference network, e.g. resnet20-mnist5k")
    parser.add_argument("--weights", help="state_dict file for --net")
    parser.add_argument("--data", help=f"{data_help} (default: the checkpoint's / table's)")


def load_network(args: argparse.Namespace) -> Tuple[Any, Any, str]:
    """(model in eval mode, dataset, a description) from exactly one of --net / --checkpoint / --bench."""
    given = [k for k in ("net", "checkpoint", "bench") if getattr(args, k)]
    if len(given) != 1:
        raise ProxylabError("give exactly one of --net NAME|file.py:factory, --checkpoint DIR, --bench TABLE"
                            + (f" (got {', '.join('--' + g for g in given)})" if given else ""))
    from proxylab.data import get_dataset

    if args.bench:
        from proxylab.bench import load_table

        model, dataset, _ = load_table(args.bench).load_network()
        if args.data and args.data != dataset.name:
            dataset = get_dataset(args.data, seed=args.seed)
        return model, dataset, f"bench:{args.bench}"
    if args.checkpoint:
        from proxylab.nets import load_checkpoint

        model, config = load_checkpoint(args.checkpoint)
        data = args.data or config.get("data")
        if not data:
            raise ProxylabError(f"checkpoint '{args.checkpoint}' records no data set: pass --data NAME")
        return model.eval(), get_dataset(data, seed=args.seed), f"checkpoint:{args.checkpoint}"
    if not args.data:
        raise ProxylabError("--net needs --data NAME (the data set the network was trained on; see `proxylab data list`)")
    dataset = get_dataset(args.data, seed=args.seed)
    return network_from_spec(args.net, args.weights, dataset), dataset, f"net:{args.net}"


def network_from_spec(spec: str, weights, dataset):
    """--net: a registered name (built for ``dataset``'s classes, channels and size, ``weights`` required) or
    path/file.py:factory (``weights`` optional: a factory may load its own; without them it warns)."""
    if ":" in spec and spec.rsplit(":", 1)[0].endswith(".py"):
        from proxylab.nets.user import load_user_network, warn_if_untrained

        warn_if_untrained(spec, weights)
        return load_user_network(spec, weights=weights).eval()
    from proxylab.nets import create_net
    from proxylab.nets.checkpoint import load_weights, read_state_dict

    if not weights:
        raise ProxylabError(f"--net {spec} needs --weights W.pt: a proxy of untrained weights says nothing "
                            "about the trained network's accuracy")
    model = create_net(spec, num_classes=dataset.num_classes, in_channels=dataset.in_channels,
                       image_size=dataset.image_size)
    load_weights(model, read_state_dict(weights), source=f"weights '{weights}'")
    return model.eval()
