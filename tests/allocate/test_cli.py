"""`proxylab allocate` end to end on a tiny user network (file.py:factory) trained for a few steps on digits."""
import json
import re

import pytest
import torch

from proxylab.cli import main

FACTORY = '''
import torch.nn as nn

def tiny(num_classes=10):
    return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, stride=2, padding=1),
                         nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, num_classes))
'''


@pytest.fixture(scope="module")
def user_net(tmp_path_factory):
    from proxylab.data import get_dataset
    from proxylab.nets import load_user_network

    folder = tmp_path_factory.mktemp("net")
    (folder / "tiny.py").write_text(FACTORY)
    model = load_user_network(f"{folder / 'tiny.py'}:tiny")
    ds = get_dataset("digits")
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(60):  # a few steps: enough for the proxies to see trained-ish weights
        idx = torch.randint(0, len(ds.train), (64,))
        loss = torch.nn.functional.cross_entropy(model(ds.train.x[idx]), ds.train.y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.save(model.state_dict(), folder / "w.pt")
    return folder, model.eval(), ds


def _run(capsys, argv):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def _base(folder):
    return ["allocate", "--net", f"{folder / 'tiny.py'}:tiny", "--weights", str(folder / "w.pt"), "--data", "digits",
            "--no-cache", "--batch-size", "32"]


def test_allocate_prints_and_writes(user_net, capsys, tmp_path):
    folder, model, ds = user_net
    code, out, err = _run(capsys, _base(folder) + ["--proxy", "emq", "--budget", "size_mb=0.0009", "--measure",
                                                   "--out", str(tmp_path), "--format", "json"])
    assert code == 0, err
    res = json.loads(out)
    saved = json.loads((tmp_path / "allocation.json").read_text())
    bits = [r["bits"] for r in res["layers"]]
    assert saved["allocations"][0]["bits"] == bits and saved["budget"]["size_mb"] == 0.0009
    assert res["size_mb"] <= 0.0009 and res["method"] == "ilp" and "smul" in res["proxy"]
    assert res["protocol"] == saved["arguments"]["protocol"] == "rtn"  # how the accuracy was measured

    from proxylab.quant import QuantizedNetwork

    qn = QuantizedNetwork(model, ds.calib.x, calib_size=256, bit_choices=(2, 3, 4), act_bits=8, protocol="rtn")
    qn.apply(bits)
    assert res["acc"] == pytest.approx(qn.evaluate(ds.test.x, ds.test.y))
    assert res["size_mb"] == pytest.approx(qn.size_mb(bits)) and res["bitops"] == qn.bitops(bits)


def test_quantize_measures_an_allocation_as_allocate_measure_did(user_net, capsys):
    """Both calibrate on the calib split: the same bits give the same accuracy whichever command measured them."""
    folder, _, _ = user_net
    code, out, err = _run(capsys, _base(folder) + ["--proxy", "emq", "--budget", "size_mb=0.0009", "--measure",
                                                   "--format", "json"])
    assert code == 0, err
    res = json.loads(out)
    bits = " ".join(str(r["bits"]) for r in res["layers"])
    code, out, err = _run(capsys, ["quantize", "--net", f"{folder / 'tiny.py'}:tiny", "--weights", str(folder / "w.pt"),
                                   "--data", "digits", "--bits", bits, "--format", "json"])
    assert code == 0, err
    q = json.loads(out)
    assert q["quant_acc"] == pytest.approx(res["acc"]) and q["calibration"].startswith("digits calib split")


def test_allocate_all_allocators_table_output(user_net, capsys):
    folder, _, _ = user_net
    code, out, err = _run(capsys, _base(folder) + ["--allocator", "all", "--proxy", "emq",
                                                   "--budget", "size_mb=0.0009", "--budget", "bitops=30M"])
    assert code == 0, err
    for name in ("proxylab", "uniform", "hawq_v2", "ompq", "bparams", "random"):
        assert name in out


@pytest.mark.parametrize("extra,message", [
    (["--proxy", "emq", "--budget", "size_mb=0.00001"], "infeasible.*smallest configuration.*size_mb="),
    (["--proxy", "emq", "--budget", "bitops=1k"], "infeasible.*bitops="),
    (["--proxy", "emq", "--budget", "size_mb=1", "--bits", "2,3,17"], "outside 1..16"),
    (["--proxy", "emq", "--budget", "weight_mb=1"], "unknown budget key 'weight_mb'"),
    (["--proxy", "emq", "--budget", "size_mb=1", "--allocator", "greedy"], "unknown allocator 'greedy'"),
    (["--budget", "size_mb=1"], "needs --proxy"),
    (["--proxy", "mean_layers(mean(invert(sub(W, W))))", "--budget", "size_mb=1"], "cannot score this network"),
    (["--proxy", "mean_layers(mean(bX))", "--budget", "size_mb=1"], "bX"),
    (["--proxy", "mean_layers(bogus(", "--allocator", "uniform", "--budget", "size_mb=1"], "unknown primitive 'bogus'"),
    (["--proxy", "hawkv2", "--budget", "size_mb=1"], "unknown proxy 'hawkv2'; did you mean hawqv2"),
])
def test_bad_input_is_one_clear_line(user_net, capsys, extra, message):
    folder, _, _ = user_net
    code, out, err = _run(capsys, _base(folder) + extra)
    assert code == 2
    assert any(line.startswith("error:") for line in err.splitlines()), err
    assert re.search(message, err, re.S), err
    assert "Traceback" not in err


def test_proxy_file_gives_the_same_allocation_as_the_formula(user_net, capsys, tmp_path):
    folder, _, _ = user_net
    formula = "sum_layers(sneg(smul(params, mean(mul(F, pow2(Q))))))"
    (tmp_path / "best_proxy.txt").write_text(f"# written by a search\n{formula}\n")
    common = _base(folder) + ["--budget", "size_mb=0.0009", "--format", "json"]
    code_a, out_a, err_a = _run(capsys, common + ["--proxy-file", str(tmp_path / "best_proxy.txt")])
    code_b, out_b, err_b = _run(capsys, common + ["--proxy", formula])
    assert code_a == 0 and code_b == 0, err_a + err_b
    a, b = json.loads(out_a), json.loads(out_b)
    assert a["layers"] == b["layers"] and a["proxy"] == b["proxy"] == formula


@pytest.mark.parametrize("content,extra,message", [
    (None, [], "does not exist.*best_proxy.txt"),
    ("# nothing\n\n", [], "holds no formula"),
    ("emq\n", ["--proxy", "emq"], "not both"),
    ("emq\n# a comment\nfisher\n", [], "holds 2 formulas; keep one"),
    (b"PK\x03\x04\xff\xfe\x00binary", [], "is not a text file"),
])
def test_bad_proxy_file(user_net, capsys, tmp_path, content, extra, message):
    folder, _, _ = user_net
    path = tmp_path / "p.txt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    code, _, err = _run(capsys, _base(folder) + ["--proxy-file", str(path), "--budget", "size_mb=1"] + extra)
    assert code == 2 and re.search(message, err, re.S), err
    assert "\x03" not in err and "primitive" not in err  # no file bytes quoted back as a formula


def test_a_run_folder_as_proxy_file_points_to_its_best_proxy(user_net, capsys, tmp_path):
    folder, _, _ = user_net
    (tmp_path / "best_proxy.txt").write_text("emq\n")
    code, _, err = _run(capsys, _base(folder) + ["--proxy-file", str(tmp_path), "--budget", "size_mb=1"])
    assert code == 2 and f"is a folder, not a file: did you mean {tmp_path / 'best_proxy.txt'}?" in err, err


def test_a_proxy_over_the_hessian_gets_hessian_statistics(user_net, capsys):
    """hawqv2, or a search's pick over htrace / heig, allocates: the statistics include the Hessian it needs."""
    folder, _, _ = user_net
    for proxy in ("hawqv2", "sum_layers(smul(heig, mean(bW)))"):
        code, out, err = _run(capsys, _base(folder) + ["--proxy", proxy, "--budget", "size_mb=0.0009",
                                                       "--format", "json"])
        assert code == 0, err
        assert "with the Hessian" in err and json.loads(out)["size_mb"] <= 0.0009


def test_a_factory_without_weights_is_warned_about(user_net, capsys):
    folder, _, _ = user_net
    argv = [a for a in _base(folder) if a not in ("--weights", str(folder / "w.pt"))]
    with pytest.warns(UserWarning, match="no weights given for .*tiny.py:tiny.*untrained"):
        code, _, err = _run(capsys, argv + ["--proxy", "emq", "--budget", "size_mb=0.0009"])
    assert code == 0, err


def test_exactly_one_network_source(capsys):
    code, _, err = _run(capsys, ["allocate", "--proxy", "emq", "--budget", "size_mb=1"])
    assert code == 2 and "exactly one of --net" in err


def test_allocate_plot_draws_every_allocator(user_net, capsys, tmp_path):
    folder, model, ds = user_net
    png = tmp_path / "pareto.png"
    code, out, err = _run(capsys, _base(folder) + ["--proxy", "emq", "--budget", "size_mb=0.0009", "--measure",
                                                   "--allocator", "all", "--plot", str(png)])
    assert code == 0, err
    import matplotlib.image as mpimg

    img = mpimg.imread(png)
    assert img.ndim == 3 and img[..., :3].std() > 0.01  # something drawn, not a blank canvas


def test_allocate_plot_needs_measure(user_net, capsys, tmp_path):
    folder, model, ds = user_net
    code, out, err = _run(capsys, _base(folder) + ["--proxy", "emq", "--budget", "size_mb=0.0009",
                                                   "--plot", str(tmp_path / "p.png")])
    assert code == 2 and "--measure" in err


def test_plot_leaves_out_table_configurations_measured_under_other_settings(tmp_path, capsys):
    import argparse

    from proxylab.commands.allocate import _plot

    rows = [{"allocator": "proxylab", "size_mb": 0.09, "acc": 0.9}, {"allocator": "uniform", "size_mb": 0.1, "acc": 0.8}]
    args = argparse.Namespace(bench="resnet20-mnist5k", act_bits=4, protocol=None, bits="2,3,4",
                              plot=str(tmp_path / "p.png"))
    _plot(args, "resnet20", _budget(), rows)
    assert "left out" in capsys.readouterr().err and (tmp_path / "p.png").is_file()
    args.act_bits = 8  # the table's own settings: the backdrop is drawn, nothing is said
    _plot(args, "resnet20", _budget(), rows)
    assert "left out" not in capsys.readouterr().err


def _budget():
    from proxylab.allocate import parse_budget

    return parse_budget(["size_mb=0.1"])
