"""`proxylab data list` through the CLI entry point and, once, as a real subprocess."""
import importlib.util
import json
import subprocess
import sys

from proxylab.cli import main
from proxylab.data import DATASETS, list_datasets


def test_data_list_json(capsys):
    assert main(["data", "list", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == list_datasets()
    for r in rows:
        spec = DATASETS.get(r["name"])
        assert (r["classes"], r["channels"], r["image_size"]) == (spec.num_classes, spec.in_channels, spec.image_size)
        assert (r["train"], r["calib"], r["test"]) == spec.sizes
        assert r["source"] and r["installed"] == "yes"


def test_data_list_table_and_pattern(capsys):
    assert main(["data", "list", "shapes-*"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:4] == ["name", "classes", "channels", "image_size"]
    assert sorted(line.split()[0] for line in out[2:]) == list_datasets("shapes-*")


def test_data_list_unknown_pattern_exits_2(capsys):
    assert main(["data", "list", "cifar*"]) == 2
    assert "no data set matches 'cifar*'" in capsys.readouterr().err


def test_data_list_marks_a_missing_package(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "animal_mnist" else real(name, *a))
    assert main(["data", "list", "animal", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["installed"] == "no: pip install --no-deps animal-mnist"


def test_data_list_subprocess():
    proc = subprocess.run([sys.executable, "-m", "proxylab.cli", "data", "list", "--format", "json"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert {r["name"] for r in json.loads(proc.stdout)} == set(list_datasets())
