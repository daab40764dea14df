"""The public API and the CLI entry point: exports resolve, and `import proxylab` stays light."""
import subprocess
import sys

import pytest

import proxylab
from proxylab.cli import _COMMANDS, main


@pytest.mark.parametrize("name", [n for n in proxylab.__all__ if n != "__version__"])
def test_every_export_resolves(name):
    assert getattr(proxylab, name) is not None


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError):
        proxylab.no_such_thing  # noqa: B018


def test_import_does_not_load_torch():
    code = "import sys, proxylab, proxylab.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for name in _COMMANDS:
        assert name in text


def test_unknown_command_exits_2(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown command" in capsys.readouterr().err


def test_a_command_group_lists_its_commands(capsys):
    assert main(["zoo", "--help"]) == 0
    text = capsys.readouterr().out
    listed = text.split("commands:\n", 1)[1].splitlines()
    assert {line.split("  ")[1].strip() for line in listed} == {k for k in _COMMANDS if k.startswith("zoo ")}
    assert main(["zoo"]) == 2  # a group alone is not a command: its list, and say so
    err = capsys.readouterr().err
    assert "zoo query" in err and "needs one of the commands" in err
    assert main(["zoo", "frobnicate"]) == 2 and "unknown command 'zoo frobnicate'" in capsys.readouterr().err


@pytest.mark.parametrize("name", list(_COMMANDS))
def test_every_command_module_loads_and_parses_help(name):
    with pytest.raises(SystemExit) as exc:
        main(name.split() + ["--help"])
    assert exc.value.code == 0


def test_json_output_is_strict_json():
    """A NaN in a command's result (e.g. an invalid proxy's Spearman) prints as null, not as bare NaN."""
    import json

    from proxylab.cli import render

    text = render({"a": float("nan"), "rows": [{"b": float("inf"), "c": 1.5}], "t": (float("-inf"), 2)}, "json")
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard {c}")) == {
        "a": None, "rows": [{"b": None, "c": 1.5}], "t": [None, 2]}


def test_a_warning_is_one_line_on_stderr(tmp_path):
    """A library warning reaches a CLI user as "warning: ...", like errors, not as Python's file:line form."""
    (tmp_path / "net.py").write_text("import torch.nn as nn\n"
                                     "def make():\n"
                                     "    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 4))\n")
    proc = subprocess.run([sys.executable, "-m", "proxylab.cli", "zoo", "signature", "--model",
                           f"{tmp_path / 'net.py'}:make", "--out", str(tmp_path / "s.npz")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert any(line.startswith("warning: no weights given for") for line in proc.stderr.splitlines()), proc.stderr
    assert "UserWarning" not in proc.stderr and "warn_if_untrained" not in proc.stderr


def test_the_short_warning_format_is_put_back_after_overlapping_commands():
    import threading
    import warnings

    from proxylab import cli

    before = warnings.formatwarning
    inside = threading.Barrier(2)

    def command():
        cli._short_warnings(True)
        inside.wait()  # both commands are running at once here
        cli._short_warnings(False)

    threads = [threading.Thread(target=command) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert warnings.formatwarning is before


def test_ctrl_c_says_how_to_continue_where_a_command_can(capsys, monkeypatch):
    from proxylab.commands.search import Search
    from proxylab.commands.zoo import ZooBuild

    def interrupted(self, args):
        raise KeyboardInterrupt

    monkeypatch.setattr(Search, "run", interrupted)
    assert main(["search", "--bench", "x", "--out", "o"]) == 130
    assert "rerun the same command with --resume" in capsys.readouterr().err
    monkeypatch.setattr(ZooBuild, "run", interrupted)
    assert main(["zoo", "build", "--out", "o"]) == 130
    assert "rerun the same command to continue" in capsys.readouterr().err


def test_output_into_a_closed_pipe_is_not_a_traceback():
    """`proxylab bench show NAME --layers | head -1`: the reader leaves early; no BrokenPipeError traceback."""
    proc = subprocess.Popen([sys.executable, "-m", "proxylab.cli", "bench", "show", "resnet20-mnist5k", "--layers"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # before the command writes a byte (it takes a second to start)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0 and "Traceback" not in err and "BrokenPipe" not in err, err
