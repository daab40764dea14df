"""NetworkStats accessors, bad input, stats_for_table and the memory bound on a ResNet-18."""
from __future__ import annotations

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
        (dict(hessian=True, hessian_tol="small"), "hessian_tol must be a number"),
        (dict(hessian=True, hessian_batch=0), "hessian_batch must be a positive integer"),
        (dict(hessian=True, hessian_probes=0), "hessian_probes must be a positive integer"),
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


# Bound for timm resnet18 (ImageNet stem, 3x32x32 inputs, batch 32, Hessian on): growth of the peak RSS of a
# fresh process over compute_stats. The kept tensors alone are 5 x 45 MB plus 3 x 45 MB of qerr.
RESNET18_PEAK_GROWTH_MIB = 1500
_MEMORY_SCRIPT = """
import json, resource, torch, timm
from proxylab.stats import compute_stats
torch.manual_seed(0)
net = timm.create_model("resnet18", pretrained=False, num_classes=10)
x = torch.randn(64, 3, 32, 32); y = torch.randint(0, 10, (64,))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
st = compute_stats(net, x, y, batch_size=32, hessian_probes=2, hessian_iters=3)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
acts = [st.tensor(i, "act") for i in range(len(st))]
print(json.dumps({"growth": after - before, "layers": len(st), "nbytes": st.nbytes,
                  "act_ok": all(a.numel() <= 32768 or a.shape[0] == 1 for a in acts)}))
"""


@pytest.mark.slow
def test_resnet18_memory_stays_bounded():
    import json
    import subprocess
    import sys

    pytest.importorskip("timm")
    out = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT], capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["layers"] == 21 and report["act_ok"]
    assert report["nbytes"] < 9 * 11.7e6 * 4
    assert report["growth"] < RESNET18_PEAK_GROWTH_MIB, report
