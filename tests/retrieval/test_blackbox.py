"""Black-box adapters: probabilities equal softmax(logits), calls counted per image, bad answers refused."""
import numpy as np
import pytest
import torch
import torch.nn as nn

from proxylab.errors import ProxylabError
from proxylab.retrieval.blackbox import BlackBoxModel, CheckpointBlackBox, TorchBlackBox, check_probabilities


def _net(k=4, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, k))


def _images(n, seed=0):
    return np.random.default_rng(seed).uniform(size=(n, 3, 32, 32)).astype(np.float32)


def test_torch_blackbox_is_softmax_of_logits_and_counts_images():
    net = _net()
    bb = TorchBlackBox(net, batch_size=3)
    assert bb.num_classes == 4  # inferred from the module's output width
    x = _images(7)
    p = bb.predict_proba(x)
    with torch.no_grad():
        expected = torch.softmax(net(torch.from_numpy(x)), 1).numpy()
    np.testing.assert_allclose(p, expected, atol=1e-6)
    assert p.dtype == np.float32 and bb.calls == 7
    bb.predict_proba(x[:2])
    assert bb.calls == 9


def test_torch_blackbox_puts_module_in_eval_mode():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Dropout(0.9), nn.Linear(3072, 3))
    bb = TorchBlackBox(net)
    x = _images(4)
    np.testing.assert_array_equal(bb.predict_proba(x), bb.predict_proba(x))


def test_invalid_images_are_refused_before_any_call():
    bb = TorchBlackBox(_net())
    with pytest.raises(ProxylabError, match="shape"):
        bb.predict_proba(np.zeros((2, 3, 28, 28), np.float32))
    assert bb.calls == 0


class _Fixed(BlackBoxModel):
    """A black box answering a fixed array: for checking the validation of answers."""

    def __init__(self, answer, num_classes=3):
        super().__init__()
        self.answer, self.num_classes, self.name = answer, num_classes, "fixed"

    def _predict(self, x):
        return self.answer[: x.shape[0]]


@pytest.mark.parametrize("answer,match", [
    (np.array([[0.5, np.nan, 0.5]]), "NaN"),
    (np.array([[1.5, -0.5, 0.0]]), "negative"),
    (np.array([[0.2, 0.2, 0.2]]), "sum to 1"),
    (np.array([[0.5, 0.5]]), "shape"),
    (np.array([0.2, 0.3, 0.5]), "shape"),
])
def test_bad_probabilities_raise_naming_the_model(answer, match):
    bb = _Fixed(answer)
    with pytest.raises(ProxylabError, match=match) as e:
        bb.predict_proba(_images(1))
    assert "fixed" in str(e.value)
    assert bb.calls == 1  # the image was sent, so it counts


def test_check_probabilities_accepts_valid_and_casts():
    p = np.array([[0.25, 0.75], [1.0, 0.0]], dtype=np.float64)
    out = check_probabilities(p, 2, 2)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, p.astype(np.float32))
    with pytest.raises(ProxylabError, match="\\[3, 2\\]"):
        check_probabilities(p, 3, 2)
    with pytest.raises(ProxylabError, match="numbers"):
        check_probabilities([["a", "b"]], 1, 2)


def test_module_returning_nan_logits_is_caught():
    class NaNNet(nn.Module):
        def forward(self, x):
            return torch.full((x.shape[0], 3), float("nan"))

    bb = TorchBlackBox(NaNNet(), num_classes=3, name="nanny")
    with pytest.raises(ProxylabError, match="nanny.*NaN"):
        bb.predict_proba(_images(2))


def test_declared_width_mismatch_is_caught():
    bb = TorchBlackBox(_net(k=4), num_classes=5)
    with pytest.raises(ProxylabError, match="shape"):
        bb.predict_proba(_images(1))


def test_non_module_is_refused():
    with pytest.raises(ProxylabError, match="nn.Module"):
        TorchBlackBox(lambda x: x)


def _user_factory(tmp_path, seed):
    """(spec of a file.py:factory making a 5-class linear network, that network with seeded weights)."""
    src = tmp_path / "mynet.py"
    src.write_text("import torch.nn as nn\n"
                   "def make():\n"
                   "    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 5))\n")
    torch.manual_seed(seed)
    return f"{src}:make", nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 5))


def test_checkpoint_blackbox_from_user_factory_and_weights(tmp_path):
    spec, ref = _user_factory(tmp_path, 3)
    torch.save(ref.state_dict(), tmp_path / "w.pt")
    bb = CheckpointBlackBox(spec, weights=tmp_path / "w.pt")
    x = _images(3)
    with torch.no_grad():
        expected = torch.softmax(ref(torch.from_numpy(x)), 1).numpy()
    np.testing.assert_allclose(bb.predict_proba(x), expected, atol=1e-6)
    assert bb.num_classes == 5 and bb.calls == 3


def test_checkpoint_blackbox_from_checkpoint_folder(tmp_path):
    from proxylab.nets import create_net, save_checkpoint

    torch.manual_seed(0)
    net = create_net("resnet20", 6, in_channels=3, image_size=32).eval()
    save_checkpoint(tmp_path / "ck", net, {"net": "resnet20", "num_classes": 6, "in_channels": 3, "image_size": 32})
    bb = CheckpointBlackBox(str(tmp_path / "ck"))
    x = _images(2)
    with torch.no_grad():
        expected = torch.softmax(net(torch.from_numpy(x)), 1).numpy()
    np.testing.assert_allclose(bb.predict_proba(x), expected, atol=1e-5)
    assert bb.num_classes == 6


def test_checkpoint_blackbox_bad_spec(tmp_path):
    with pytest.raises(ProxylabError, match="neither"):
        CheckpointBlackBox(str(tmp_path / "nothing"))


@pytest.mark.parametrize("answer,match", [(np.array([[1.5, -0.5, 0.0]]), "negative"),
                                          (np.array([[0.2, 0.2, 0.2]]), "sum to 1")])
def test_an_answer_that_must_not_be_quoted_keeps_its_values_out(answer, match):
    """quotes_answers False (the service's URL black boxes): the same checks, no value of the answer shown."""
    quoted = _Fixed(answer)
    with pytest.raises(ProxylabError, match=match) as e:
        quoted.predict_proba(_images(1))
    assert any(v in str(e.value) for v in ("-0.5", "0.6"))  # by default the offending value is shown
    silent = _Fixed(answer)
    silent.quotes_answers = False
    with pytest.raises(ProxylabError, match=match) as e:
        silent.predict_proba(_images(1))
    assert "-0.5" not in str(e.value) and "0.6" not in str(e.value) and "row 0" not in str(e.value)


def test_text_arrays_are_not_numbers_even_when_they_parse():
    with pytest.raises(ProxylabError, match="not numbers"):
        check_probabilities(np.array([["0.5", "0.5"]]), 1, 2)


def test_a_trained_checkpoint_gets_its_normalisation_in_front(tmp_path):
    """`proxylab train` normalises its images; the black box is sent raw [0, 1] pixels, so the checkpoint's
    mean/std (recorded, or recomputed from its data set for an older config) go in front of the network."""
    from proxylab.data import get_dataset
    from proxylab.nets import create_net, save_checkpoint

    torch.manual_seed(0)
    net = create_net("resnet20", 6, in_channels=3, image_size=32).eval()
    mean, std = [0.2, 0.3, 0.4], [0.5, 0.25, 0.125]
    base = {"net": "resnet20", "num_classes": 6, "in_channels": 3, "image_size": 32}
    save_checkpoint(tmp_path / "ck", net, {**base, "mean": mean, "std": std})
    x = _images(2)
    with torch.no_grad():
        norm = (torch.from_numpy(x) - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
        expected = torch.softmax(net(norm), 1).numpy()
    np.testing.assert_allclose(CheckpointBlackBox(str(tmp_path / "ck")).predict_proba(x), expected, atol=1e-5)
    # a config from before mean/std were recorded: recomputed from its data set and seed
    save_checkpoint(tmp_path / "old", net, {**base, "data": "shapes-color", "seed": 0})
    ds = get_dataset("shapes-color", seed=0)
    with torch.no_grad():
        norm = (torch.from_numpy(x) - torch.tensor(ds.mean).view(1, 3, 1, 1)) / torch.tensor(ds.std).view(1, 3, 1, 1)
        expected = torch.softmax(net(norm), 1).numpy()
    np.testing.assert_allclose(CheckpointBlackBox(str(tmp_path / "old")).predict_proba(x), expected, atol=1e-5)


def test_a_factory_checkpoint_is_taken_as_it_is(tmp_path):
    """A `factory` config names a user's network, which takes canonical images itself: never normalised again,
    even when its config names a data set."""
    from proxylab.nets import save_checkpoint

    spec, ref = _user_factory(tmp_path, 4)
    save_checkpoint(tmp_path / "ck", ref, {"factory": spec, "data": "shapes-color", "num_classes": 5})
    x = _images(2)
    with torch.no_grad():
        expected = torch.softmax(ref(torch.from_numpy(x)), 1).numpy()
    np.testing.assert_allclose(CheckpointBlackBox(str(tmp_path / "ck")).predict_proba(x), expected, atol=1e-6)


def test_a_network_that_cannot_take_canonical_images_is_a_clear_error(tmp_path):
    from proxylab.nets import create_net, save_checkpoint

    gray = create_net("resnet20", 4, in_channels=1, image_size=28)
    save_checkpoint(tmp_path / "gray", gray, {"net": "resnet20", "num_classes": 4, "in_channels": 1, "image_size": 28,
                                              "data": "mnist5k"})
    with pytest.raises(ProxylabError, match=r"1-channel 28 px .* --data 'mnist5k@32px,3ch'"):
        CheckpointBlackBox(str(tmp_path / "gray"))
    src = tmp_path / "bad.py"  # a user's network whose first layer does not fit 3 x 32 x 32
    src.write_text("import torch.nn as nn\n"
                   "def make():\n"
                   "    return nn.Sequential(nn.Flatten(), nn.Linear(10, 4))\n")
    with pytest.raises(ProxylabError, match=r"failed on canonical images \[N, 3, 32, 32\].*mat1 and mat2"), \
            pytest.warns(UserWarning, match="no weights given"):
        CheckpointBlackBox(f"{src}:make")
    with pytest.warns(UserWarning, match="untrained"):
        bb = CheckpointBlackBox(f"{src}:make", num_classes=4)  # no probe pass at set-up: fails on the first call
    with pytest.raises(ProxylabError, match="failed on canonical images"):
        bb.predict_proba(_images(2))


def test_a_zoo_model_folder_is_pointed_to_the_zoo(tmp_path):
    (tmp_path / "zoo" / "models" / "0001-a").mkdir(parents=True)
    (tmp_path / "zoo" / "zoo.json").write_text("{}")
    with pytest.raises(ProxylabError, match=r"is a model of the zoo .*--model 0001-a"):
        CheckpointBlackBox(str(tmp_path / "zoo" / "models" / "0001-a"))
