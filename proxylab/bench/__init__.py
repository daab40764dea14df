"""MQ-Bench tables: real accuracies of a network quantized at many per-layer bit configurations.

A table is a folder (``table.csv`` + ``meta.json`` + the reference ``weights.pt``); ``load_table`` opens a
shipped table by name or any folder, ``build_table`` measures a new one, ``import_mqbench101`` converts the
MQ-Bench-101 release pickle.
"""
from proxylab.bench.table import BenchTable, list_tables, load_table, spearman

__all__ = ["BenchTable", "list_tables", "load_table", "spearman", "build_table", "import_mqbench101"]


def __getattr__(name):  # the builder and importer pull in torch / pickle handling only when used
    if name == "build_table":
        from proxylab.bench.builder import build_table

        return build_table
    if name == "import_mqbench101":
        from proxylab.bench.importer import import_mqbench101

        return import_mqbench101
    raise AttributeError(name)
