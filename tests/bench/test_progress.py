"""The builder's pieces that need no network: the plan, the durable rows, the settings check."""
import itertools
import json

import numpy as np
import pytest

from proxylab.bench import format as fmt
from proxylab.bench.builder import BuildSettings, _check_resume, plan_configs
from proxylab.bench.progress import RowWriter, read_progress
from proxylab.errors import ProxylabError


def test_plan_starts_with_uniform_configs_then_distinct_samples():
    plan = plan_configs(6, (4, 2, 3), 100, seed=0)
    assert plan[:3] == [(2,) * 6, (3,) * 6, (4,) * 6]
    assert len(plan) == 103 and len(set(plan)) == 103
    assert all(set(c) <= {2, 3, 4} and len(c) == 6 for c in plan)
    assert plan == plan_configs(6, (2, 3, 4), 100, seed=0)  # seeded
    assert plan != plan_configs(6, (2, 3, 4), 100, seed=1)


def test_plan_can_take_the_whole_space_and_refuses_more():
    plan = plan_configs(3, (2, 3, 4), 24, seed=0)
    assert sorted(plan) == sorted(itertools.product((2, 3, 4), repeat=3))
    with pytest.raises(ProxylabError, match="--n 25 asks for more configurations than exist: .* 27 in all"):
        plan_configs(3, (2, 3, 4), 25, seed=0)


def test_plan_samples_uniformly_over_the_space():
    # every non-uniform configuration of a 3**4 space is equally likely: chi-square over many seeds
    counts = {}
    for seed in range(300):
        for cfg in plan_configs(4, (2, 3, 4), 10, seed)[3:]:
            counts[cfg] = counts.get(cfg, 0) + 1
    assert len(counts) == 78
    observed = np.array(list(counts.values()))
    expected = 300 * 10 / 78
    chi2 = ((observed - expected) ** 2 / expected).sum()
    from scipy.stats import chi2 as chi2_dist

    assert chi2_dist.sf(chi2, df=77) > 1e-4


def test_plan_for_a_large_space_uses_rejection_sampling():
    plan = plan_configs(40, (2, 3, 4), 500, seed=3)
    assert len(set(plan)) == 503 and plan == plan_configs(40, (2, 3, 4), 500, seed=3)


@pytest.mark.parametrize("n_layers", [5, 40])
def test_a_smaller_plan_is_the_prefix_of_a_larger_one(n_layers):
    # the protocol trial measures the first rows of the plan and keeps them
    assert plan_configs(n_layers, (2, 3, 4), 200, 0)[:27] == plan_configs(n_layers, (2, 3, 4), 24, 0)


def _write_rows(path, plan, ids):
    with RowWriter(path) as w:
        for i in ids:
            w.write(i, plan[i], 0.1 * i, 10.0 * i, 0.5, 0.25, 0.75)


def test_rows_survive_and_a_torn_last_line_is_dropped(tmp_path):
    plan = plan_configs(4, (2, 3, 4), 10, seed=0)
    path = tmp_path / fmt.TABLE_FILE
    _write_rows(path, plan, [0, 5, 2])
    with open(path, "a") as f:
        f.write("7,2 3 4 2,0.1,1.0,0.98")  # killed mid-write: no newline
    logs = []
    done = read_progress(path, plan, log=logs.append)
    assert sorted(done) == [0, 2, 5]
    assert done[5][1] == plan[5] and done[5][4] == 0.5 and done[5][6] == 0.75
    assert "torn last line" in logs[0]
    assert path.read_text().endswith("\n") and "0.98" not in path.read_text()
    _write_rows(path, plan, [7])  # appending after the cut continues cleanly
    assert sorted(read_progress(path, plan)) == [0, 2, 5, 7]


def test_a_row_from_another_plan_is_refused(tmp_path):
    plan = plan_configs(4, (2, 3, 4), 10, seed=0)
    other = plan_configs(4, (2, 3, 4), 10, seed=1)
    path = tmp_path / fmt.TABLE_FILE
    _write_rows(path, other, [3, 4, 5, 6])
    with pytest.raises(ProxylabError, match=r"table\.csv line \d: cfg_id \d holds bits .* belongs to a different build"):
        read_progress(path, plan)


def test_changed_settings_are_refused_before_anything_is_touched(tmp_path):
    s = BuildSettings(net="resnet20", data="digits", n=10, seed=0)
    meta = {"schema_version": 1, "name": "x", "layer_names": [], "params": [], "macs": [], "bit_choices": [2],
            "act_bits": 8, "splits": {}, "build_settings": s.identity(), "command": "proxylab bench build ..."}
    (tmp_path / fmt.META_FILE).write_text(json.dumps(meta))
    assert _check_resume(tmp_path, BuildSettings(net="resnet20", data="digits", n=10, seed=0, name="other"))
    with pytest.raises(ProxylabError, match=r"other settings \(n: 10 -> 20; seed: 0 -> 1\); nothing was changed"):
        _check_resume(tmp_path, BuildSettings(net="resnet20", data="digits", n=20, seed=1))


def test_command_line_round_trips_through_the_cli_parser():
    import argparse

    from proxylab.commands.bench import BenchBuild, parse_key_values

    s = BuildSettings(net="resnet18", data="shapes", n=5, seed=2, protocol="mse", per_channel=False,
                      net_kwargs={"width": 0.25, "stem": "small"}, weights_dtype="float16", name="r18")
    words = s.command("out dir").split()
    assert words[:3] == ["proxylab", "bench", "build"]
    parser = argparse.ArgumentParser()
    BenchBuild().add_arguments(parser)
    import shlex

    args = parser.parse_args(shlex.split(s.command("out dir"))[3:])
    assert args.out == "out dir"
    again = BuildSettings(net=args.net, data=args.data, bits=(2, 3, 4), n=args.n, seed=args.seed,
                          protocol=args.protocol, per_channel=not args.per_tensor,
                          net_kwargs=parse_key_values(args.net_arg, "--net-arg"), weights_dtype=args.weights_dtype,
                          name=args.name, epochs=args.epochs)
    assert again.identity() == s.identity()
    with pytest.raises(ProxylabError, match="must look like key=value"):
        parse_key_values(["width"], "--net-arg")
