"""`proxylab proxy list` and `proxylab proxy eval` end to end, on a real table measured here: a small CNN
trained on the digits data set, its PTQ accuracy measured at all 27 bit configurations of its 3 layers."""
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from proxylab import metrics
from proxylab.cli import main
from proxylab.proxy import KNOWN_PROXIES, score_configs

NET_FILE = Path(__file__).with_name("digits_net.py")


def _run(capsys, *argv):
    code = main(list(argv) + ["--format", "json"])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else None), err


@pytest.fixture(scope="module")
def digits_table(tmp_path_factory):
    from proxylab.bench import format as fmt
    from proxylab.data import get_dataset
    from proxylab.nets import load_user_network
    from proxylab.quant import QuantizedNetwork
    from proxylab.utils import sha256_file

    folder = tmp_path_factory.mktemp("digits-table")
    torch.manual_seed(0)
    ds = get_dataset("digits", seed=0)
    model = load_user_network(f"{NET_FILE}:make")
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(2):
        for i in range(0, len(ds.train), 64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(ds.train.x[i:i + 64]), ds.train.y[i:i + 64]).backward()
            opt.step()
    model.eval()
    torch.save(model.state_dict(), folder / "user_weights.pt")

    qn = QuantizedNetwork(model, ds.calib.x, bit_choices=(2, 3, 4))
    bits = np.array(list(itertools.product([2, 3, 4], repeat=len(qn.layer_names))))  # all 27 configs
    half = len(ds.test) // 2
    acc, acc_a, acc_b = [], [], []
    for row in bits:
        qn.apply(row.tolist())
        acc.append(qn.evaluate(ds.test.x, ds.test.y))
        acc_a.append(qn.evaluate(ds.test.x[:half], ds.test.y[:half]))
        acc_b.append(qn.evaluate(ds.test.x[half:], ds.test.y[half:]))
    columns = {"cfg_id": np.arange(len(bits)), "bits": bits, "size_mb": qn.size_mb(bits), "bitops": qn.bitops(bits),
               "acc": np.array(acc), "acc_half_a": np.array(acc_a), "acc_half_b": np.array(acc_b)}
    (folder / fmt.TABLE_FILE).write_text(fmt.table_csv_text(columns))
    meta = {"schema_version": fmt.SCHEMA_VERSION, "name": "digits-test", "layer_names": list(qn.layer_names),
            "params": qn.params.tolist(), "macs": qn.macs.tolist(), "bit_choices": [2, 3, 4], "act_bits": 8,
            "splits": {"seed": 0, "fractions": {"search": 0.3, "select": 0.2, "test": 0.5}},
            "dataset": {"name": "digits", "seed": 0},
            "sha256": {fmt.TABLE_FILE: sha256_file(folder / fmt.TABLE_FILE)}}
    (folder / fmt.META_FILE).write_text(json.dumps(meta))
    return folder


def test_proxy_list(capsys):
    code, rows, _ = _run(capsys, "proxy", "list")
    assert code == 0
    assert [r["name"] for r in rows] == KNOWN_PROXIES.names()
    emq = next(r for r in rows if r["name"] == "emq")
    assert emq["formula"] == "mean_layers(smul(mean(softmax(abslog(bV))), mean(sqrt(relu(bW)))))"
    assert all(r["source"] for r in rows)
    code, prims, _ = _run(capsys, "proxy", "list", "--primitives")
    assert code == 0 and {"bW", "matmul", "mean_layers", "sdiv"} <= {r["name"] for r in prims}


def _user_args(folder):
    return ["--bench", str(folder), "--net", f"{NET_FILE}:make", "--weights", str(folder / "user_weights.pt")]


@pytest.fixture()
def stats_cache(monkeypatch, digits_table):
    monkeypatch.setenv("PROXYLAB_CACHE", str(digits_table / "cache"))  # shared by this file's tests


def test_proxy_eval_matches_direct_computation(capsys, stats_cache, digits_table):
    from proxylab.bench import load_table
    from proxylab.data import get_dataset
    from proxylab.nets import load_user_network
    from proxylab.stats import compute_stats

    code, row, err = _run(capsys, "proxy", "eval", *_user_args(digits_table), "--proxy", "emq")
    assert code == 0, err
    table = load_table(digits_table)
    idx = table.split("test")
    model = load_user_network(f"{NET_FILE}:make", weights=digits_table / "user_weights.pt")
    ds = get_dataset("digits", seed=0)
    stats = compute_stats(model, ds.calib.x, ds.calib.y, bit_choices=(2, 3, 4), hessian=False)
    scores = score_configs(KNOWN_PROXIES.get("emq"), stats, table.bits[idx])
    expected = metrics.rank_metrics(scores, table.acc[idx])
    assert row["n"] == len(idx) and row["valid"] is True
    for key in ("spearman", "kendall", "pearson", "spearman_top20", "spearman_top50", "weighted_tau"):
        assert row[key] == pytest.approx(expected[key], abs=1e-9)
    assert row["noise_ceiling"] == pytest.approx(table.subset(idx).noise_ceiling, abs=1e-12)
    assert row["formula"] == str(KNOWN_PROXIES.get("emq"))


def test_proxy_eval_all_known_and_invalid(capsys, stats_cache, digits_table):
    code, rows, err = _run(capsys, "proxy", "eval", *_user_args(digits_table), "--all-known", "--split", "all")
    assert code == 0, err
    assert [r["proxy"] for r in rows] == KNOWN_PROXIES.names()
    assert all(r["n"] == 27 for r in rows)
    bparams = next(r for r in rows if r["proxy"] == "bparams")
    assert bparams["valid"] and bparams["spearman"] > 0  # more bits, more accuracy on a real table

    code, row, err = _run(capsys, "proxy", "eval", *_user_args(digits_table),
                          "--proxy", "mean_layers(mean(invert(relu(bW))))")
    assert code == 0, err
    assert row["valid"] is False and "invert" in row["note"] and "layer '0'" in row["note"]
    assert all(row[k] is None for k in ("spearman", "kendall"))  # strict JSON: an undefined value is null


def test_proxy_eval_user_errors(capsys, digits_table):
    code, _, err = _run(capsys, "proxy", "eval", "--bench", str(digits_table), "--proxy", "mean_layers(mean(foo(bW)))")
    assert code == 2 and "unknown primitive 'foo'" in err
    code, _, err = _run(capsys, "proxy", "eval", "--bench", str(digits_table), "--proxy", "emq", "--weights", "w.pt")
    assert code == 2 and "--weights and --data go with --net" in err
    code, _, err = _run(capsys, "proxy", "eval", "--bench", "no-such-table", "--proxy", "emq")
    assert code == 2 and "no table 'no-such-table'" in err


def test_a_table_without_weights_says_how_to_bring_the_network(capsys, stats_cache, digits_table):
    code, _, err = _run(capsys, "proxy", "eval", "--bench", str(digits_table), "--proxy", "emq")
    assert code == 2 and "ships no network weights" in err and "--net path/file.py:factory --weights W.pt" in err
    assert "statistics on" not in err  # no "computing..." line before an error that comes at once


def test_a_factory_without_weights_is_warned_about(capsys, stats_cache, digits_table):
    with pytest.warns(UserWarning, match="no weights given for .*digits_net.py:make"):
        code, _, err = _run(capsys, "proxy", "eval", "--bench", str(digits_table), "--net", f"{NET_FILE}:make",
                            "--proxy", "bparams")
    assert code == 0, err


def test_a_registered_network_name_is_accepted_with_its_weights(capsys, digits_table):
    code, _, err = _run(capsys, "proxy", "eval", "--bench", str(digits_table), "--net", "resnet20", "--proxy", "emq")
    assert code == 2 and "--net resnet20 needs --weights" in err
    from proxylab.nets import create_net

    torch.save(create_net("resnet20", 10, in_channels=1, image_size=28).state_dict(), digits_table / "r20.pt")
    code, _, err = _run(capsys, "proxy", "eval", "--bench", str(digits_table), "--net", "resnet20",
                        "--weights", str(digits_table / "r20.pt"), "--proxy", "bparams", "--no-cache")
    # built, weighed and measured: only then does it turn out not to be the table's network
    assert code == 2 and "your network's quantizable layers (22) are not the table's (3)" in err, err


def test_a_table_of_a_data_set_proxylab_lacks_asks_for_data(capsys, digits_table, tmp_path):
    import shutil

    from proxylab.bench import format as fmt

    folder = tmp_path / "imagenet-table"
    shutil.copytree(digits_table, folder, ignore=shutil.ignore_patterns("cache"))
    meta = json.loads((folder / fmt.META_FILE).read_text())
    meta["dataset"] = {"name": "imagenet", "seed": 0}
    (folder / fmt.META_FILE).write_text(json.dumps(meta))
    code, _, err = _run(capsys, "proxy", "eval", *_user_args(folder), "--proxy", "emq")
    assert code == 2 and "measured on 'imagenet', which proxylab has no offline copy of: give --data NAME" in err
