"""Reference weights that ship beside a table.

A table's accuracies are only meaningful with the exact weights that produced them, so weights are stored
as a plain state_dict (``torch.load(weights_only=True)``), their sha256 goes into meta.json, and fp16 storage
is used only after the network was rounded to fp16 *before* measuring (``round_weights_``): the shipped
half-precision file then reproduces the measured network bit for bit once cast back to float32.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from proxylab.bench import format as fmt
from proxylab.errors import ProxylabError, first_line
from proxylab.utils import atomic_write_bytes

WEIGHT_DTYPES = ("float32", "float16")


def _torch_dtype(name: str):
    import torch

    if name not in WEIGHT_DTYPES:
        raise ProxylabError(f"weights dtype '{name}' is not supported: use one of {', '.join(WEIGHT_DTYPES)}")
    return getattr(torch, name)


def round_weights_(model, dtype: str) -> None:
    """Round every floating parameter and buffer to ``dtype`` and back, in place (no-op for float32)."""
    import torch

    if dtype == "float32":
        return
    target = _torch_dtype(dtype)
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            if t.is_floating_point():
                t.copy_(t.to(target).to(t.dtype))


def save_weights(model, path: Path, dtype: str = "float32") -> None:
    import io

    import torch

    target = _torch_dtype(dtype)
    state = {k: (v.detach().to(target) if v.is_floating_point() else v.detach()).cpu().contiguous()
             for k, v in model.state_dict().items()}
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_weights_into(model, path: Path, data: Optional[bytes] = None) -> None:
    """Load ``path`` (or its bytes, already read, as a Dask worker receives them) into ``model``."""
    import io

    import torch

    try:
        state = torch.load(io.BytesIO(data) if data is not None else path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ProxylabError(f"{path} does not exist: the table's reference weights are missing") from None
    except Exception as e:  # a truncated or foreign file: say which one
        raise ProxylabError(f"{path} is not a readable weights file ({type(e).__name__}: {e})") from None
    own = model.state_dict()
    state = {k: (v.to(own[k].dtype) if k in own and v.is_floating_point() else v) for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ProxylabError(f"{path} does not fit the network recorded in meta.json: {first_line(e)}") from None


def build_network(network: Dict[str, Any]):
    from proxylab.nets import create_net

    return create_net(network["name"], num_classes=int(network["num_classes"]),
                      in_channels=int(network["in_channels"]), image_size=int(network["image_size"]),
                      **dict(network.get("kwargs") or {}))


def load_reference_network(table) -> Tuple[Any, Any, Dict[str, Any]]:
    meta = table.meta
    if not meta.get("weights") or not meta.get("network"):
        source = meta.get("source", {}).get("format", "an external release")
        raise ProxylabError(f"table '{table.name}' ships no network weights (it was imported from {source}), so "
                            "whatever needs the network (statistics, PTQ) needs your copy of it: `proxy eval`, "
                            "`allocate` and `quantize` take --net path/file.py:factory --weights W.pt --data NAME "
                            "(in Python: compute_stats on that model); `search` needs a table built by "
                            "`proxylab bench build`")
    if table.folder is None:
        raise ProxylabError(f"table '{table.name}' was built in memory and has no folder holding {fmt.WEIGHTS_FILE}")
    fmt.verify_sha256(table.folder, meta, [meta["weights"]])
    from proxylab.data import get_dataset

    model = build_network(meta["network"])
    load_weights_into(model, table.folder / meta["weights"])
    model.eval()
    dataset = get_dataset(meta["dataset"]["name"], seed=int(meta["dataset"].get("seed", 0)))
    config = {"table": table.name, "network": dict(meta["network"]), "dataset": dict(meta["dataset"]),
              "float_acc": meta.get("float_acc"), "protocol": meta.get("protocol"), "act_bits": meta["act_bits"],
              "bit_choices": list(meta["bit_choices"]), "layer_names": list(meta["layer_names"])}
    return model, dataset, config
