"""Bring your own network: ``"path/to/file.py:factory"`` names a Python file and a function in it that returns
an ``nn.Module``. The file is imported by path (it need not be on sys.path or inside a package)."""
from __future__ import annotations

import hashlib
import importlib.util
import sys
import warnings
from pathlib import Path
from typing import Any, Optional

import torch.nn as nn

from proxylab.errors import ProxylabError
from proxylab.utils import PathLike


def _import_file(path: Path):
    # A name derived from the absolute path: two files called model.py never share a module object.
    name = "proxylab_user_" + hashlib.sha1(str(path).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ProxylabError(f"cannot import '{path}' as Python source: give a .py file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look modules up by name while the file runs
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        sys.modules.pop(name, None)
        raise ProxylabError(f"importing '{path}' failed: {type(e).__name__}: {e}") from e
    return module


def warn_if_untrained(spec: str, weights: Optional[PathLike]) -> None:
    """A factory given without a weights file: its network may be untrained, and every figure from it
    meaningless. Not an error: a factory may load its own weights."""
    if weights is None:
        warnings.warn(f"no weights given for '{spec}': its network is used as the factory returns it (untrained, "
                      "unless the factory loads weights itself); pass --weights FILE", stacklevel=3)


def load_user_network(spec: str, weights: Optional[PathLike] = None, **factory_kwargs: Any) -> nn.Module:
    """Import ``file.py``, call ``factory(**factory_kwargs)``, load `weights` (a state_dict file) if given."""
    file_part, sep, fn_name = str(spec).rpartition(":")
    if not sep or not file_part or not fn_name or "/" in fn_name or "\\" in fn_name:
        raise ProxylabError(f"network spec '{spec}' must look like path/to/file.py:factory_function")
    path = Path(file_part).expanduser().resolve()
    if not path.is_file():
        raise ProxylabError(f"network file '{file_part}' does not exist (from spec '{spec}')")
    module = _import_file(path)
    factory = getattr(module, fn_name, None)
    if factory is None:
        found = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))
        raise ProxylabError(f"'{file_part}' defines no '{fn_name}'; callables it defines: {', '.join(found) or 'none'}")
    if not callable(factory):
        raise ProxylabError(f"'{fn_name}' in '{file_part}' is a {type(factory).__name__}, not a function that builds a network")
    try:
        model = factory(**factory_kwargs)
    except TypeError as e:
        raise ProxylabError(f"calling {fn_name}({', '.join(f'{k}={v!r}' for k, v in factory_kwargs.items())}) from '{file_part}' failed: {e}") from e
    if not isinstance(model, nn.Module):
        raise ProxylabError(f"'{fn_name}' in '{file_part}' returned a {type(model).__name__}; it must return a torch.nn.Module")
    if weights is not None:
        from proxylab.nets.checkpoint import load_weights, read_state_dict

        load_weights(model, read_state_dict(weights), source=f"weights '{weights}'")
    return model
