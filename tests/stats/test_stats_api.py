"""NetworkStats accessors, bad input, stats_for_table and the memory bound on a ResNet-18."""
from __future__ import annotations

import resource
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from proxylab.errors import ProxylabError
from proxylab.quant import layer_info
from proxylab.stats import NetworkStats, compute_stats, default_cache_dir, stats_for_table

FAST = dict(hessian=False)


def test_params_macs_and_accessors_by_index_or_name(tiny, data):
    x, y = data
    st = compute_stats(tiny, x, y, **FAST)
    infos = layer_info(tiny, x[:1])
    assert st.params.tolist() == [i.params for i in infos]
    assert st.macs.tolist() == [i.macs for i in infos]
    assert st.params.dtype == np.int64 and len(st) == st.num_layers == 3
    assert torch.equal(st.tensor("conv", "grad"), st.tensor(1, "grad"))
    assert torch.equal(st.tensor(-1, "weight"), st.tensor("head", "weight"))
    assert st.bit_choices == (2, 3, 4)


def test_to_and_nbytes(tiny, data):
    x, y = data
    st = compute_stats(tiny, x, y, **FAST)
    expected = sum(st.tensor(i, k).numel() * 4 for i in range(3)
                   for k in ("weight", "act", "grad", "virtual_grad", "fisher"))
    expected += sum(st.qerr(i, b).numel() * 4 for i in range(3) for b in st.bit_choices)
    assert st.nbytes == expected
    moved = st.to("meta")
    assert moved.tensor(0, "grad").device.type == "meta" and moved.qerr(0, 2).device.type == "meta"
    assert st.tensor(0, "grad").device.type == "cpu"  # the original is untouched
    assert moved.nbytes == st.nbytes and moved.layer_names == st.layer_names


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda st: st.tensor(3, "grad"), "out of range"),
        (lambda st: st.tensor("fc", "grad"), "no quantizable layer named 'fc'"),
        (lambda st: st.tensor(0, "gradient"), "unknown stats tensor 'gradient'"),
        (lambda st: st.scalar(0, "trace"), "unknown stats scalar"),
        (lambda st: st.qerr(0, 2.5), "bits must be an integer"),
        (lambda st: st.tensor(1.0, "grad"), "index or a module name"),
    ],
)
def test_accessor_mistakes_raise_clear_errors(tiny, data, call, match):
    x, y = data
    st = compute_stats(tiny, x, y, **FAST)
    with pytest.raises(ProxylabError, match=match):
        call(st)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(bit_choices=()), "bit_choices is empty"),
        (dict(bit_choices=(2, 17)), r"outside 1\.\.16"),
        (dict(bit_choices=(2, 2)), "repeat"),
        (dict(bit_choices=("two",)), "integers"),
        (dict(batch_size=0), "batch_size must be a positive integer"),
        (dict(act_images=-1), "act_images"),
        (dict(virtual="random"), "virtual must be one of"),
        (dict(hessian_trace_mode="exact", hessian=True), "hessian_trace_mode"),
        (dict(seed=1.5), "seed must be an integer"),
    ],
)
def test_bad_options_raise_clear_errors(tiny, data, kwargs, match):
    x, y = data
    with pytest.raises(ProxylabError, match=match):
        compute_stats(tiny, x, y, **{"hessian": False, **kwargs})


def test_bad_data_and_models_raise_clear_errors(tiny, data):
    x, y = data
    with pytest.raises(ProxylabError, match="outside the model's 3 classes"):
        compute_stats(tiny, x, y + 5, **FAST)
    with pytest.raises(ProxylabError, match="matching x"):
        compute_stats(tiny, x, y[:-1], **FAST)
    with pytest.raises(ProxylabError, match="integer class labels"):
        compute_stats(tiny, x, y.float(), **FAST)
    with pytest.raises(ProxylabError, match="torch tensors"):
        compute_stats(tiny, x.numpy(), y, **FAST)
    with pytest.raises(ProxylabError, match="nn.Module"):
        compute_stats("resnet20", x, y, **FAST)
    with pytest.raises(ProxylabError, match="Conv2d or Linear|no quantizable"):
        compute_stats(nn.Sequential(nn.Flatten(), nn.ReLU()), x, y, **FAST)


def test_fewer_samples_than_batch_size_uses_them_all(tiny, data):
    x, y = data
    st = compute_stats(tiny, x[:5], y[:5], batch_size=64, **FAST)
    assert st.meta["batch_size"] == 5


def test_stats_for_table_uses_calib_split_and_checks_layers(tiny, data, tmp_path, monkeypatch):
    x, y = data
    dataset = SimpleNamespace(calib=SimpleNamespace(x=x, y=y))

    class Table:  # the bench contract's surface that stats_for_table reads
        layer_names = ["stem", "conv", "head"]
        bit_choices = (2, 4)
        meta = {"name": "tiny-table"}

        def load_network(self):
            return tiny, dataset, {}

    st = stats_for_table(Table(), cache_dir=tmp_path, hessian=False, batch_size=10)
    direct = compute_stats(tiny, x, y, bit_choices=(2, 4), batch_size=10, hessian=False)
    assert st.bit_choices == (2, 4) and st.key == direct.key
    assert torch.equal(st.tensor(2, "grad"), direct.tensor(2, "grad"))
    assert st.meta["table"] == "tiny-table"

    monkeypatch.setenv("PROXYLAB_CACHE", str(tmp_path / "root"))
    assert default_cache_dir() == tmp_path / "root" / "stats"
    st2 = stats_for_table(Table(), hessian=False, batch_size=10)
    assert (tmp_path / "root" / "stats" / f"{st2.key}.pt").exists()

    Table.layer_names = ["stem", "head"]
    with pytest.raises(ProxylabError, match="rebuild the table"):
        stats_for_table(Table(), cache_dir=None, hessian=False)


def test_round_trip_through_dict(tiny, data):
    x, y = data
    st = compute_stats(tiny, x, y, hessian_probes=2, hessian_iters=2)
    back = NetworkStats.from_dict(st.to_dict())
    for i in range(3):
        assert torch.equal(back.tensor(i, "fisher"), st.tensor(i, "fisher"))
    assert back.scalars("hessian_eig").tolist() == st.scalars("hessian_eig").tolist()


# Bound for timm resnet18 (ImageNet stem, 3x32x32 inputs, batch 16, Hessian on): peak RSS growth of the
# process during compute_stats. Measured about 1 GiB; stored tensors are 5 x 45 MB + qerr.
RESNET18_PEAK_GROWTH_MIB = 2500


@pytest.mark.slow
def test_resnet18_memory_stays_bounded():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    net = timm.create_model("resnet18", pretrained=False, num_classes=10)
    x = torch.randn(32, 3, 32, 32)
    y = torch.randint(0, 10, (32,))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    st = compute_stats(net, x, y, batch_size=16, hessian_probes=2, hessian_iters=2)
    growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
    assert len(st) == 21
    assert all(st.tensor(i, "act").numel() <= 65536 or st.tensor(i, "act").shape[0] == 1 for i in range(21))
    assert growth < RESNET18_PEAK_GROWTH_MIB, growth
    assert st.nbytes < 8 * 11.7e6 * 4
