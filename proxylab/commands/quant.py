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


class Quantize(Command):
    help = "accuracy, size and BitOps of one bit configuration"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_network_arguments(parser, data_help="data set")
        parser.add_argument("--bits", required=True,
                            help="weight bits, one per quantizable layer in execution order, e.g. '4 4 3 2 ...' "
                                 "(run with --layers and any wrong-length list to see the layers)")
        parser.add_argument("--act-bits", default="8", help="activation bits of every layer input, or 'none' (default 8)")
        parser.add_argument("--protocol", default="rtn", help="PTQ protocol: rtn (default), mse, bias_correction")
        parser.add_argument("--per-tensor", action="store_true", help="one weight scale per tensor, not per channel")
        parser.add_argument("--calib", type=int, default=256, help="calibration images from the training split (default 256)")
        parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
        parser.add_argument("--seed", type=int, default=0, help="data split seed (default 0)")
        parser.add_argument("--layers", action="store_true", help="also print the per-layer table")

    def run(self, args: argparse.Namespace) -> Any:
        from proxylab.quant import PROTOCOLS, check_bits

        # Everything checkable without the network fails first, before seconds of loading and calibrating.
        bits = parse_bits_list(args.bits)
        for b in bits:
            check_bits(b, "--bits entry")
        act_bits = _act_bits(str(args.act_bits))
        protocol = PROTOCOLS.get(args.protocol)
        if args.calib < 1:
            raise ProxylabError(f"--calib must be >= 1 image, got {args.calib}")
        if args.device != "cpu":
            import torch

            if args.device.startswith("cuda") and not torch.cuda.is_available():
                raise ProxylabError(f"--device {args.device} asked for, but no CUDA device is available: use --device cpu")

        from proxylab.quant import QuantizedNetwork

        model, dataset, source = load_network(args)
        qn = QuantizedNetwork(model, dataset.train.x, bit_choices=tuple(sorted(set(bits))), act_bits=act_bits,
                              protocol=protocol, per_channel=not args.per_tensor, calib_size=args.calib,
                              device=args.device)
        cfg = qn.check_config(bits)
        test = dataset.test
        float_acc = qn.evaluate(test.x, test.y)
        qn.apply(cfg)
        quant_acc = qn.evaluate(test.x, test.y)
        out: Dict[str, Any] = {
            "network": source,
            "data": f"{dataset.name} test ({len(test)} images)",
            "protocol": protocol.name,
            "act_bits": "float" if act_bits is None else act_bits,
            "layers_quantized": len(qn),
            "float_acc": float_acc,
            "quant_acc": quant_acc,
            "size_mb": qn.size_mb(cfg),
            "float_size_mb": qn.size_mb([32] * len(qn)),
            "bitops": qn.bitops(cfg),
        }
        if args.layers:
            out["layers"] = qn.layer_table(cfg)
        return out
