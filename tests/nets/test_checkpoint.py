import json

import pytest
import torch

from proxylab.errors import ProxylabError
from proxylab.nets import build_net_from_config, create_net, load_checkpoint, save_checkpoint
from proxylab.utils import sha256_file


def _config(net="resnet20", **kwargs):
    return {"net": net, "kwargs": kwargs, "num_classes": 7, "in_channels": 3, "image_size": 32, "data": "shapes",
            "seed": 0, "epochs": 1, "test_acc": 0.5}


def _trained_like(model):
    # Non-trivial BN statistics, so a round trip that dropped buffers would show.
    torch.manual_seed(5)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 3, 32, 32) * 2 + 0.5)
    return model.eval()


@pytest.mark.parametrize("net,kwargs", [("resnet20", {}), ("resnet18", {"width": 0.25}), ("mobilenetv2", {"width": 0.35}), ("vgg_small", {"width": 0.5})])
def test_round_trip_gives_identical_outputs(tmp_path, net, kwargs):
    torch.manual_seed(0)
    model = _trained_like(create_net(net, 7, 3, 32, **kwargs))
    save_checkpoint(tmp_path, model, _config(net, **kwargs))
    loaded, config = load_checkpoint(tmp_path)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert not loaded.training
    assert config["net"] == net and config["kwargs"] == kwargs and config["half"] is False
    assert config["weights_sha256"] == sha256_file(tmp_path / "weights.pt")
    # a weights file beside its config.json works as well as the folder
    again, _ = load_checkpoint(tmp_path / "weights.pt")
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), loaded.state_dict().values()))


def test_half_saving_halves_the_file_and_loads_back_as_fp32(tmp_path):
    torch.manual_seed(0)
    model = _trained_like(create_net("resnet20", 7, 3, 32))
    save_checkpoint(tmp_path / "full", model, _config())
    save_checkpoint(tmp_path / "half", model, _config(), half=True)
    full_size = (tmp_path / "full" / "weights.pt").stat().st_size
    half_size = (tmp_path / "half" / "weights.pt").stat().st_size
    assert 0.45 < half_size / full_size < 0.6
    loaded, config = load_checkpoint(tmp_path / "half")
    assert config["half"] is True
    for key, value in model.state_dict().items():
        got = loaded.state_dict()[key]
        assert got.dtype == value.dtype
        expected = value.half().to(value.dtype) if value.is_floating_point() else value
        assert torch.equal(got, expected), key  # exactly the fp16 rounding, nothing else
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), loaded(x), atol=1e-2, rtol=1e-2)


def test_half_refuses_values_fp16_cannot_hold(tmp_path):
    model = create_net("vgg_small", 7, 3, 32)
    with torch.no_grad():
        model.fc.weight[0, 0] = 1e6
    with pytest.raises(ProxylabError, match="fc.weight.*fp16"):
        save_checkpoint(tmp_path, model, _config("vgg_small"), half=True)


def test_mismatched_weights_name_the_first_differing_shape(tmp_path):
    save_checkpoint(tmp_path, create_net("resnet20", 7, 3, 32), _config())
    config = json.loads((tmp_path / "config.json").read_text())
    config["kwargs"] = {"width": 0.5}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ProxylabError, match=r"'conv1.weight' has shape \(16, 3, 3, 3\).*expects \(8, 3, 3, 3\)"):
        load_checkpoint(tmp_path)


def test_weights_of_another_network_name_a_missing_key(tmp_path):
    save_checkpoint(tmp_path, create_net("vgg_small", 7, 3, 32), _config("vgg_small"))
    config = json.loads((tmp_path / "config.json").read_text())
    config["net"] = "resnet20"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ProxylabError, match="key 'conv1.weight' .* is missing"):
        load_checkpoint(tmp_path)


def test_missing_pieces_are_clear_errors(tmp_path):
    with pytest.raises(ProxylabError, match="no checkpoint"):
        load_checkpoint(tmp_path / "nowhere")
    save_checkpoint(tmp_path, create_net("resnet20", 7, 3, 32), _config())
    (tmp_path / "config.json").unlink()
    with pytest.raises(ProxylabError, match="no config.json"):
        load_checkpoint(tmp_path)
    with pytest.raises(ProxylabError, match="lacks num_classes"):
        save_checkpoint(tmp_path, create_net("resnet20", 7, 3, 32), {"net": "resnet20", "in_channels": 3, "image_size": 32})


def test_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    save_checkpoint(tmp_path, create_net("resnet20", 7, 3, 32), _config())
    torch.save({"conv1.weight": Evil()}, tmp_path / "weights.pt")
    with pytest.warns(UserWarning, match="sha256 mismatch"), \
            pytest.raises(ProxylabError, match="holds Python objects besides tensors") as exc:
        load_checkpoint(tmp_path)
    assert "weights_only=False" not in str(exc.value)  # torch's advice to unpickle anyway is not passed on


@pytest.mark.parametrize("what,content,message", [
    ("text", b"# my notes\n", "is not a PyTorch file"),
    ("a whole model", None, "holds Python objects besides tensors"),
    ("a truncated file", "cut", "cannot load weights .* as a plain PyTorch state_dict"),
])
def test_a_file_that_is_not_a_state_dict_says_what_it_is(tmp_path, what, content, message):
    from proxylab.nets.checkpoint import read_state_dict

    path = tmp_path / "w.pt"
    model = create_net("resnet20", 7, 3, 32)
    if content is None:
        torch.save(model, path)
    elif content == "cut":
        torch.save(model.state_dict(), path)
        path.write_bytes(path.read_bytes()[:200])
    else:
        path.write_bytes(content)
    with pytest.raises(ProxylabError, match=message) as exc:
        read_state_dict(path)
    assert "weights_only=False" not in str(exc.value), what
    with pytest.raises(ProxylabError, match="is a folder"):
        read_state_dict(tmp_path)
    with pytest.raises(ProxylabError, match="cannot read weights file .*Not a directory"):
        read_state_dict(path / "w.pt")  # a path through a file


def test_build_net_from_config_rebuilds_the_architecture():
    model = build_net_from_config(_config("resnet18", width=0.25, stem="small"))
    assert model.conv1.out_channels == 16 and model.fc.out_features == 7
    with pytest.raises(ProxylabError, match="lacks image_size"):
        build_net_from_config({"net": "resnet20", "num_classes": 7, "in_channels": 3})
