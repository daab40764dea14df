import csv
import itertools

import numpy as np
import pytest
from scipy.stats import spearmanr

from proxylab.bench import BenchTable, load_table
from proxylab.bench import format as fmt
from proxylab.errors import ProxylabError

from .conftest import reseal, write_table


def _csv_rows(folder):
    with open(folder / fmt.TABLE_FILE) as f:
        return list(csv.DictReader(f))


def test_load_matches_the_csv_read_by_the_csv_module(tiny_table_dir):
    t = load_table(tiny_table_dir)
    rows = _csv_rows(tiny_table_dir)
    assert len(t) == len(rows) == 27
    assert t.bits.shape == (27, 3)
    for i, r in enumerate(rows):
        assert t.cfg_id[i] == int(r["cfg_id"])
        assert tuple(t.bits[i]) == tuple(int(x) for x in r["bits"].split())
        assert t.acc[i] == float(r["acc"])  # exact: floats are written with repr
        assert t.size_mb[i] == float(r["size_mb"])
    assert t.layer_names == ["layer0", "layer1", "layer2"]
    assert t.bit_choices == (2, 3, 4)


def test_iteration_and_lookup_agree(tiny_table_dir):
    t = load_table(tiny_table_dir)
    seen = list(t)
    assert [r["cfg_id"] for r in seen] == sorted(r["cfg_id"] for r in seen)
    for r in seen:
        assert t.lookup(r["bits"]) == r
        assert t.lookup(list(r["bits"]))["acc"] == r["acc"]
        assert t.lookup(np.array(r["bits"]))["cfg_id"] == r["cfg_id"]
    assert (4, 4, 4) in t and (5, 4, 4) not in t


def test_lookup_rejects_strings_wrong_lengths_and_unknown_configs(tiny_table_dir):
    t = load_table(tiny_table_dir)
    with pytest.raises(ProxylabError, match="tuple of ints, not a string"):
        t.lookup("4 4 4")
    with pytest.raises(ProxylabError, match="2 bit values but table 'tiny' has 3 layers"):
        t.lookup((4, 4))
    with pytest.raises(ProxylabError, match="never measured"):
        t.lookup((8, 8, 8))
    with pytest.raises(ProxylabError, match="integer bit-widths"):
        t.lookup((4.5, 4, 4))


def test_filter_size_equals_a_numpy_mask(tiny_table_dir):
    t = load_table(tiny_table_dir)
    limit = float(np.median(t.size_mb))
    small = t.filter_size(limit)
    expected = [tuple(b) for b, s in zip(t.bits, t.size_mb) if s <= limit]
    assert [tuple(b) for b in small.bits] == expected
    assert (small.size_mb <= limit).all() and len(small) < len(t)
    assert len(t.filter_bitops(float(t.bitops.min()))) == 1  # only the all-lowest configuration


def test_splits_are_disjoint_cover_everything_and_follow_the_fractions(tiny_table_dir):
    t = load_table(tiny_table_dir)
    parts = {name: set(t.split(name).tolist()) for name in ("search", "select", "test")}
    assert not parts["search"] & parts["select"] and not parts["search"] & parts["test"]
    assert not parts["select"] & parts["test"]
    assert set().union(*parts.values()) == set(range(len(t)))
    assert len(parts["search"]) == round(0.3 * 27) and len(parts["select"]) == round(0.2 * 27)
    assert len(parts["test"]) == 27 - round(0.3 * 27) - round(0.2 * 27)
    # fixed: a second load gives the same rows; a different seed gives different rows
    assert (load_table(tiny_table_dir).split("search") == t.split("search")).all()
    other = tiny_table_dir.parent / "other"
    write_table(other, splits={"seed": 1, "fractions": {"search": 0.3, "select": 0.2, "test": 0.5}})
    assert set(load_table(other).split("search").tolist()) != parts["search"]
    assert (t.split("all") == np.arange(27)).all()
    with pytest.raises(ProxylabError, match="unknown split 'train'"):
        t.split("train")


def test_subset_keeps_each_rows_split_label(tiny_table_dir):
    t = load_table(tiny_table_dir)
    small = t.filter_size(float(np.median(t.size_mb)))
    for i, r in enumerate(small):
        assert r["split"] == t.lookup(r["bits"])["split"]
    test_ids = set(t.cfg_id[t.split("test")])
    assert set(small.cfg_id[small.split("test")]) == test_ids & set(small.cfg_id)


def test_noise_ceiling_and_to_numpy_match_scipy(tiny_table_dir):
    t = load_table(tiny_table_dir)
    assert t.noise_ceiling == pytest.approx(spearmanr(t.acc_half_a, t.acc_half_b).statistic, abs=1e-12)
    bits, acc = t.to_numpy()
    assert bits.dtype == np.int64 and bits.shape == (27, 3) and (acc == t.acc).all()
    bits[0, 0] = 99  # a copy: the table itself is untouched
    assert t.bits[0, 0] != 99


def _edit_line(folder, lineno, new_text):
    lines = (folder / fmt.TABLE_FILE).read_text().splitlines()
    lines[lineno - 1] = new_text
    (folder / fmt.TABLE_FILE).write_text("\n".join(lines) + "\n")
    reseal(folder)


def test_bit_list_of_the_wrong_length_names_the_file_and_line(tiny_table_dir):
    _edit_line(tiny_table_dir, 5, "3,2 2,0.1,1.0,0.5,0.5,0.5")
    with pytest.raises(ProxylabError, match=r"table\.csv line 5: 2 bit values but meta.json lists 3 layers"):
        load_table(tiny_table_dir)


def test_nan_accuracy_is_refused(tiny_table_dir):
    _edit_line(tiny_table_dir, 4, "2,2 2 4,0.1,1.0,nan,0.5,0.5")
    with pytest.raises(ProxylabError, match=r"line 4: acc is nan"):
        load_table(tiny_table_dir)


def test_percent_accuracy_is_refused(tiny_table_dir):
    _edit_line(tiny_table_dir, 4, "2,2 2 4,0.1,1.0,71.5,0.5,0.5")
    with pytest.raises(ProxylabError, match=r"line 4: acc = 71.5 is outside \[0, 1\]"):
        load_table(tiny_table_dir)


def test_duplicate_configuration_is_refused(tiny_table_dir):
    _edit_line(tiny_table_dir, 4, "2,2 2 2,0.1,1.0,0.5,0.5,0.5")  # line 2 holds 2 2 2 already
    with pytest.raises(ProxylabError, match=r"line 4: configuration '2 2 2' \(cfg_id 2\) duplicates line 2"):
        load_table(tiny_table_dir)


def test_duplicate_cfg_id_is_refused(tiny_table_dir):
    _edit_line(tiny_table_dir, 4, "0,4 4 3,0.1,1.0,0.5,0.5,0.5")
    with pytest.raises(ProxylabError, match=r"line 4: cfg_id 0 already appears on line 2"):
        load_table(tiny_table_dir)


def test_tampered_csv_fails_the_sha256_check(tiny_table_dir):
    text = (tiny_table_dir / fmt.TABLE_FILE).read_text()
    (tiny_table_dir / fmt.TABLE_FILE).write_text(text + "\n")  # one harmless blank line
    with pytest.raises(ProxylabError, match=r"table\.csv: sha256 .* does not match"):
        load_table(tiny_table_dir)
    assert len(load_table(tiny_table_dir, verify=False)) == 27  # the content itself is still valid


def test_bad_header_and_missing_meta_keys(tiny_table_dir):
    _edit_line(tiny_table_dir, 1, "id,bits,acc")
    with pytest.raises(ProxylabError, match="line 1: header must be"):
        load_table(tiny_table_dir)
    (tiny_table_dir / fmt.META_FILE).write_text('{"schema_version": 1}')
    with pytest.raises(ProxylabError, match="lacks the key"):
        load_table(tiny_table_dir)
    (tiny_table_dir / fmt.META_FILE).write_text('{oops')
    with pytest.raises(ProxylabError, match="not valid JSON"):
        load_table(tiny_table_dir)


def test_shipped_names_resolve_and_unknown_names_suggest_close_matches(tmp_path, monkeypatch):
    import proxylab.bench.table as table_module

    write_table(tmp_path / "resnet20-mnist5k", name="resnet20-mnist5k")
    monkeypatch.setattr(table_module, "SHIPPED_DIR", tmp_path)
    assert table_module.list_tables() == ["resnet20-mnist5k"]
    assert load_table("resnet20-mnist5k").name == "resnet20-mnist5k"
    with pytest.raises(ProxylabError, match="no table 'resnet20-mnist5'.*Did you mean: resnet20-mnist5k"):
        load_table("resnet20-mnist5")


def test_load_network_without_weights_is_a_clear_error(tmp_path):
    write_table(tmp_path / "t", halves=False)
    t = load_table(tmp_path / "t")
    assert np.isnan(t.noise_ceiling)
    with pytest.raises(ProxylabError, match="ships no network weights"):
        t.load_network()


def test_round_trip_through_table_csv_text_is_byte_identical(tiny_table_dir):
    t = load_table(tiny_table_dir)
    columns = {"cfg_id": t.cfg_id, "bits": t.bits, "size_mb": t.size_mb, "bitops": t.bitops, "acc": t.acc,
               "acc_half_a": t.acc_half_a, "acc_half_b": t.acc_half_b}
    assert fmt.table_csv_text(columns) == (tiny_table_dir / fmt.TABLE_FILE).read_text()
