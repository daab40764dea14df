"""The tables that ship inside the package meet the bar the project set for them."""
import numpy as np
import pytest

from proxylab.bench import list_tables, load_table

SHIPPED = ["mobilenetv2-animal", "resnet18-shapes", "resnet20-mnist5k"]


def test_the_three_named_tables_ship():
    assert set(SHIPPED) <= set(list_tables())


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_table_meets_the_bar(name):
    t = load_table(name)  # verifies table.csv's sha256
    m = t.meta
    assert m["status"] == "complete" and m["name"] == name
    assert len(t) >= 1003 and t.bit_choices == (2, 3, 4) and m["act_bits"] == 8
    assert set(np.unique(t.bits)) == {2, 3, 4}
    for b in (2, 3, 4):  # the uniform configurations are in
        assert tuple([b] * len(t.layer_names)) in t
    assert t.noise_ceiling >= 0.9
    assert t.noise_ceiling == pytest.approx(m["summary"]["noise_ceiling"])
    assert (t.folder / m["weights"]).stat().st_size < 4 * 2**20
    assert m["command"].startswith("proxylab bench build") and "--protocol auto" not in m["command"]
    assert m["dataset"]["test_size"] == m["halves"]["size_a"] + m["halves"]["size_b"]  # the whole test split
    assert t.acc.max() - t.acc.min() > 0.3  # a spread worth ranking
    sizes = {len(t.split(s)) for s in ("search", "select", "test")}
    assert len(t.split("test")) >= 0.5 * len(t) - 1 and len(sizes) == 3


def test_shipped_weights_reproduce_the_recorded_float_accuracy():
    from proxylab.nets import evaluate

    t = load_table("resnet20-mnist5k")
    model, ds, config = t.load_network()
    assert config["layer_names"] == t.layer_names
    assert evaluate(model, ds.test.x, ds.test.y) == t.meta["float_acc"]
