"""`proxylab zoo ...` end to end on a tiny zoo, with a seeded extractor and encoders saved to files."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from proxylab.cli import main
from proxylab.retrieval.tasks import get_task
from proxylab.retrieval.zoo import load_zoo


def run(capsys, *argv):
    code = main([*argv, "--format", "json"])
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if code == 0 and captured.out.strip() else None), captured.err


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "zoo"
    assert main(["zoo", "build", "--out", str(out), "--n-models", "2", "--max-train-images", "64", "--no-signatures",
                 "--no-progress", "--format", "json"]) == 0
    return out


@pytest.fixture(scope="module")
def encoder_files(tmp_path_factory):
    """A real extractor and real encoders with seeded random weights, saved as files (independent of what ships)."""
    from proxylab.retrieval.encoders import Encoders
    from proxylab.retrieval.features import FeatureExtractor, _build_trunk

    folder = tmp_path_factory.mktemp("enc")
    torch.manual_seed(0)
    FeatureExtractor(_build_trunk(), id="tmp").save(folder / "fx.pt")
    fx = FeatureExtractor.load(folder / "fx.pt")
    torch.manual_seed(1)
    Encoders(extractor_id=fx.id, extractor=fx).save(folder / "enc.pt")
    return str(folder / "fx.pt"), str(folder / "enc.pt")


def samples_file(path, task="mnist5k-lo", n=5, classes=None):
    x, y = get_task(task).sample("train", n, seed=0)
    if classes is not None:
        keep = np.isin(y.numpy(), classes)
        x, y = x[torch.as_tensor(keep)], y[torch.as_tensor(keep)]
    np.savez(path, images=x.numpy(), labels=y.numpy())
    return str(path)


def test_build_and_list(zoo_dir, capsys):
    zoo = load_zoo(zoo_dir)
    assert [r["task"] for r in zoo.manifest] == ["mnist5k-lo", "mnist5k-hi"]
    code, rows, _ = run(capsys, "zoo", "list", "--zoo", str(zoo_dir))
    assert code == 0 and [r["id"] for r in rows] == [0, 1]
    code, rows, _ = run(capsys, "zoo", "list", "--zoo", str(zoo_dir), "--task", "mnist5k-hi")
    assert [r["name"] for r in rows] == [zoo.get(1)["name"]]
    code, rows, _ = run(capsys, "zoo", "list", "--zoo", str(zoo_dir), "--family", "animal,digits")
    assert code == 0 and rows == []
    code, rows, _ = run(capsys, "zoo", "list", "--zoo", str(zoo_dir), "--max-params", str(zoo.get(0)["params"] - 1))
    assert rows == []
    code, _, err = run(capsys, "zoo", "list", "--zoo", str(zoo_dir), "--min-params", "9", "--max-params", "3")
    assert code == 2 and "nothing can match" in err


def test_signature_add_query_rerank_remove(zoo_dir, encoder_files, tmp_path, capsys):
    from proxylab.retrieval.encoders import Encoders
    from proxylab.retrieval.features import FeatureExtractor
    from proxylab.retrieval.rerank import leep
    from proxylab.retrieval.signature import Signature

    fx_path, enc_path = encoder_files
    zoo = load_zoo(zoo_dir)
    index = tmp_path / "index"
    for i in zoo.ids:
        row = zoo.get(i)
        sig = tmp_path / f"{i}.npz"
        model = str(i) if i == 0 else row["name"]  # by id or by name
        code, out, err = run(capsys, "zoo", "signature", "--zoo", str(zoo_dir), "--model", model,
                             "--extractor", fx_path, "--out", str(sig))
        assert code == 0, err
        assert out["num_classes"] == 5 and out["calls"] > 0 and Signature.load(sig).num_classes == 5
        code, out, err = run(capsys, "zoo", "add", "--index", str(index), "--signature", str(sig), "--name", row["name"],
                             "--task", row["task"], "--family", row["family"], "--arch", row["arch"],
                             "--params", str(row["params"]), "--id", str(i), "--encoders", enc_path,
                             "--extractor", fx_path)
        assert code == 0, err
        assert out["id"] == i and out["models"] == i + 1
    code, rows, _ = run(capsys, "zoo", "list", "--index", str(index), "--arch", "resnet20")
    assert [r["id"] for r in rows] == [0, 1]
    # the zoo folder given where its index belongs: refused, nothing written there
    code, _, err = run(capsys, "zoo", "add", "--index", str(zoo_dir), "--signature", str(sig), "--name", "x",
                       "--task", "t", "--family", "f", "--arch", "a", "--params", "1", "--encoders", enc_path,
                       "--extractor", fx_path)
    assert code == 2 and f"is a zoo folder, not an index: add to its index with --index {zoo_dir / 'index'}" in err
    assert not (zoo_dir / "models.sqlite").exists()
    # an index with no models, no filters: said so, not blamed on filters
    empty = tmp_path / "empty"
    code, _, err = run(capsys, "zoo", "add", "--index", str(empty), "--signature", str(sig), "--name", "x",
                       "--task", "t", "--family", "f", "--arch", "a", "--params", "1", "--id", "7",
                       "--encoders", enc_path, "--extractor", fx_path)
    assert code == 0, err
    assert run(capsys, "zoo", "remove", "--index", str(empty), "--id", "7")[0] == 0
    code, _, err = run(capsys, "zoo", "query", "--index", str(empty), "--samples", samples_file(tmp_path / "e.npz"),
                       "--encoders", enc_path, "--extractor", fx_path)
    assert code == 2 and "holds no models" in err and "loosen" not in err
    code, _, err = run(capsys, "zoo", "remove", "--index", str(empty), "--id", "7")
    assert code == 2 and "proxylab zoo list" in err

    samples = samples_file(tmp_path / "q.npz")
    code, out, err = run(capsys, "zoo", "query", "--index", str(index), "--samples", samples, "--k", "2",
                         "--encoders", enc_path, "--extractor", fx_path)
    assert code == 0, err
    enc = Encoders.load(enc_path, extractor=FeatureExtractor.load(fx_path))
    data = np.load(samples)
    q = enc.encode_query(data["images"], data["labels"])
    want = {i: float(q @ enc.encode_signature(Signature.load(tmp_path / f"{i}.npz"))) for i in zoo.ids}
    assert [m["id"] for m in out["models"]] == sorted(want, key=lambda i: -want[i])
    assert [m["score"] for m in out["models"]] == pytest.approx(sorted(want.values(), reverse=True), abs=1e-5)
    assert out["model_calls"] == 0

    # other encoders (same extractor, other weights) may neither query nor grow this index
    torch.manual_seed(2)
    other = Encoders(extractor_id=enc.extractor_id, extractor=enc.extractor)
    other.save(tmp_path / "other.pt")
    for argv in (("query", "--samples", samples), ("add", "--signature", str(tmp_path / "0.npz"), "--name", "x")):
        code, _, err = run(capsys, "zoo", *argv, "--index", str(index), "--encoders", str(tmp_path / "other.pt"),
                           "--extractor", fx_path)
        assert code == 2 and enc.id in err and other.id in err and "rebuild" in err
    code, rows, _ = run(capsys, "zoo", "list", "--index", str(index))
    assert len(rows) == 2

    code, out, err = run(capsys, "zoo", "query", "--index", str(index), "--samples", samples, "--k", "2",
                         "--rerank", "leep", "--zoo", str(zoo_dir), "--encoders", enc_path, "--extractor", fx_path)
    assert code == 0, err
    n = len(data["labels"])
    assert out["model_calls"] == 2 * n
    brute = {i: leep(zoo.blackbox(i).predict_proba(data["images"]), data["labels"]) for i in zoo.ids}
    assert [m["id"] for m in out["models"]] == sorted(brute, key=lambda i: -brute[i])
    assert [m["score"] for m in out["models"]] == pytest.approx(sorted(brute.values(), reverse=True), abs=1e-5)
    # gray-box: LogME of the zoo models' classifier-input features (local torch models expose them)
    code, out, err = run(capsys, "zoo", "query", "--index", str(index), "--samples", samples, "--k", "2",
                         "--rerank", "logme", "--zoo", str(zoo_dir), "--encoders", enc_path, "--extractor", fx_path)
    assert code == 0, err
    assert out["model_calls"] == 2 * n
    from proxylab.retrieval.oracle import penultimate_features
    from proxylab.retrieval.rerank import logme

    brute = {i: logme(penultimate_features(zoo.blackbox(i).module, torch.from_numpy(data["images"])), data["labels"])
             for i in zoo.ids}
    assert [m["id"] for m in out["models"]] == sorted(brute, key=lambda i: -brute[i])
    assert [m["score"] for m in out["models"]] == pytest.approx(sorted(brute.values(), reverse=True), abs=1e-5)

    # bad queries: a clear error, nothing written
    one_class = samples_file(tmp_path / "one.npz", classes=[2])
    code, _, err = run(capsys, "zoo", "query", "--index", str(index), "--samples", one_class,
                       "--encoders", enc_path, "--extractor", fx_path)
    assert code == 2 and "at least 2 classes" in err
    np.savez(tmp_path / "bad.npz", images=np.zeros((4, 1, 28, 28), np.float32), labels=np.array([0, 1, 0, 1]))
    code, _, err = run(capsys, "zoo", "query", "--index", str(index), "--samples", str(tmp_path / "bad.npz"),
                       "--encoders", enc_path, "--extractor", fx_path)
    assert code == 2 and "shape" in err
    np.savez(tmp_path / "nolabels.npz", images=data["images"])
    code, _, err = run(capsys, "zoo", "query", "--index", str(index), "--samples", str(tmp_path / "nolabels.npz"),
                       "--encoders", enc_path, "--extractor", fx_path)
    assert code == 2 and "lacks labels" in err

    code, out, err = run(capsys, "zoo", "remove", "--index", str(index), "--id", "1")
    assert code == 0 and out["models"] == 1
    code, _, err = run(capsys, "zoo", "remove", "--index", str(index), "--id", "7")
    assert code == 2 and "7" in err
    code, rows, _ = run(capsys, "zoo", "list", "--index", str(index))
    assert [r["id"] for r in rows] == [0]


def test_bad_arguments_are_clear_errors(zoo_dir, tmp_path, capsys):
    code, _, err = run(capsys, "zoo", "signature", "--out", str(tmp_path / "s.npz"))
    assert code == 2 and "say which model" in err
    code, _, err = run(capsys, "zoo", "signature", "--url", "http://127.0.0.1:9", "--zoo", str(zoo_dir),
                       "--out", str(tmp_path / "s.npz"))
    assert code == 2 and "--url" in err
    code, _, err = run(capsys, "zoo", "signature", "--zoo", str(zoo_dir), "--model", "nope", "--out", str(tmp_path / "s.npz"))
    assert code == 2 and "no model named 'nope'" in err
    code, _, err = run(capsys, "zoo", "query", "--index", str(tmp_path), "--samples", str(tmp_path / "missing.npz"))
    assert code == 2 and "does not exist" in err
    code, _, err = run(capsys, "zoo", "query", "--samples", "x.npz", "--rerank", "leep")
    assert code == 2 and "--zoo" in err
    # the service's model servers give probabilities only: refused before the samples are read or sent
    code, _, err = run(capsys, "zoo", "query", "--samples", "x.npz", "--rerank", "logme",
                       "--server", "http://127.0.0.1:9")
    assert code == 2 and "--rerank logme needs the models' features" in err and "leep or nce" in err
    code, _, err = run(capsys, "zoo", "list", "--index", str(tmp_path))
    assert code == 2 and "no model index" in err
    fake = tmp_path / "myzoo"  # a zoo folder given as --index: pointed to its index
    (fake / "index").mkdir(parents=True)
    (fake / "index" / "models.sqlite").write_bytes(b"")
    code, _, err = run(capsys, "zoo", "list", "--index", str(fake))
    assert code == 2 and f"its index is '{fake / 'index'}'" in err
    one_class = tmp_path / "one.npz"
    np.savez(one_class, images=np.zeros((3, 3, 32, 32), np.float32), labels=np.zeros(3, np.int64))
    code, _, err = run(capsys, "zoo", "query", "--samples", str(one_class))
    assert code == 2 and "got 1 ([0])" in err  # plain numbers, no numpy repr
    code, _, err = run(capsys, "zoo", "serve-model", "--zoo", str(zoo_dir), "--model", "5")
    assert code == 2 and "no model with id 5" in err
    code, _, err = run(capsys, "zoo", "build", "--out", str(zoo_dir), "--n-models", "2", "--seed", "3",
                       "--max-train-images", "64", "--no-signatures")
    assert code == 2 and "seed" in err
    code, _, err = run(capsys, "zoo", "eval", "--zoo", str(zoo_dir), "--tasks", "shapes-position", "--kind", "same")
    assert code == 2 and "no task of --kind same" in err


def test_serve_model_answers_like_the_in_process_model(zoo_dir):
    from proxylab.retrieval.blackbox import HTTPBlackBox

    proc = subprocess.Popen([sys.executable, "-m", "proxylab.cli", "zoo", "serve-model", "--zoo", str(zoo_dir),
                             "--model", "1", "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "serving" in line, proc.stderr.read() if proc.poll() is not None else line
        url = line.split(" at ")[1].split()[0]
        remote = HTTPBlackBox(url)
        x = get_task("mnist5k-hi").sample("train", 2, seed=0)[0].numpy()
        assert remote.num_classes == 5
        assert np.allclose(remote.predict_proba(x), load_zoo(zoo_dir).blackbox(1).predict_proba(x), atol=1e-6)
        assert remote.calls == len(x)
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.slow
def test_eval_runs_the_evaluation_on_all_models(zoo_dir, encoder_files, tmp_path, capsys):
    import shutil

    from proxylab.retrieval.features import FeatureExtractor
    from proxylab.retrieval.zoo import build_signatures

    fx_path, enc_path = encoder_files
    zoo = tmp_path / "zoo"
    shutil.copytree(zoo_dir, zoo)
    build_signatures(zoo, progress=False, extractor=FeatureExtractor.load(fx_path))
    out_csv = tmp_path / "summary.csv"
    code, rows, err = run(capsys, "zoo", "eval", "--zoo", str(zoo), "--kind", "same", "--tasks", "mnist5k-lo,mnist5k-hi",
                          "--shots", "5", "--all-models", "--encoders", enc_path, "--extractor", fx_path,
                          "--out", str(out_csv), "--plot", str(tmp_path / "eval.png"))
    assert code == 0, err
    import matplotlib.image as mpimg

    assert mpimg.imread(tmp_path / "eval.png")[..., :3].std() > 0.01  # bars drawn, not a blank canvas
    methods = {r["method"] for r in rows}
    assert {"proxylab", "random", "largest", "leep-all"} <= methods
    assert out_csv.read_text().startswith("method")
    assert (zoo / "oracle" / "oracle.csv").is_file()  # ground truth came from this zoo's oracle
