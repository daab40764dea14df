"""The ``proxylab`` command line: one command table, lazy imports, uniform output and errors.

Only the chosen command's module is imported (torch takes seconds to import; ``proxylab --help`` should not).
Every command takes ``--format table|json``. A ``ProxylabError`` prints one line on stderr and exits 2.
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
import threading
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

# command words -> ("module:Class", one-line help). Keep sorted by group; the help text is shown without
# importing the module.
_COMMANDS: Dict[str, Tuple[str, str]] = {
    "data list": ("proxylab.commands.data:DataList", "list the offline data sets and their splits"),
    "nets list": ("proxylab.commands.nets:NetsList", "list the registered networks"),
    "train": ("proxylab.commands.nets:Train", "train a reference network on an offline data set"),
    "quantize": ("proxylab.commands.quant:Quantize", "accuracy, size and BitOps of one bit configuration"),
    "bench list": ("proxylab.commands.bench:BenchList", "list the shipped MQ-Bench tables"),
    "bench show": ("proxylab.commands.bench:BenchShow", "describe one table: network, splits, noise ceiling"),
    "bench build": ("proxylab.commands.bench:BenchBuild", "build a table: quantize sampled configs, measure accuracy"),
    "bench import": ("proxylab.commands.bench:BenchImport", "import an MQ-Bench-101 release pickle"),
    "proxy list": ("proxylab.commands.proxy:ProxyList", "list the known proxies and the proxy primitives"),
    "proxy eval": ("proxylab.commands.proxy:ProxyEval", "rank correlations of a proxy against a table"),
    "search": ("proxylab.commands.search:Search", "evolve a proxy against one or more tables"),
    "allocate": ("proxylab.commands.allocate:Allocate", "choose per-layer bits under a size / BitOps budget"),
    "zoo build": ("proxylab.commands.zoo:ZooBuild", "train a model zoo, capture signatures, build its index"),
    "zoo signature": ("proxylab.commands.zoo:ZooSignature", "capture a black-box model's knowledge signature"),
    "zoo add": ("proxylab.commands.zoo:ZooAdd", "add a model (signature file) to a zoo index"),
    "zoo remove": ("proxylab.commands.zoo:ZooRemove", "remove a model from a zoo index by id"),
    "zoo list": ("proxylab.commands.zoo:ZooList", "list the models of a zoo index"),
    "zoo query": ("proxylab.commands.zoo:ZooQuery", "retrieve the models that suit a few labelled samples"),
    "zoo eval": ("proxylab.commands.zoo:ZooEval", "evaluate retrieval on held-out query tasks"),
    "zoo serve-model": ("proxylab.commands.zoo:ZooServeModel", "serve one model's predictions over HTTP (black box)"),
    "serve": ("proxylab.commands.serve:Serve", "run the model-zoo query service (HTTP)"),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own exit code is 2 as well; keep its usage line
        self.print_usage(sys.stderr)
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _overview(group: Optional[str] = None) -> str:
    """Every command, or (group) those of one group such as "zoo"."""
    names = [k for k in _COMMANDS if group is None or k.split()[0] == group]
    width = max(len(k) for k in names)
    usage = f"proxylab {group} COMMAND" if group else "proxylab COMMAND"
    lines = [f"usage: {usage} [options]   (proxylab COMMAND --help for a command's options)", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {_COMMANDS[name][1]}" for name in names]
    return "\n".join(lines)


def _find_command(argv: Sequence[str]) -> Tuple[Optional[str], List[str]]:
    """Longest run of leading words that names a command."""
    words: List[str] = []
    for tok in argv:
        if tok.startswith("-"):
            break
        words.append(tok)
    for n in range(len(words), 0, -1):
        name = " ".join(words[:n])
        if name in _COMMANDS:
            return name, list(argv[n:])
    return None, list(argv)


def _load(name: str):
    target, _ = _COMMANDS[name]
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)()


def _fmt(v: Any) -> str:
    if v is None:  # no value (JSON null): a dash in a table
        return "-"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.4f}" if abs(v) < 1e5 else f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return " ".join(_fmt(x) for x in v)
    return str(v)


def _finite(v: Any) -> Any:
    """NaN/inf as null: json.dumps would print NaN, which strict JSON parsers (jq, JavaScript) reject."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return v


def render_table(rows: List[Dict[str, Any]]) -> str:
    if not rows:
        return "(no rows)"
    cols: List[str] = []
    for r in rows:
        cols += [c for c in r if c not in cols]
    cells = [[_fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    out = ["  ".join(c.ljust(w) for c, w in zip(cols, widths)), "  ".join("-" * w for w in widths)]
    out += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(out)


def render(result: Any, fmt: str) -> str:
    if result is None:
        return ""
    if fmt == "json":
        return json.dumps(_finite(result), indent=2, default=str)
    if isinstance(result, list):
        return render_table(result)
    if isinstance(result, dict):
        parts = []
        for k, v in result.items():
            if isinstance(v, list) and v and isinstance(v[0], dict):
                parts.append(f"\n{k}:\n{render_table(v)}")
            else:
                parts.append(f"{k}: {_fmt(v)}")
        return "\n".join(parts)
    return str(result)


def _format_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


_warning_lock = threading.Lock()
_warning_users = [0, None]  # commands running now (main() may run in threads), the format to put back


def _short_warnings(on: bool) -> None:
    """One "warning: ..." line like the "error: ..." ones, not Python's file:line plus the warning's source line,
    while any command runs. formatwarning, not showwarning: pytest.warns and other recorders keep working."""
    with _warning_lock:
        if on:
            if _warning_users[0] == 0:
                _warning_users[1] = warnings.formatwarning
                warnings.formatwarning = _format_warning
            _warning_users[0] += 1
        else:
            _warning_users[0] -= 1
            if _warning_users[0] == 0:
                warnings.formatwarning = _warning_users[1]


def main(argv: Optional[Sequence[str]] = None) -> int:
    from proxylab.errors import ProxylabError

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_overview())
        return 0
    if argv[0] == "--version":
        from proxylab import __version__

        print(__version__)
        return 0
    name, rest = _find_command(argv)
    groups = {k.split()[0] for k in _COMMANDS if " " in k}
    if name is None and argv[0] in groups and (len(argv) == 1 or argv[1] in ("-h", "--help", "help")):
        if len(argv) > 1:  # `proxylab zoo --help`: that group's commands
            print(_overview(argv[0]))
            return 0
        print(_overview(argv[0]), file=sys.stderr)
        print(f"\nerror: 'proxylab {argv[0]}' needs one of the commands above", file=sys.stderr)
        return 2
    if name is None:
        print(_overview(), file=sys.stderr)
        print(f"\nerror: unknown command '{' '.join(argv[:2])}'", file=sys.stderr)
        return 2
    command = _load(name)
    parser = _Parser(prog=f"proxylab {name}", description=_COMMANDS[name][1])
    parser.add_argument("--format", choices=("table", "json"), default="table", help="output format")
    command.add_arguments(parser)
    args = parser.parse_args(rest)
    _short_warnings(True)
    try:
        result = command.run(args)
    except ProxylabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(getattr(command, "interrupted", "interrupted"), file=sys.stderr)
        return 130
    finally:
        _short_warnings(False)
    text = render(result, args.format)
    if text:
        try:
            print(text, flush=True)
        except BrokenPipeError:  # `proxylab ... | head`: the reader has what it wanted
            # Python flushes stdout again at exit and would print a traceback for the same closed pipe.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
