"""`proxylab quantize`: output on a real checkpoint, and one-line errors (exit 2) for bad input."""
import json

import pytest
import torch

from proxylab.cli import main


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from proxylab.nets import create_net, save_checkpoint

    torch.manual_seed(0)
    model = create_net("resnet20", num_classes=10, in_channels=1, image_size=8, width=0.25)
    out = tmp_path_factory.mktemp("ckpt")
    save_checkpoint(out, model, {"net": "resnet20", "data": "digits", "num_classes": 10, "in_channels": 1,
                                 "image_size": 8, "kwargs": {"width": 0.25}, "seed": 0, "epochs": 0, "test_acc": 0.1})
    return out, model


def _run(capsys, *argv):
    code = main(["quantize", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_quantize_reports_accuracy_size_bitops(checkpoint, capsys):
    from proxylab.quant import layer_info

    ckpt, model = checkpoint
    info = layer_info(model, torch.zeros(1, 1, 8, 8))
    bits = [2, 3, 4] * 7 + [4]
    code, out, err = _run(capsys, "--checkpoint", ckpt, "--bits", " ".join(map(str, bits)), "--layers",
                          "--format", "json")
    assert code == 0, err
    res = json.loads(out)
    assert 0.0 <= res["quant_acc"] <= 1.0 and 0.0 <= res["float_acc"] <= 1.0
    assert res["layers_quantized"] == len(info) == 22
    assert res["size_mb"] == pytest.approx(sum(b * i.params for b, i in zip(bits, info)) / 8 / 2**20)
    assert res["bitops"] == pytest.approx(sum(b * i.macs * 8 for b, i in zip(bits, info)))
    assert [r["layer"] for r in res["layers"]] == [i.name for i in info]
    assert [r["bits"] for r in res["layers"]] == bits


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--bits", "4 4 4"], "expected 22 bit-widths.*conv1, layer1.0.conv1.*got 3"),
        (["--bits", " ".join(["4"] * 21 + ["17"])], "1..16"),
        (["--bits", "4 x 4"], "'x' is not an integer"),
        (["--bits", " ".join(["4"] * 22), "--protocol", "adaround"], "unknown quantization protocol 'adaround'"),
        (["--bits", " ".join(["4"] * 22), "--act-bits", "0"], "act-bits"),
    ],
)
def test_bad_input_exits_2_with_one_line(checkpoint, capsys, extra, message):
    import re

    ckpt, _ = checkpoint
    code, out, err = _run(capsys, "--checkpoint", ckpt, *extra)
    assert code == 2
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert re.search(message, err), err


def test_no_network_given(capsys):
    code, _, err = _run(capsys, "--bits", "4 4")
    assert code == 2 and "--checkpoint" in err


@pytest.mark.usefixtures("one_thread")  # tests/conftest.py
def test_quantize_bench_reproduces_the_tables_rows(capsys):
    """With --bench, quantize defaults to the table's protocol and calibrates as its builder did (the calib
    split's first calib_size images), so a row's bits give that row's accuracy exactly."""
    from proxylab.bench import load_table

    t = load_table("resnet20-mnist5k")
    assert t.meta["protocol"]["name"] == "bias_correction"  # not quantize's own default, rtn
    uniform3 = t.index_of((3,) * len(t.layer_names))  # the row rtn or train-split calibration got wrong
    sampled = len(t) // 2
    for i in (uniform3, sampled):
        code, out, err = _run(capsys, "--bench", "resnet20-mnist5k", "--bits", " ".join(map(str, t.bits[i])),
                              "--format", "json")
        assert code == 0, err
        res = json.loads(out)
        assert res["protocol"] == "bias_correction" and "note" not in res
        assert res["quant_acc"] == t.acc[i] == res["table_acc"], f"row {i}"
        assert res["calibration"] == "mnist5k calib split, first 256 images"


def test_quantize_bench_with_another_protocol_says_so(capsys):
    bits = " ".join(["4"] * 22)
    code, out, err = _run(capsys, "--bench", "resnet20-mnist5k", "--bits", bits, "--protocol", "rtn", "--format", "json")
    assert code == 0, err
    res = json.loads(out)
    assert res["protocol"] == "rtn"
    assert "protocol rtn (the table's: bias_correction)" in res["note"], res["note"]


def test_quantize_refuses_more_calibration_images_than_the_split_holds(checkpoint, capsys):
    from proxylab.data import get_dataset

    ckpt, _ = checkpoint
    n_calib = len(get_dataset("digits").calib)
    code, _, err = _run(capsys, "--checkpoint", ckpt, "--bits", " ".join(["4"] * 22), "--calib", "100000")
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "--calib 100000" in err and f"digits calib split holds {n_calib}" in err, err


def test_quantize_on_data_of_other_channels_names_the_training_data(checkpoint, capsys):
    ckpt, _ = checkpoint  # resnet20 trained on digits: 1 channel; shapes has 3
    code, _, err = _run(capsys, "--checkpoint", ckpt, "--bits", " ".join(["4"] * 22), "--data", "shapes")
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "was trained on 'digits' (1 channel)" in err and "--data shapes has 3" in err, err
