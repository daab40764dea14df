"""On-disk cache of NetworkStats: one ``<key>.pt`` (read back with ``torch.load(weights_only=True)``) plus a
``<key>.json`` sidecar holding the .pt file's sha256.

Writes go to a temporary file in the same folder and are renamed into place, the .pt before the .json, so
an interrupted write leaves either nothing or a .pt without a matching sidecar: both read as a miss and
are recomputed. A damaged or truncated entry also reads as a miss (with a warning), never as a crash.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import torch
import torch.nn as nn

from proxylab.utils import atomic_write_json, sha256_file

# Bump when what a key's entry contains changes, so old entries are never read as new ones.
FORMAT_VERSION = 1


def _update_with_tensor(h: "hashlib._Hash", t: torch.Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    if t.numel():
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def state_dict_sha256(model: nn.Module) -> str:
    """sha256 over every state_dict entry (name, dtype, shape, raw bytes), in name order."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        if isinstance(t, torch.Tensor):
            _update_with_tensor(h, t)
        else:
            h.update(repr(t).encode())
    return h.hexdigest()


def tensors_sha256(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        _update_with_tensor(h, t)
    return h.hexdigest()


def cache_key(parts: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of everything the statistics depend on."""
    payload = json.dumps({"format": FORMAT_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def entry_paths(cache_dir: Path, key: str):
    return cache_dir / f"{key}.pt", cache_dir / f"{key}.json"


def load_entry(cache_dir: Path, key: str) -> Optional[Dict[str, Any]]:
    """The stored dict for ``key``, or None when absent, incomplete or damaged."""
    data_path, side_path = entry_paths(cache_dir, key)
    if not data_path.exists() or not side_path.exists():
        return None
    try:
        side = json.loads(side_path.read_text())
        if side.get("format") != FORMAT_VERSION or side.get("key") != key:
            raise ValueError("sidecar belongs to another format or key")
        if sha256_file(data_path) != side.get("sha256"):
            raise ValueError("data file does not match its recorded sha256")
        data = torch.load(data_path, map_location="cpu", weights_only=True)
        if not isinstance(data, dict) or data.get("meta", {}).get("key") != key:
            raise ValueError("data file holds another entry")
        return data
    except Exception as exc:  # any damage means "recompute", whatever form it takes
        warnings.warn(f"stats cache entry {data_path} is unreadable ({exc}); recomputing it", stacklevel=3)
        return None


def save_entry(cache_dir: Path, key: str, data: Dict[str, Any]) -> Path:
    cache_dir.mkdir(parents=True, exist_ok=True)
    data_path, side_path = entry_paths(cache_dir, key)
    fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=f".{key}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(data, f)
            f.flush()
            os.fsync(f.fileno())
        digest = sha256_file(tmp)
        os.replace(tmp, data_path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    atomic_write_json(side_path, {"format": FORMAT_VERSION, "key": key, "sha256": digest,
                                  "layers": len(data["layer_names"]), "meta": data.get("meta", {})})
    return data_path
