"""What every CLI command is: arguments plus a ``run`` that returns data (rendering is the CLI's job).

``run`` returns a list of dict rows (printed as a table), a dict (printed as ``key: value`` lines, where a
value that is a list of rows prints as a sub-table), or None. ``--format json`` prints the same data as JSON,
so scripts never parse the table.
"""
from __future__ import annotations

import argparse
from typing import Any


class Command:
    """Subclass, set ``help``, fill ``add_arguments`` and ``run``."""

    help: str = ""
    # What Ctrl-C prints: commands that keep finished work say how to continue it.
    interrupted: str = "interrupted"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:  # pragma: no cover - default no args
        pass

    def run(self, args: argparse.Namespace) -> Any:
        raise NotImplementedError


def parse_int_list(text: str, what: str) -> list:
    """'2,3,4' or '2 3 4' -> [2, 3, 4]; ProxylabError naming ``what`` and the bad token otherwise."""
    from proxylab.errors import ProxylabError

    tokens = text.replace(",", " ").split()
    if not tokens:
        raise ProxylabError(f"empty {what}: give integers such as '2,3,4'")
    out = []
    for t in tokens:
        try:
            out.append(int(t))
        except ValueError:
            raise ProxylabError(f"{what} entry '{t}' is not an integer (got '{text}')") from None
    return out


def parse_bits_list(text: str) -> list:
    """'2,3,4' or '4 4 3 ...' -> [2, 3, 4]."""
    return parse_int_list(text, "bit list")


def announce_stats(of: str, hessian: bool, cached: bool = True) -> None:
    """One stderr line before a statistics pass, which can run for minutes the first time with no other output."""
    import sys

    cost = "the Hessian can take several minutes" if hessian else "this can take a minute"
    how = f"read from the cache, or computed once and cached ({cost} the first time)" if cached else \
        f"computed, not cached ({cost})"
    print(f"statistics on {of}{' with the Hessian' if hessian else ''}: {how}...", file=sys.stderr)
