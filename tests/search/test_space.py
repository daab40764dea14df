from pathlib import Path

import pytest
import yaml

from proxylab.errors import ProxylabError
from proxylab.proxy.language import SIGNATURES
from proxylab.search.space import PACKAGE_SPACES, list_spaces, load_space, space_from_dict

REPO = Path(__file__).resolve().parents[2]


def emq_dict():
    return yaml.safe_load((PACKAGE_SPACES / "emq.yaml").read_text())


def test_presets_load_and_match_the_repo_copies():
    assert {"emq", "extended"} <= set(list_spaces())
    for name in ("emq", "extended"):
        shipped = (PACKAGE_SPACES / f"{name}.yaml").read_bytes()
        assert (REPO / "search_spaces" / f"{name}.yaml").read_bytes() == shipped, "top-level copy drifted"
        assert load_space(name) == load_space(REPO / "search_spaces" / f"{name}.yaml")


def test_emq_space_is_emqs():
    s = load_space("emq")
    assert set(s.group("inputs")) == {"bA", "bG", "bW", "bV"}
    assert len(s.group("unary")) == 20 and s.group("unary")["noop"] == 0.2
    assert all(w == 0.1 for k, w in s.group("unary").items() if k != "noop")
    assert s.group("binary") == {"add": 0.6, "sub": 0.3, "mul": 0.05, "matmul": 0.05}
    assert set(s.structures) == {"tree", "linear", "graph"}


def test_every_name_is_in_the_proxy_language():
    for name in list_spaces():
        s = load_space(name)
        for group, weights in s.weights.items():
            for op in weights:
                assert op == "none" or op in SIGNATURES, (name, group, op)


def test_extended_adds_inputs_and_ops():
    e, m = load_space("extended"), load_space("emq")
    assert {"Q", "F"} <= set(e.group("inputs")) - set(m.group("inputs"))
    assert {"bits", "params", "htrace", "heig"} <= set(e.group("scalar_inputs"))
    assert len(e.group("reduce")) > 1 and len(e.group("aggregate")) > 1


def test_repo_relative_path_resolves_from_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_space("search_spaces/emq.yaml").name == "emq"


@pytest.mark.parametrize("edit, words", [
    (lambda d: d.update(bogus=1), ["unknown key", "bogus"]),
    (lambda d: d["unary"].update(cosh=0.1), ["unknown name 'cosh'", "unary"]),
    (lambda d: d["binary"].update(add=-1), ["binary.add", "non-negative"]),
    (lambda d: d["structures"].update(spiral={}), ["unknown structure 'spiral'"]),
    (lambda d: d["structures"]["tree"].update(depth=3), ["unknown option 'depth'", "tree"]),
    (lambda d: d["structures"]["graph"].update(nodes=99), ["structures.graph.nodes"]),
    (lambda d: d.update(max_size=1), ["max_size"]),
    (lambda d: d.update(scalar_head=0.5), ["scalar_head", "scalar_inputs"]),
])
def test_bad_space_files_are_clear_errors(edit, words):
    d = emq_dict()
    edit(d)
    with pytest.raises(ProxylabError) as e:
        space_from_dict(d, "test.yaml")
    for w in words:
        assert w in str(e.value)


def test_space_without_any_valid_tree_is_refused_statically():
    d = emq_dict()
    d["inputs"] = {"bA": 0}
    with pytest.raises(ProxylabError, match="allows no valid tree"):
        space_from_dict(d, "test.yaml")
    d = emq_dict()
    d["structures"] = {k: {"weight": 0} for k in d["structures"]}
    with pytest.raises(ProxylabError, match="allows no valid tree"):
        space_from_dict(d, "test.yaml")


def test_unknown_preset_and_invalid_yaml(tmp_path):
    with pytest.raises(ProxylabError, match="presets"):
        load_space("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("inputs: [unclosed\n")
    with pytest.raises(ProxylabError, match="not valid YAML"):
        load_space(bad)


def test_fingerprint_tracks_content():
    d = emq_dict()
    a = space_from_dict(d, "a.yaml")
    d["binary"]["add"] = 0.5
    assert space_from_dict(d, "b.yaml").fingerprint != a.fingerprint
    assert space_from_dict(emq_dict(), "c.yaml").fingerprint == a.fingerprint
