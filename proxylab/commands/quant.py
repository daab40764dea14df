"""``proxylab quantize``: accuracy, size and BitOps of one per-layer bit configuration."""
from __future__ import annotations

import argparse
from typing import Any, Dict, Optional

from proxylab.commands._base import Command, parse_bits_list
from proxylab.commands._network import add_network_arguments, load_network
from proxylab.errors import ProxylabError


def _act_bits(text: str) -> Optional[int]:
    if text.lower() in ("none", "fp", "float", "32"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise ProxylabError(f"--act-bits must be an integer in 1..16 or 'none' (float activations), got '{text}'") from None
    if not 1 <= value <= 16:
        raise ProxylabError(f"--act-bits must be in 1..16 (or 'none' for float activations), got {value}")
    return value


def _table_reference(name: str) -> Dict[str, Any]:
    """How the table's rows were measured (proxylab/bench/measure.py): the settings quantize must share for a
    row's bits to give that row's accuracy."""
    from proxylab.bench import load_table

    t = load_table(name)
    protocol = t.meta.get("protocol") or {}
    network = t.meta.get("network") or {}
    return {"table": t, "protocol": protocol.get("name", "rtn"), "act_bits": t.meta.get("act_bits", 8),
            "calib": int(protocol.get("calib_size", 256)), "per_channel": bool(protocol.get("per_channel", True)),
            "data": (t.meta.get("dataset") or {}).get("name"), "in_channels": network.get("in_channels")}


def _checkpoint_config(path: str) -> Dict[str, Any]:
    from pathlib import Path

    from proxylab.nets.checkpoint import CONFIG_NAME, read_config

    p = Path(path)
    return read_config((p if p.is_dir() else p.parent) / CONFIG_NAME)  # load_network checked it exists


def _settings_shown(protocol: str, act_bits: Optional[int], calib: int, per_channel: bool) -> Dict[str, Any]:
    return {"protocol": protocol, "act bits": "float" if act_bits is None else act_bits, "calibration images": calib,
            "weight scales": "per channel" if per_channel else "per tensor"}


class Quantize(Command):
    help = "accuracy, size and BitOps of one bit configuration"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_network_arguments(parser, data_help="data set")
        parser.add_argument("--bits", required=True,
                            help="weight bits, one per quantizable layer in execution order, e.g. '4 4 3 2 ...' "
                                 "(run with --layers and any wrong-length list to see the layers)")
        parser.add_argument("--act-bits", default=None,
                            help="activation bits of every layer input, or 'none' (default: the table's with --bench, else 8)")
        parser.add_argument("--protocol", default=None,
                            help="PTQ protocol: rtn, mse, bias_correction (default: the table's with --bench, else rtn)")
        parser.add_argument("--per-tensor", action="store_true",
                            help="one weight scale per tensor, not per channel (default: the table's with --bench)")
        parser.add_argument("--calib", type=int, default=None,
                            help="calibration images: the first N of the data set's calib split, as tables and "
                                 "`allocate --measure` calibrate (default: the table's count with --bench, else 256 "
                                 "or the whole split when it is smaller)")
        parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
        parser.add_argument("--seed", type=int, default=0, help="data split seed (default 0)")
        parser.add_argument("--layers", action="store_true", help="also print the per-layer table")

    def run(self, args: argparse.Namespace) -> Any:
        from proxylab.quant import PROTOCOLS, check_bits

        # Everything checkable without the network fails first, before seconds of loading and calibrating.
        bits = parse_bits_list(args.bits)
        for b in bits:
            check_bits(b, "--bits entry")
        if args.calib is not None and args.calib < 1:
            raise ProxylabError(f"--calib must be >= 1 image, got {args.calib}")
        # With --bench the table's own settings are the defaults, so that a row's bits reproduce its accuracy.
        ref = _table_reference(args.bench) if args.bench and not (args.net or args.checkpoint) else None
        defaults = ref or {"protocol": "rtn", "act_bits": 8, "per_channel": True}
        act_bits = defaults["act_bits"] if args.act_bits is None else _act_bits(str(args.act_bits))
        protocol = PROTOCOLS.get(args.protocol or defaults["protocol"])
        calib = args.calib  # None: the table's count, or 256, capped at the split once the data is loaded
        per_channel = False if args.per_tensor else defaults["per_channel"]
        if args.device != "cpu":
            import torch

            if args.device.startswith("cuda") and not torch.cuda.is_available():
                raise ProxylabError(f"--device {args.device} asked for, but no CUDA device is available: use --device cpu")

        from proxylab.quant import QuantizedNetwork

        model, dataset, source = load_network(args)
        # Every measurement calibrates on the calib split (tables: bench/measure.py; allocate --measure), so the
        # same bits give the same accuracy whichever command measured them. Like the builder, a count above the
        # split's size means the whole split (a digits table's 256 are its 200 images).
        calib_x = dataset.calib.x
        if ref is not None:
            ref["calib"] = min(ref["calib"], len(calib_x))
        if calib is None:
            calib = ref["calib"] if ref is not None else min(256, len(calib_x))
        notes = []
        if ref is not None:
            trained_on, channels, who = ref["data"], ref["in_channels"], f"table {args.bench}'s network"
            ours = _settings_shown(protocol.name, act_bits, calib, per_channel)
            theirs = _settings_shown(ref["protocol"], ref["act_bits"], ref["calib"], ref["per_channel"])
            notes += [f"{what} {ours[what]} (the table's: {theirs[what]})" for what in ours if ours[what] != theirs[what]]
        elif args.checkpoint:
            config = _checkpoint_config(args.checkpoint)
            trained_on, channels, who = config.get("data"), config.get("in_channels"), f"checkpoint {args.checkpoint}"
        else:
            trained_on = channels = who = None
        if args.data and trained_on and args.data != trained_on:
            # said up front, not as a shape error from inside the first forward pass
            if channels is not None and int(channels) != dataset.in_channels:
                raise ProxylabError(f"{who} was trained on '{trained_on}' ({channels} channel{'s' * (int(channels) != 1)}), "
                                    f"but --data {args.data} has {dataset.in_channels}: leave --data out to use "
                                    f"'{trained_on}', or give data with {channels}")
            notes.append(f"{who} was trained on '{trained_on}', measured here on --data {args.data}")
        if notes and ref is not None:
            notes.append("so quant_acc need not equal the table's acc")
        if calib > len(calib_x):
            raise ProxylabError(f"--calib {calib}: the {dataset.name} calib split holds {len(calib_x)} images; "
                                f"give --calib {len(calib_x)} or fewer")
        qn = QuantizedNetwork(model, calib_x, bit_choices=tuple(sorted(set(bits))), act_bits=act_bits,
                              protocol=protocol, per_channel=per_channel, calib_size=calib, device=args.device)
        cfg = qn.check_config(bits)
        test = dataset.test
        float_acc = qn.evaluate(test.x, test.y)
        qn.apply(cfg)
        quant_acc = qn.evaluate(test.x, test.y)
        out: Dict[str, Any] = {
            "network": source,
            "data": f"{dataset.name} test ({len(test)} images)",
            "calibration": f"{dataset.name} calib split, first {calib} images",
            "protocol": protocol.name,
            "act_bits": "float" if act_bits is None else act_bits,
            "layers_quantized": len(qn),
            "float_acc": float_acc,
            "quant_acc": quant_acc,
        }
        if ref is not None and tuple(cfg) in ref["table"]:
            out["table_acc"] = float(ref["table"].acc[ref["table"].index_of(cfg)])
        out.update({"size_mb": qn.size_mb(cfg), "float_size_mb": qn.size_mb([32] * len(qn)), "bitops": qn.bitops(cfg)})
        if notes:
            out["note"] = "; ".join(notes)
        if args.layers:
            out["layers"] = qn.layer_table(cfg)
        return out
