import pytest
import torch

from proxylab.errors import ProxylabError
from proxylab.nets import create_net, evaluate, train_net
from proxylab.nets.train import predict, random_crop, random_hflip, resolve_augment


def _trained(ds, seed, epochs=1, **kw):
    torch.manual_seed(0)  # same initial weights; only the training seed varies
    model = create_net("resnet20", 10, in_channels=1, image_size=8, width=0.5)
    result = train_net(model, ds, epochs=epochs, seed=seed, batch_size=32, progress=False, **kw)
    return model, result


def test_same_seed_gives_identical_weights_and_another_seed_differs(tiny_digits):
    a, ra = _trained(tiny_digits, seed=3, limit=96)
    b, rb = _trained(tiny_digits, seed=3, limit=96)
    c, _ = _trained(tiny_digits, seed=4, limit=96)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)  # BN running stats and step counters included
    assert ra["train_loss"] == rb["train_loss"] and ra["test_acc"] == rb["test_acc"]
    assert any(not torch.equal(sa[k], sc[k]) for k in sa if sa[k].is_floating_point())


def test_training_learns_far_above_chance(tiny_digits):
    torch.manual_seed(0)
    model = create_net("resnet20", 10, in_channels=1, image_size=8, width=0.5)
    before = evaluate(model, tiny_digits.test.x, tiny_digits.test.y)
    result = train_net(model, tiny_digits, epochs=8, seed=0, batch_size=32, lr=0.1, progress=False)
    assert result["test_acc"] > 0.8 > before + 0.3  # chance is 0.1 on 10 balanced classes
    assert result["test_acc"] == evaluate(model, tiny_digits.test.x, tiny_digits.test.y)
    losses = [h["train_loss"] for h in result["history"]]
    assert losses[-1] < losses[0] / 2
    assert len(result["epoch_seconds"]) == 8 and result["seconds"] > 0
    assert result["train_size"] == 300 and result["augment"] == "none"


def test_evaluate_matches_a_plain_argmax_oracle(tiny_digits):
    torch.manual_seed(1)
    model = create_net("vgg_small", 10, in_channels=1, image_size=8)
    model.train()
    x, y = tiny_digits.test.x, tiny_digits.test.y
    model.eval()
    with torch.no_grad():
        expected = int((model(x).argmax(1) == y).sum()) / len(y)
    model.train()
    acc = evaluate(model, x, y, batch_size=7)  # ragged batches must not change the answer
    assert acc == pytest.approx(expected, abs=1e-12)
    assert model.training  # the caller's mode is restored
    assert predict(model, x[:5], batch_size=2).shape == (5, 10)
    model.eval()
    with torch.no_grad():  # the NHWC fast path must give the plain path's logits
        assert torch.allclose(predict(model, x, channels_last=True), model(x), atol=1e-5)
        assert torch.allclose(predict(model, x, channels_last=False), model(x), atol=1e-5)


def test_user_networks_get_plain_layout_batches():
    class ViewsItsInput(torch.nn.Module):  # .view() fails on a channels-last batch
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(48, 10)

        def forward(self, x):
            return self.fc(x.view(len(x), -1))

    x = torch.randn(6, 3, 4, 4)
    assert predict(ViewsItsInput(), x).shape == (6, 10)
    with pytest.raises(RuntimeError):
        predict(ViewsItsInput(), x, channels_last=True)


def test_random_crop_is_a_shift_of_the_replicate_padded_image():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).reshape(2, 3, 6, 6)
    out = random_crop(x, 2, g)
    g = torch.Generator().manual_seed(0)
    dy, dx = torch.randint(0, 5, (2,), generator=g), torch.randint(0, 5, (2,), generator=g)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="replicate")
    for i in range(2):
        assert torch.equal(out[i], padded[i, :, dy[i]:dy[i] + 6, dx[i]:dx[i] + 6])


def test_random_hflip_flips_about_half():
    x = torch.randn(400, 1, 4, 4)
    out = random_hflip(x, torch.Generator().manual_seed(0))
    flipped = torch.tensor([torch.equal(o, a.flip(2)) for o, a in zip(out, x)])
    kept = torch.tensor([torch.equal(o, a) for o, a in zip(out, x)])
    assert bool((flipped | kept).all()) and 150 < int(flipped.sum()) < 250


def test_augment_auto_never_shifts_position_labels():
    assert resolve_augment("auto", "shapes-position", 32) == "none"
    assert resolve_augment("auto", "mnist5k", 28) == "crop"
    assert resolve_augment("auto", "digits", 8) == "none"
    assert resolve_augment("crop", "digits", 8) == "crop"
    with pytest.raises(ProxylabError, match="augment"):
        resolve_augment("mixup", "digits")


@pytest.mark.parametrize("bad", [dict(epochs=0), dict(batch_size=1), dict(lr=-0.1), dict(limit=1)])
def test_bad_training_arguments_are_user_errors(tiny_digits, bad):
    args = dict(epochs=1, seed=0, progress=False)
    args.update(bad)
    with pytest.raises(ProxylabError):
        train_net(create_net("resnet20", 10, 1, 8, width=0.25), tiny_digits, **args)


def test_divergence_is_reported_not_silently_saved(tiny_digits):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    with torch.no_grad():
        model[1].weight.fill_(float("inf"))  # what a blown-up run looks like: non-finite logits and loss
    with pytest.raises(ProxylabError, match="diverged"):
        train_net(model, tiny_digits, epochs=1, seed=0, progress=False, limit=64)


def test_evaluate_rejects_mismatched_labels(tiny_digits):
    with pytest.raises(ProxylabError, match="one label per image"):
        evaluate(create_net("resnet20", 10, 1, 8), tiny_digits.test.x, tiny_digits.test.y[:3])
