import pickle

import numpy as np
import pytest

from proxylab.bench import load_table
from proxylab.bench.importer import import_mqbench101, resnet18_imagenet_layers
from proxylab.errors import ProxylabError

# MQ-Bench-101's published per-position parameter counts (BatchNorm weight+bias included, downsample convs
# folded into positions 6, 10, 14): an independent oracle for the layer mapping.
PUBLISHED_POSITION_PARAMS = [9536, 36992, 36992, 36992, 36992, 73984, 156160, 147712, 147712, 295424, 623616,
                             590336, 590336, 1180672, 2492416, 2360320, 2360320, 513000]


def _release(n=40, seed=0):
    rng = np.random.default_rng(seed)
    data, seen = {}, set()
    while len(data) < n:
        bits = tuple(int(b) for b in rng.choice([2, 3, 4], size=18))
        if bits in seen:
            continue
        seen.add(bits)
        data[len(data)] = {"bit_cfg": str(bits), "acc": float(40 + 2 * np.mean(bits) * 5 + rng.normal(0, 1))}
    return data


def _write(path, data):
    with open(path, "wb") as f:
        pickle.dump(data, f)
    return path


def test_positions_map_onto_resnet18_modules_with_shared_downsample_bits():
    names, params, macs, positions = resnet18_imagenet_layers()
    assert len(names) == 21 and len(positions) == 18
    assert positions[6] == ["layer2.0.conv2", "layer2.0.downsample.0"]
    assert positions[10] == ["layer3.0.conv2", "layer3.0.downsample.0"]
    assert positions[14] == ["layer4.0.conv2", "layer4.0.downsample.0"]
    assert sorted(n for g in positions for n in g) == sorted(names)
    by_name = dict(zip(names, params))
    assert [sum(by_name[n] for n in g) for g in positions] == PUBLISHED_POSITION_PARAMS
    # the published size range: 2.79 MiB at all 2 bits, 5.57 MiB at all 4 bits
    assert 2 * sum(params) / 8 / 2**20 == pytest.approx(2.79, abs=0.005)
    assert 4 * sum(params) / 8 / 2**20 == pytest.approx(5.57, abs=0.005)
    assert macs[0] == 3 * 64 * 49 * 112 * 112 and macs[-1] == 512 * 1000


def test_torchvision_resnet18_agrees_with_the_layer_table():
    torchvision = pytest.importorskip("torchvision")
    import torch

    model = torchvision.models.resnet18(weights=None)
    names, params, macs, _ = resnet18_imagenet_layers()
    modules = dict(model.named_modules())
    found = {}

    def hook(name):
        def f(module, inputs, output):
            found[name] = output[0].numel() * module.weight[0].numel()
        return f

    for n in names:
        modules[n].register_forward_hook(hook(n))
    model.eval()(torch.zeros(1, 3, 224, 224))
    assert list(found) == names  # forward order, downsample after conv2
    for n, p, m in zip(names, params, macs):
        own = sum(t.numel() for t in modules[n].parameters())
        bn = 0 if n == "fc" else 2 * modules[n].out_channels
        assert own + bn == p, n
        assert found[n] == m, n


def test_import_produces_a_valid_table(tmp_path):
    data = _release()
    table = import_mqbench101(_write(tmp_path / "mq.pkl", data), tmp_path / "out", trust_pickle=True)
    assert len(table) == 40 and len(table.layer_names) == 21
    again = load_table(tmp_path / "out")  # the sha256 written by the importer verifies
    assert (again.acc == table.acc).all()
    names, params, macs, positions = resnet18_imagenet_layers()
    for idx, entry in data.items():
        cfg18 = tuple(int(x) for x in entry["bit_cfg"].strip("()").split(","))
        row = table.lookup(cfg18)  # 18 positions expand to 21 modules
        assert row["cfg_id"] == idx
        assert row["acc"] == pytest.approx(entry["acc"] / 100)
        per_module = dict(zip(names, row["bits"]))
        assert per_module["layer3.0.downsample.0"] == cfg18[10] == per_module["layer3.0.conv2"]
        assert row["size_mb"] == pytest.approx(sum(b * p for b, p in zip(row["bits"], params)) / 8 / 2**20)
        assert row["bitops"] == pytest.approx(8 * sum(b * m for b, m in zip(row["bits"], macs)))
        assert table.lookup(row["bits"]) == row
    assert np.isnan(table.noise_ceiling) and table.meta["summary"]["noise_ceiling"] is None
    with pytest.raises(ProxylabError, match="ships no network weights"):
        table.load_network()


def test_pickle_is_refused_without_trust(tmp_path):
    path = _write(tmp_path / "mq.pkl", _release(5))
    with pytest.raises(ProxylabError, match="mq.pkl is a pickle.*--trust-pickle"):
        import_mqbench101(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_file_that_is_not_a_pickle_is_named_as_such_not_as_an_untrusted_pickle(tmp_path):
    (tmp_path / "table.csv").write_text("cfg_id,bits,acc\n0,4 4,0.9\n")
    for trust in (False, True):
        with pytest.raises(ProxylabError, match="table.csv is not a pickle: .*--bench FOLDER"):
            import_mqbench101(tmp_path / "table.csv", tmp_path / "out", trust_pickle=trust)
    with pytest.raises(ProxylabError, match="is a folder"):
        import_mqbench101(tmp_path, tmp_path / "out")
    with pytest.raises(ProxylabError, match="cannot read .*Not a directory"):
        import_mqbench101(tmp_path / "table.csv" / "mq.pkl", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("entry, message", [
    ({"bit_cfg": "(4, 4)", "acc": 50.0}, "bit_cfg has 2 bit-widths"),
    ({"bit_cfg": str(tuple([4] * 18)), "acc": float("nan")}, "acc is nan"),
    ({"bit_cfg": "four", "acc": 50.0}, "bit_cfg .four. is not a list of integers"),
    ({"bits": "(4,)", "acc": 50.0}, "expected a dict with 'bit_cfg' and 'acc'"),
])
def test_bad_entries_name_the_file_and_entry(tmp_path, entry, message):
    data = _release(5)
    data[7] = entry
    with pytest.raises(ProxylabError, match=rf"mq.pkl entry 7: {message}"):
        import_mqbench101(_write(tmp_path / "mq.pkl", data), tmp_path / "out", trust_pickle=True)


def test_duplicates_error_by_default_and_merge_on_request(tmp_path):
    data = _release(5)
    data[9] = {"bit_cfg": data[2]["bit_cfg"], "acc": data[2]["acc"] + 2.0}
    path = _write(tmp_path / "mq.pkl", data)
    with pytest.raises(ProxylabError, match=r"entry 9: configuration .* duplicates entry 2"):
        import_mqbench101(path, tmp_path / "out", trust_pickle=True)
    merged = import_mqbench101(path, tmp_path / "out", trust_pickle=True, on_duplicate="mean")
    assert len(merged) == 5
    assert merged.lookup(merged.bits[2])["acc"] == pytest.approx((data[2]["acc"] + 1.0) / 100)


def test_fractions_mistaken_for_percent_are_caught(tmp_path):
    data = {i: {"bit_cfg": str(tuple([2 + i % 3] * 18)), "acc": 0.5 + 0.1 * i} for i in range(3)}
    path = _write(tmp_path / "mq.pkl", data)
    with pytest.raises(ProxylabError, match="--acc-scale fraction"):
        import_mqbench101(path, tmp_path / "out", trust_pickle=True)
    t = import_mqbench101(path, tmp_path / "out", trust_pickle=True, acc_scale="fraction")
    assert t.acc.tolist() == pytest.approx([0.5, 0.6, 0.7])


def test_existing_output_is_not_overwritten(tmp_path):
    path = _write(tmp_path / "mq.pkl", _release(5))
    import_mqbench101(path, tmp_path / "out", trust_pickle=True)
    before = (tmp_path / "out" / "table.csv").read_bytes()
    with pytest.raises(ProxylabError, match="already exists"):
        import_mqbench101(_write(tmp_path / "other.pkl", _release(6, seed=1)), tmp_path / "out", trust_pickle=True)
    assert (tmp_path / "out" / "table.csv").read_bytes() == before
