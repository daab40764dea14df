import json

import pytest
import torch

from proxylab.cli import main
from proxylab.commands.nets import parse_net_args
from proxylab.errors import ProxylabError


def test_nets_list_reports_every_network_with_its_parameter_count(capsys):
    from proxylab.nets import DEFAULT_INPUT, count_params, create_net, list_nets

    assert main(["nets", "list", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == list_nets()
    for r in rows:
        assert r["params"] == count_params(create_net(r["name"], **DEFAULT_INPUT))
        assert r["help"]
    assert main(["nets", "list", "resnet*"]) == 0
    table = capsys.readouterr().out
    assert "resnet20" in table and "vgg_small" not in table


def test_train_writes_a_checkpoint_that_reloads(tmp_path, capsys):
    from proxylab.data import get_dataset
    from proxylab.nets import evaluate, load_checkpoint

    out = tmp_path / "ck"
    argv = ["train", "--net", "resnet20", "--data", "digits", "--epochs", "1", "--seed", "1", "--limit", "128",
            "--batch-size", "32", "--net-arg", "width=0.25", "--out", str(out), "--no-progress", "--format", "json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["net"] == "resnet20" and result["out"] == str(out) and 0 <= result["test_acc"] <= 1
    model, config = load_checkpoint(out)
    assert config["kwargs"] == {"width": 0.25} and config["data"] == "digits" and config["train_size"] == 128
    assert config["test_acc"] == result["test_acc"]
    ds = get_dataset("digits", seed=1)
    assert evaluate(model, ds.test.x, ds.test.y) == pytest.approx(result["test_acc"], abs=1e-12)
    assert model.conv1.out_channels == 4
    assert config["mean"] == list(ds.mean) and config["std"] == list(ds.std)  # what raw-pixel callers put in front


@pytest.mark.parametrize("argv,message", [
    (["--net", "resnet2", "--data", "digits"], "unknown network 'resnet2'"),
    (["--net", "resnet20", "--data", "nosuchdata"], "nosuchdata"),
    (["--net", "resnet20", "--data", "digits", "--net-arg", "depth=3"], "no option 'depth'"),
    (["--net", "resnet20", "--data", "digits", "--net-arg", "width"], "key=value"),
    (["--net", "resnet20", "--data", "digits", "--epochs", "0"], "epochs"),
    (["--net", "resnet20", "--data", "digits", "--device", "cuda:7", "--limit", "8"], "device"),
])
def test_train_user_errors_exit_2_with_one_line(tmp_path, capsys, argv, message):
    if "cuda:7" in argv and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    code = main(["train", *argv, "--out", str(tmp_path / "x"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x" / "weights.pt").exists()


def test_parse_net_args_types_values():
    assert parse_net_args(["width=0.5", "stem=small", "head_features=640", "flag=true"]) == \
        {"width": 0.5, "stem": "small", "head_features": 640, "flag": True}
    with pytest.raises(ProxylabError, match="key=value"):
        parse_net_args(["=3"])


TINY_TRAIN = ["train", "--net", "resnet20", "--data", "digits", "--epochs", "1", "--limit", "32", "--batch-size", "32",
              "--net-arg", "width=0.25", "--no-progress"]


def test_train_refuses_an_out_that_holds_files_and_leaves_them_untouched(tmp_path, capsys):
    out = tmp_path / "ck"
    out.mkdir()  # an existing empty folder is a fine --out
    assert main([*TINY_TRAIN, "--out", str(out)]) == 0
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    # a second run (other seed: other weights) would replace the first run's checkpoint
    assert main([*TINY_TRAIN, "--seed", "1", "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and len(captured.err.strip().splitlines()) == 1
    assert f"{out} already exists and is not empty" in captured.err and "choose another --out" in captured.err
    assert "epoch" not in captured.err and "Traceback" not in captured.err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.parametrize("inside", [False, True])
def test_train_refuses_a_file_as_out(tmp_path, capsys, inside):
    target = tmp_path / "notes.md"
    target.write_text("mine\n")
    assert main([*TINY_TRAIN, "--out", str(target / "ck" if inside else target)]) == 2
    err = capsys.readouterr().err
    assert "is a file, not a folder" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert target.read_text() == "mine\n"
