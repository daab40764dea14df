"""Checkpoints a person can read: ``weights.pt`` (a plain state_dict) beside ``config.json`` (how to rebuild it).

Loading never unpickles code (``torch.load(weights_only=True)``), and a weights file that does not fit the
network names the first key or shape that differs instead of PyTorch's wall of missing/unexpected keys.
"""
from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
import torch.nn as nn

from proxylab.errors import ProxylabError, first_line
from proxylab.utils import PathLike, atomic_write_bytes, atomic_write_json, read_head, sha256_bytes, sha256_file

WEIGHTS_NAME = "weights.pt"
CONFIG_NAME = "config.json"
_REQUIRED = ("net", "num_classes", "in_channels", "image_size")
_FP16_MAX = 65504.0


def save_checkpoint(out_dir: PathLike, model: nn.Module, config: Mapping[str, Any], half: bool = False) -> Path:
    """Write out_dir/weights.pt and out_dir/config.json; `half` stores floating tensors as fp16 (half the
    bytes; loading casts them back to the network's dtype). Returns out_dir."""
    config = dict(config)
    if "factory" not in config:
        missing = [k for k in _REQUIRED if k not in config]
        if missing:
            raise ProxylabError(f"checkpoint config lacks {', '.join(missing)}: it must say how to rebuild the network ({', '.join(_REQUIRED)})")
    state = {}
    for key, t in model.state_dict().items():
        t = t.detach().cpu()
        if half and t.is_floating_point():
            if t.numel() and float(t.abs().max()) > _FP16_MAX:
                raise ProxylabError(f"'{key}' holds values beyond fp16's range ({_FP16_MAX}): save without half=True")
            t = t.half()
        state[key] = t.clone()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / WEIGHTS_NAME, data)
    config.update(weights=WEIGHTS_NAME, weights_sha256=sha256_bytes(data), half=bool(half),
                  params=sum(p.numel() for p in model.parameters()))
    atomic_write_json(out / CONFIG_NAME, config)
    return out


def _paths(dir_or_weights: PathLike) -> Tuple[Path, Path]:
    path = Path(dir_or_weights)
    if path.is_dir():
        weights, config = path / WEIGHTS_NAME, path / CONFIG_NAME
    elif path.is_file():
        weights, config = path, path.parent / CONFIG_NAME
    else:
        raise ProxylabError(f"no checkpoint at '{path}': give a folder holding {WEIGHTS_NAME} + {CONFIG_NAME}, or a weights file beside a {CONFIG_NAME}")
    for p in (weights, config):
        if not p.is_file():
            raise ProxylabError(f"checkpoint '{path}' has no {p.name} (expected {p}); save it with proxylab.nets.save_checkpoint or `proxylab train`")
    return weights, config


def read_config(path: PathLike) -> Dict[str, Any]:
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ProxylabError(f"cannot read checkpoint config '{path}': {e}") from None
    if not isinstance(config, dict):
        raise ProxylabError(f"checkpoint config '{path}' must hold a JSON object, not {type(config).__name__}")
    return config


def build_net_from_config(config: Mapping[str, Any], base_dir: Optional[PathLike] = None) -> nn.Module:
    """Rebuild the (untrained) network a config describes: a registered net, or a user factory
    ``"file.py:fn"`` (relative to `base_dir`, normally the checkpoint folder)."""
    from proxylab.nets.zoo import create_net

    kwargs = dict(config.get("kwargs") or {})
    if "factory" in config:
        from proxylab.nets.user import load_user_network

        spec = str(config["factory"])
        file_part, _, fn = spec.rpartition(":")
        if base_dir is not None and file_part and not Path(file_part).is_absolute():
            spec = f"{Path(base_dir) / file_part}:{fn}"
        return load_user_network(spec, **kwargs)
    missing = [k for k in _REQUIRED if k not in config]
    if missing:
        raise ProxylabError(f"checkpoint config lacks {', '.join(missing)}; it needs {', '.join(_REQUIRED)} to rebuild the network")
    return create_net(str(config["net"]), int(config["num_classes"]), in_channels=int(config["in_channels"]),
                      image_size=int(config["image_size"]), **kwargs)


def read_state_dict(path: PathLike) -> Dict[str, torch.Tensor]:
    """A state_dict from a weights file; also accepts {"state_dict": ...} / {"model": ...} wrappers."""
    save_hint = "save one with torch.save(model.state_dict(), path)"
    head = read_head(path, 4, "weights file", "give the weights file inside it")
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):  # torch.save: a zip, or a legacy pickle
        raise ProxylabError(f"weights file '{path}' is not a PyTorch file (torch.save writes a zip archive); "
                            f"{save_hint}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling refusals and corrupt files arrive as many exception types
        if "Weights only load failed" in str(e):  # torch's text would advise weights_only=False: not here
            raise ProxylabError(f"weights file '{path}' holds Python objects besides tensors (a whole pickled "
                                "model?), which proxylab does not unpickle because unpickling can run code; "
                                f"{save_hint}") from None
        first = first_line(e)
        raise ProxylabError(f"cannot load weights '{path}' as a plain PyTorch state_dict ({type(e).__name__}"
                            f"{': ' + first if first else ''}); {save_hint}") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ProxylabError(f"weights file '{path}' does not hold a state_dict (a dict of tensors)")
    return obj


def load_weights(model: nn.Module, state: Mapping[str, torch.Tensor], source: str = "weights") -> nn.Module:
    """Load `state` into `model` strictly, casting fp16-stored tensors back; explain the first mismatch."""
    own = model.state_dict()
    for key in own:
        if key not in state:
            raise ProxylabError(f"{source} do not match the network: key '{key}' {tuple(own[key].shape)} is missing "
                                f"({len(own)} keys expected, {len(state)} given); were they saved from another network or options?")
        if tuple(state[key].shape) != tuple(own[key].shape):
            raise ProxylabError(f"{source} do not match the network: '{key}' has shape {tuple(state[key].shape)}, "
                                f"the network expects {tuple(own[key].shape)}; check the network's options (width, classes, channels)")
    extra = [k for k in state if k not in own]
    if extra:
        raise ProxylabError(f"{source} do not match the network: unexpected key '{extra[0]}' ({len(extra)} extra keys)")
    cast = {k: (v.to(own[k].dtype) if v.is_floating_point() else v) for k, v in state.items()}
    model.load_state_dict(cast, strict=True)
    return model


def load_checkpoint(dir_or_weights: PathLike, device: str = "cpu") -> Tuple[nn.Module, Dict[str, Any]]:
    """(model in eval mode, config) from a checkpoint folder or a weights file beside its config.json."""
    weights, config_path = _paths(dir_or_weights)
    config = read_config(config_path)
    expected = config.get("weights_sha256")
    if expected and sha256_file(weights) != expected:
        warnings.warn(f"{weights} differs from the file its config.json was written with (sha256 mismatch)", stacklevel=2)
    model = build_net_from_config(config, base_dir=config_path.parent)
    load_weights(model, read_state_dict(weights), source=f"weights '{weights}'")
    return model.to(device).eval(), config
