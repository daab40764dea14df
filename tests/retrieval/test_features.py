"""The shared feature extractor: deterministic features, validated input, fp16 round trip, shipped weights."""
import numpy as np
import pytest
import torch

from proxylab.errors import ProxylabError
from proxylab.retrieval import features as F
from proxylab.retrieval.features import FEATURE_DIM, SHIPPED_EXTRACTOR, FeatureExtractor


def _fx(seed=0):
    torch.manual_seed(seed)
    return FeatureExtractor(F._build_trunk(), id="test")


def _images(n, seed=0):
    return np.random.default_rng(seed).uniform(size=(n, 3, 32, 32)).astype(np.float32)


def test_embed_shape_dtype_and_byte_determinism():
    fx = _fx()
    x = _images(300)  # more than one chunk
    a, b = fx.embed(x), fx.embed(torch.from_numpy(x))
    assert a.shape == (300, FEATURE_DIM) and a.dtype == np.float32
    assert a.tobytes() == b.tobytes()


def test_embed_matches_the_trunk_directly():
    fx = _fx()
    x = _images(5)
    with torch.no_grad():
        expected = fx.trunk(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(fx.embed(x), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad", [np.zeros((2, 1, 32, 32), np.float32), np.zeros((2, 3, 28, 28), np.float32),
                                 np.full((2, 3, 32, 32), 255.0, np.float32), np.zeros((0, 3, 32, 32), np.float32),
                                 np.zeros((2, 3, 32, 32), np.uint8)])
def test_embed_refuses_non_canonical_images(bad):
    with pytest.raises(ProxylabError):
        _fx().embed(bad)


def test_save_load_round_trip_in_fp16(tmp_path):
    fx = _fx(1)
    path = tmp_path / "fx.pt"
    fx.save(path)
    back = FeatureExtractor.load(path)
    x = _images(20, 3)
    # fp16 storage: features agree to about 3 significant digits; the id names the exact file.
    np.testing.assert_allclose(back.embed(x), fx.embed(x), rtol=2e-2, atol=2e-3)
    assert back.id.startswith("fx-") and back.id == FeatureExtractor.load(path).id
    assert path.stat().st_size < 1_000_000


def test_load_refuses_missing_and_foreign_files(tmp_path):
    with pytest.raises(ProxylabError, match="does not exist"):
        FeatureExtractor.load(tmp_path / "nope.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ProxylabError, match="not a proxylab feature extractor"):
        FeatureExtractor.load(junk)
    other = tmp_path / "other.pt"
    torch.save({"format": "something-else"}, other)
    with pytest.raises(ProxylabError):
        FeatureExtractor.load(other)


def test_default_sources_are_exactly_the_zoo_source_tasks():
    from proxylab.retrieval.tasks import NEW_TASKS, SOURCE_TASKS

    names = {t.name for t in F.default_sources()}
    assert names == set(SOURCE_TASKS) and not names & set(NEW_TASKS)
    assert "shapes-position" not in {t.dataset for t in F.default_sources()}  # the held-out labelling


def test_shipped_extractor_is_small_and_separates_source_classes():
    assert SHIPPED_EXTRACTOR.is_file(), "rebuild with: python -m proxylab.retrieval.features --rebuild"
    assert SHIPPED_EXTRACTOR.stat().st_size < 3_000_000
    fx = FeatureExtractor.default()
    from proxylab.retrieval.tasks import get_task

    # Nearest-prototype accuracy of frozen features on a source task's TEST split, well above chance (1/5).
    x, y = get_task("digits-lo").data("test")
    f = fx.embed(x)
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    protos = np.stack([f[y.numpy() == c].mean(0) for c in range(5)])
    acc = float(((f @ protos.T).argmax(1) == y.numpy()).mean())
    assert acc > 0.8


@pytest.mark.slow
def test_training_learns_a_tiny_source_task():
    from proxylab.retrieval.tasks import get_task

    torch.set_num_threads(1)
    fx, accs = F.train_extractor([get_task("digits-lo")], epochs=8, seed=0, batch_size=32, max_per_source=200,
                                 progress=False)
    assert accs["digits-lo"] > 0.5  # chance is 0.2
    with pytest.raises(ProxylabError):
        F.train_extractor([], epochs=1)


@pytest.mark.parametrize("flag", ["--epochs", "--max-per-source"])
def test_rebuild_cli_refuses_non_positive_sizes_before_training(tmp_path, flag, capsys):
    out = tmp_path / "fx.pt"
    with pytest.raises(SystemExit) as exc:
        F.main(["--rebuild", "--out", str(out), flag, "0"])
    assert exc.value.code == 2 and "must be >= 1" in capsys.readouterr().err
    assert not out.exists()
