"""Importing a script of benchmarks/ in a test (benchmarks/ is not a package)."""
import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def load_bench_script(filename: str, module_name: str):
    """benchmarks/`filename` as a module named `module_name`, with benchmarks/ on sys.path while it loads (for
    its sibling `_results`)."""
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(module_name, BENCH / filename)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
    return module
