import textwrap

import pytest
import torch

from proxylab.errors import ProxylabError
from proxylab.nets import load_checkpoint, load_user_network, save_checkpoint

NET_SOURCE = textwrap.dedent('''
    import torch.nn as nn

    def tiny(num_classes=10, hidden=6):
        return nn.Sequential(nn.Conv2d(1, hidden, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                             nn.Flatten(), nn.Linear(hidden, num_classes))

    def not_a_net():
        return "a string"

    VALUE = 3
''')


@pytest.fixture
def net_file(tmp_path):
    path = tmp_path / "my_net.py"
    path.write_text(NET_SOURCE)
    return path


def test_factory_is_called_with_kwargs(net_file):
    model = load_user_network(f"{net_file}:tiny", num_classes=4, hidden=5)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 4)
    assert model[0].out_channels == 5


def test_weights_are_loaded(net_file, tmp_path):
    torch.manual_seed(0)
    source = load_user_network(f"{net_file}:tiny")
    torch.save(source.state_dict(), tmp_path / "w.pt")
    torch.manual_seed(1)
    model = load_user_network(f"{net_file}:tiny", weights=tmp_path / "w.pt")
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(model(x), source(x))


def test_checkpoint_with_a_factory_round_trips(net_file, tmp_path):
    torch.manual_seed(0)
    model = load_user_network(f"{net_file}:tiny", num_classes=3)
    save_checkpoint(tmp_path / "ck", model, {"factory": f"{net_file}:tiny", "kwargs": {"num_classes": 3}})
    loaded, config = load_checkpoint(tmp_path / "ck")
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


@pytest.mark.parametrize("spec_suffix,kwargs,message", [
    (":missing", {}, r"defines no 'missing'; callables it defines: not_a_net, tiny"),
    (":VALUE", {}, "is a int, not a function"),
    (":not_a_net", {}, "returned a str; it must return a torch.nn.Module"),
    (":tiny", {"depth": 3}, "unexpected keyword argument 'depth'"),
    ("", {}, "must look like path/to/file.py:factory_function"),
])
def test_user_mistakes_are_explained(net_file, spec_suffix, kwargs, message):
    with pytest.raises(ProxylabError, match=message):
        load_user_network(f"{net_file}{spec_suffix}", **kwargs)


def test_missing_file_and_broken_file(tmp_path):
    with pytest.raises(ProxylabError, match="does not exist"):
        load_user_network(f"{tmp_path / 'nope.py'}:tiny")
    broken = tmp_path / "broken.py"
    broken.write_text("import torch\nraise RuntimeError('boom')\n")
    with pytest.raises(ProxylabError, match="importing .* failed: RuntimeError: boom"):
        load_user_network(f"{broken}:tiny")


def test_mismatched_weights_name_the_shape(net_file, tmp_path):
    torch.save(load_user_network(f"{net_file}:tiny", hidden=4).state_dict(), tmp_path / "w.pt")
    with pytest.raises(ProxylabError, match=r"'0.weight' has shape \(4, 1, 3, 3\).*expects \(6, 1, 3, 3\)"):
        load_user_network(f"{net_file}:tiny", weights=tmp_path / "w.pt")
    torch.save({"state_dict": {"foo": torch.zeros(1)}}, tmp_path / "other.pt")
    with pytest.raises(ProxylabError, match="key '0.weight'.*missing"):
        load_user_network(f"{net_file}:tiny", weights=tmp_path / "other.pt")
