"""The on-disk cache: equal tensors on a hit, keys that follow weights/seed/options, damage read as a miss."""
from __future__ import annotations

import json
import os
import time

import pytest
import torch

from proxylab.stats import compute_stats
from proxylab.stats.cache import load_entry

KW = dict(batch_size=16, hessian_probes=4, hessian_iters=5)
KEYS = ("weight", "act", "grad", "virtual_grad", "fisher")


def entries(folder):
    return sorted(p.name for p in folder.iterdir() if p.suffix == ".pt")


def assert_same(a, b):
    assert a.layer_names == b.layer_names and a.bit_choices == b.bit_choices
    assert a.params.tolist() == b.params.tolist() and a.macs.tolist() == b.macs.tolist()
    for key in KEYS:
        for i in range(len(a)):
            assert torch.equal(a.tensor(i, key), b.tensor(i, key)), (key, i)
    for i in range(len(a)):
        for bits in a.bit_choices:
            assert torch.equal(a.qerr(i, bits), b.qerr(i, bits))
    assert a.scalars("hessian_trace").tolist() == b.scalars("hessian_trace").tolist()
    assert a.scalars("hessian_eig").tolist() == b.scalars("hessian_eig").tolist()


def test_hit_returns_equal_stats_much_faster(tiny, data, tmp_path):
    x, y = data
    t0 = time.perf_counter()
    first = compute_stats(tiny, x, y, cache_dir=tmp_path, **KW)
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    second = compute_stats(tiny, x, y, cache_dir=tmp_path, **KW)
    warm = time.perf_counter() - t0
    assert not first.meta["cache_hit"] and second.meta["cache_hit"]
    assert_same(first, second)
    assert warm < cold / 3, (warm, cold)
    assert len(entries(tmp_path)) == 1
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    # the file reads back with the safe loader alone
    data_file = tmp_path / entries(tmp_path)[0]
    assert isinstance(torch.load(data_file, weights_only=True), dict)


def test_key_follows_weights_seed_batch_and_options(tiny, data, tmp_path, tiny_factory):
    x, y = data
    base = compute_stats(tiny, x, y, cache_dir=tmp_path, **KW).key
    with torch.no_grad():
        tiny.head.weight[0, 0] += 1e-3
    moved = compute_stats(tiny, x, y, cache_dir=tmp_path, **KW).key
    buffer_only = tiny_factory(0)
    with torch.no_grad():
        buffer_only.bn.running_var[0] += 0.5
    keys = {
        base,
        moved,
        compute_stats(buffer_only, x, y, cache_dir=tmp_path, **KW).key,
        compute_stats(tiny, x, y, cache_dir=tmp_path, seed=1, **KW).key,
        compute_stats(tiny, x + 1e-3, y, cache_dir=tmp_path, **KW).key,
        compute_stats(tiny, x, y, cache_dir=tmp_path, **{**KW, "batch_size": 15}).key,
        compute_stats(tiny, x, y, cache_dir=tmp_path, act_images=2, **KW).key,
        compute_stats(tiny, x, y, cache_dir=tmp_path, **{**KW, "hessian_probes": 5}).key,
    }
    assert len(keys) == 8
    assert len(entries(tmp_path)) == 8
    # one sample: every seed draws the same batch, only the Hessian probes differ
    one = [compute_stats(tiny, x[:1], y[:1], seed=s, **KW).key for s in (0, 1)]
    assert one[0] != one[1]
    # bit choices only change the qerr made from the stored weight: same entry, no recompute
    other_bits = compute_stats(tiny, x, y, cache_dir=tmp_path, bit_choices=(4, 8), seed=1, **KW)
    assert other_bits.meta["cache_hit"] and other_bits.bit_choices == (4, 8)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "flip", "no_sidecar", "bad_sidecar"])
def test_damaged_entry_is_recomputed_not_crashed_on(tiny, data, tmp_path, damage):
    x, y = data
    good = compute_stats(tiny, x, y, cache_dir=tmp_path, **KW)
    data_file = tmp_path / f"{good.key}.pt"
    side_file = tmp_path / f"{good.key}.json"
    raw = data_file.read_bytes()
    if damage == "truncate":
        data_file.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        data_file.write_bytes(b"not a torch file")
    elif damage == "flip":
        mid = len(raw) // 2
        data_file.write_bytes(raw[:mid] + bytes([raw[mid] ^ 0xFF]) + raw[mid + 1:])
    elif damage == "no_sidecar":
        side_file.unlink()
    else:
        side_file.write_text("{ half a json")
    with pytest.warns(UserWarning, match="unreadable") if damage != "no_sidecar" else _no_warning():
        again = compute_stats(tiny, x, y, cache_dir=tmp_path, **KW)
    assert not again.meta["cache_hit"]
    assert_same(good, again)
    # the recompute repaired the entry
    assert load_entry(tmp_path, good.key) is not None
    assert compute_stats(tiny, x, y, cache_dir=tmp_path, **KW).meta["cache_hit"]


def test_interrupted_write_leaves_no_entry(tiny, data, tmp_path, monkeypatch):
    x, y = data

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        compute_stats(tiny, x, y, cache_dir=tmp_path, **KW)
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []
    assert not compute_stats(tiny, x, y, cache_dir=tmp_path, **KW).meta["cache_hit"]


def test_sidecar_records_the_entry(tiny, data, tmp_path):
    x, y = data
    st = compute_stats(tiny, x, y, cache_dir=tmp_path, **KW)
    side = json.loads((tmp_path / f"{st.key}.json").read_text())
    assert side["key"] == st.key and side["layers"] == 3
    assert side["meta"]["seed"] == 0 and side["meta"]["batch_size"] == 16


class _no_warning:
    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("error")

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


def test_entry_with_wrong_content_is_recomputed(tiny, data, tmp_path):
    from proxylab.stats.cache import save_entry

    x, y = data
    good = compute_stats(tiny, x, y, cache_dir=tmp_path, **KW)
    broken = good.to_dict()
    broken["tensors"]["grad"] = broken["tensors"]["grad"][:1]  # a valid file that holds the wrong thing
    save_entry(tmp_path, good.key, broken)
    with pytest.warns(UserWarning, match="does not hold valid statistics"):
        again = compute_stats(tiny, x, y, cache_dir=tmp_path, **KW)
    assert not again.meta["cache_hit"]
    assert_same(good, again)
