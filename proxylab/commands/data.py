"""``proxylab data list``: the offline data sets, their classes, layout, split sizes and source."""
from __future__ import annotations

import argparse
from typing import Any, Dict, List

from proxylab.commands._base import Command


class DataList(Command):
    help = "list the offline data sets and their splits"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("pattern", nargs="?", default="*", help="shell-style filter on names, e.g. 'shapes*'")

    def run(self, args: argparse.Namespace) -> List[Dict[str, Any]]:
        # Reads the registry only: listing never loads or generates data.
        from proxylab.data import DATASETS
        from proxylab.errors import ProxylabError

        names = DATASETS.names(args.pattern)
        if not names:
            raise ProxylabError(f"no data set matches '{args.pattern}'; known: {', '.join(DATASETS.names())}")
        rows = []
        for name in names:
            spec = DATASETS.get(name)
            train, calib, test = spec.sizes
            rows.append({
                "name": name,
                "classes": spec.num_classes,
                "channels": spec.in_channels,
                "image_size": spec.image_size,
                "train": train,
                "calib": calib,
                "test": test,
                "source": spec.source,
                "installed": "yes" if spec.available() else f"no: {spec.install}",
            })
        return rows
