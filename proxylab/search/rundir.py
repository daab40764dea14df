"""The output folder of a search: config.yaml first, a checkpoint while it runs, the results at the end.

Refusals protect finished work: an existing folder is never reused without --resume, and a resume folder
whose configuration differs (other tables, space, seed, sizes, switches) is refused before anything in it
is touched, with the differing keys named.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import yaml

from proxylab.errors import ProxylabError
from proxylab.search.state import SearchState
from proxylab.utils import atomic_write_json, atomic_write_text, check_out_not_a_file, rows_to_csv

CONFIG = "config.yaml"
STATS_ORIGIN = "stats_origin.json"
WALL_TIME = "wall_time.json"
EXECUTION_KEYS = ("checkpoint_every", "scheduler")  # how a run executes, not what it computes


def table_fingerprint(table) -> str:
    """Content of what the search reads from a table: configurations, accuracies and the split labels."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(table.bits, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(table.acc, dtype=np.float64).tobytes())
    for split in ("search", "select", "test"):
        h.update(np.ascontiguousarray(table.split(split), dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


def stats_digest(stats) -> str:
    """Content of the statistics a search scores with: layers, costs, bit choices, every tensor and scalar (the
    extras, derived from the same network and data, follow the tensors)."""
    h = hashlib.sha256()
    d = stats.to_dict()
    h.update(json.dumps([d["layer_names"], d["bit_choices"], d["params"], d["macs"]]).encode())
    for name in sorted(d["tensors"]):
        for t in d["tensors"][name]:
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    for name in sorted(d["scalars"]):
        h.update(name.encode())
        h.update(np.ascontiguousarray(d["scalars"][name], dtype=np.float64).tobytes())
    return h.hexdigest()[:16]


def _result_part(config: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in config.items() if k not in EXECUTION_KEYS and k != "fingerprint"}


def run_fingerprint(config: Dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(_result_part(config), sort_keys=True).encode()).hexdigest()[:16]


def _differences(old: Dict[str, Any], new: Dict[str, Any]) -> List[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            if isinstance(old.get(key), (dict, list)) or isinstance(new.get(key), (dict, list)):
                out.append(f"{key} differs")
            else:
                out.append(f"{key}: {old.get(key)!r} in the folder, {new.get(key)!r} now")
    return out


class RunFolder:
    def __init__(self, path, config: Dict[str, Any], fingerprint: str, resume: bool):
        self.path = Path(path)
        self.fingerprint = fingerprint
        self.resume = resume
        self._pending_config: Optional[Dict[str, Any]] = None
        config_file = self.path / CONFIG
        check_out_not_a_file(self.path)
        if resume:
            if not config_file.is_file():
                empty = not self.path.exists() or not any(self.path.iterdir())
                raise ProxylabError(f"--resume: {self.path} holds no {CONFIG}, so there is no search to resume; "
                                    + ("run without --resume to start one there" if empty else
                                       "it is not a search's folder either: choose another --out"))
            old = yaml.safe_load(config_file.read_text()) or {}
            if old.get("fingerprint") != fingerprint:
                diff = _differences(_result_part(old), _result_part(config)) or ["the configuration differs"]
                raise ProxylabError(f"--resume: {self.path} holds a search with another configuration "
                                    f"({'; '.join(diff)}); nothing was changed. Resume with the same options or "
                                    f"choose another --out")
            for stale in self.path.glob(".*.tmp"):  # a write the kill interrupted; the target file is whole
                stale.unlink()
            # same result part, so only how it runs (scheduler, ...) can differ: written by start_session
            self._pending_config = None if old == {**config, "fingerprint": fingerprint} else \
                {**config, "fingerprint": fingerprint}
        else:
            if self.path.is_dir() and any(self.path.iterdir()):
                raise ProxylabError(f"output folder {self.path} already exists and is not empty: add --resume to "
                                    f"continue the search in it, or choose another --out")
            self.path.mkdir(parents=True, exist_ok=True)
            atomic_write_text(config_file, yaml.safe_dump({**config, "fingerprint": fingerprint}, sort_keys=False))

    def start_session(self, origin: List[Dict[str, str]]) -> None:
        """Once the statistics are known, before any search work: refuse a resume with other statistics, then
        record what this session runs with (a new run's statistics origin; a resume's execution keys).

        The run's fitness cache and population were scored with its statistics. ``origin`` per table:
        {"source": "default" (the table's own, from the fingerprinted table) or "given", "digest": content}.
        A resume with other statistics would mix two sets of scores silently, so it is refused; the table's own
        statistics recomputed (a cleared cache, other threads: last-bit differences) are the same statistics."""
        path = self.path / STATS_ORIGIN
        if self.resume and path.is_file():
            try:
                old = json.loads(path.read_text())
                if not (isinstance(old, list) and len(old) == len(origin)
                        and all(isinstance(o, dict) and {"source", "digest"} <= set(o) for o in old)):
                    raise ValueError
            except ValueError:
                raise ProxylabError(f"--resume: {path} is damaged, so the statistics the run started with are "
                                    f"unknown; delete that file to resume without this check") from None
            for before, now in zip(old, origin):
                both_default = before["source"] == now["source"] == "default"
                if not both_default and before["digest"] != now["digest"]:
                    raise ProxylabError(
                        f"--resume: {self.path} was searched with other statistics ({before['source']} "
                        f"{before['digest']}; now {now['source']} {now['digest']}): its cached scores would mix with "
                        f"new ones. Resume with the statistics it started with, or choose another --out")
        elif not path.is_file():  # runs from before this file was kept are resumed as they are
            atomic_write_json(path, origin)
        if self._pending_config is not None:
            atomic_write_text(self.path / CONFIG, yaml.safe_dump(self._pending_config, sort_keys=False))
            self._pending_config = None

    def load_state(self):
        return SearchState.load(self.path, self.fingerprint)

    def save_state(self, state: SearchState, wall_time: float) -> None:
        state.save(self.path, self.fingerprint)
        # Beside the checkpoint, not in it: a resumed run's checkpoint stays byte-equal to an uninterrupted one's.
        atomic_write_json(self.path / WALL_TIME, {"wall_time_s": float(wall_time)})

    def wall_time(self) -> float:
        """Search time of the earlier sessions of this run, up to their last checkpoint (0 for a new run)."""
        path = self.path / WALL_TIME
        try:
            return float(json.loads(path.read_text())["wall_time_s"]) if path.is_file() else 0.0
        except (ValueError, KeyError, TypeError):  # damaged by hand: the time is a report, not a result
            return 0.0

    def write_outputs(self, search, tables, stats) -> None:
        from proxylab.search.report import results_table

        atomic_write_text(self.path / "best_proxy.txt", search.best_formula_ + "\n")
        atomic_write_text(self.path / "hall_of_fame.csv", rows_to_csv(search.hall_of_fame_))
        atomic_write_text(self.path / "history.csv", rows_to_csv(search.history_))
        if search.allocation_check_ is not None:
            atomic_write_text(self.path / "allocation_check.csv", rows_to_csv(search.allocation_check_))
        label = "searched" if search.best_origin_ == "searched" else "selected"
        results = results_table(search.best_proxy_, tables, stats, fitness=search.select_combine, label=label)
        search.results_ = results
        atomic_write_text(self.path / "results.csv", rows_to_csv(results))
        atomic_write_json(self.path / WALL_TIME, {"wall_time_s": float(search.wall_time_)})
        atomic_write_json(self.path / "summary.json", {
            "best_proxy": search.best_formula_, "best_origin": search.best_origin_, "selected_by": search.select_by,
            "rejections": _json_safe(search.rejections_),
            "counters": search.counters_, "wall_time_s": search.wall_time_,
        })


def _json_safe(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    return obj
