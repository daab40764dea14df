import pytest
import torch

from proxylab.errors import ProxylabError
from proxylab.nets import NETS, count_params, create_net, list_nets, net_options


@pytest.mark.parametrize("name", list_nets())
@pytest.mark.parametrize("in_channels,image_size,num_classes", [(1, 28, 10), (3, 32, 7)])
def test_every_net_gives_logits_of_the_right_shape(name, in_channels, image_size, num_classes):
    torch.manual_seed(0)
    model = create_net(name, num_classes, in_channels=in_channels, image_size=image_size)
    x = torch.randn(3, in_channels, image_size, image_size)
    model.train()
    out = model(x)
    assert out.shape == (3, num_classes)
    out.sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(x)).all()


def test_registry_holds_the_contract_names():
    assert {"resnet20", "resnet18", "mobilenetv2", "vgg_small"} <= set(list_nets())
    assert list_nets("resnet*") == ["resnet18", "resnet20"]
    assert all(NETS.help(n) for n in list_nets())


def test_resnet20_parameter_count_matches_the_paper_plus_projections():
    # He et al.'s ResNet-20 (zero-padding shortcuts) has 269,722 parameters at 3ch/10 classes; the two 1x1
    # projection shortcuts add 16*32 + 32*64 weights and 2*(32 + 64) BN parameters.
    assert count_params(create_net("resnet20", 10, 3, 32)) == 269_722 + 16 * 32 + 32 * 64 + 2 * (32 + 64)


@pytest.mark.parametrize("ours,timm_name", [
    (dict(name="resnet18", width=1.0), "resnet18"),
    (dict(name="mobilenetv2", width=1.0), "mobilenetv2_100"),
    (dict(name="mobilenetv2", width=0.35), "mobilenetv2_035"),
])
def test_imagenet_stem_at_width_one_is_exactly_timms_network(ours, timm_name):
    import timm

    kwargs = dict(ours)
    model = create_net(kwargs.pop("name"), 1000, 3, 224, stem="imagenet", **kwargs)
    ref = timm.create_model(timm_name, pretrained=False)
    ours_sd, ref_sd = model.state_dict(), ref.state_dict()
    assert list(ours_sd) == list(ref_sd)
    assert [v.shape for v in ours_sd.values()] == [v.shape for v in ref_sd.values()]


def _first_block_resolution(model, image_size, attr):
    seen = {}
    def hook(module, inputs, output):
        seen["hw"] = output.shape[-1]

    getattr(model, attr).register_forward_hook(hook)
    model.eval()
    with torch.no_grad():
        model(torch.randn(1, 3, image_size, image_size))
    return seen["hw"]


@pytest.mark.parametrize("stem,expected", [("small", 32), ("small_s2", 16), ("imagenet", 8), ("auto", 32)])
def test_resnet18_stems_set_the_resolution_of_the_first_stage(stem, expected):
    assert _first_block_resolution(create_net("resnet18", 10, 3, 32, stem=stem), 32, "layer1") == expected


def test_resnet18_auto_stem_is_imagenet_for_large_inputs():
    assert _first_block_resolution(create_net("resnet18", 10, 3, 64), 64, "layer1") == 16


@pytest.mark.parametrize("stem,expected", [("small", 28), ("imagenet", 14)])
def test_mobilenetv2_small_stem_keeps_full_resolution(stem, expected):
    model = create_net("mobilenetv2", 10, 3, 28, stem=stem)
    assert _first_block_resolution(model, 28, "bn1") == expected


@pytest.mark.parametrize("name", ["resnet20", "resnet18", "mobilenetv2", "vgg_small"])
def test_width_scales_parameters_roughly_quadratically(name):
    small = count_params(create_net(name, 10, 3, 32, width=0.5))
    big = count_params(create_net(name, 10, 3, 32, width=1.0))
    assert small < big
    if name != "mobilenetv2":  # mobilenet's 1280-wide head does not scale down
        assert 0.18 < small / big < 0.35


def test_resnet18_default_width_half_channels():
    model = create_net("resnet18", 10, 3, 32)
    assert model.conv1.out_channels == 32 and model.fc.in_features == 256


def test_unknown_net_names_close_matches():
    with pytest.raises(ProxylabError, match="resnet20"):
        create_net("resnet2", 10)


def test_unknown_option_lists_accepted_ones():
    with pytest.raises(ProxylabError, match=r"no option 'depth'.*width="):
        create_net("resnet20", 10, depth=32)
    assert net_options("resnet18") == {"width": 0.5, "stem": "auto"}


@pytest.mark.parametrize("bad", [dict(num_classes=1), dict(image_size=4), dict(in_channels=0)])
def test_bad_input_shape_is_a_user_error(bad):
    args = dict(num_classes=10, in_channels=3, image_size=32)
    args.update(bad)
    with pytest.raises(ProxylabError):
        create_net("resnet20", **args)


@pytest.mark.parametrize("name,kwargs", [("resnet18", dict(stem="big")), ("mobilenetv2", dict(stem="small_s2")),
                                         ("vgg_small", dict(width=0)), ("resnet20", dict(width=-1.0))])
def test_bad_option_values_are_user_errors(name, kwargs):
    with pytest.raises(ProxylabError):
        create_net(name, 10, **kwargs)
