"""proxylab.utils.read_npz: every malformed upload becomes one ProxylabError (the service, the model server
and `zoo query --samples` all read user bytes through it)."""
import io

import numpy as np
import pytest

from proxylab.errors import ProxylabError
from proxylab.utils import npz_bytes, read_npz


def test_round_trip_from_bytes_and_path(tmp_path):
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert np.array_equal(read_npz(npz_bytes(a=a), "x")["a"], a)
    (tmp_path / "f.npz").write_bytes(npz_bytes(a=a, b=np.ones(2)))
    got = read_npz(tmp_path / "f.npz", "x")
    assert sorted(got) == ["a", "b"] and np.array_equal(got["a"], a)


def test_single_npy_array_is_named():
    buf = io.BytesIO()
    np.save(buf, np.zeros(3))
    with pytest.raises(ProxylabError, match="single .npy array.*numpy.savez"):
        read_npz(buf.getvalue(), "the upload")


@pytest.mark.parametrize("mangle", [lambda b: b[: len(b) // 2], lambda b: b"PK\x03\x04" + b"\x00" * 40, lambda b: b"junk"])
def test_truncated_or_corrupt_archives_are_one_clear_error(mangle):
    with pytest.raises(ProxylabError, match="the upload"):
        read_npz(mangle(npz_bytes(a=np.ones((50, 50)))), "the upload")


def test_pickled_members_are_refused():
    buf = io.BytesIO()
    np.savez(buf, a=np.array([{"x": 1}], dtype=object))
    with pytest.raises(ProxylabError):
        read_npz(buf.getvalue(), "the upload")


def test_model_server_answers_400_to_an_npy_body():
    import torch.nn as nn
    import urllib.error
    import urllib.request

    from proxylab.retrieval.model_server import serve_model

    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 2))
    buf = io.BytesIO()
    np.save(buf, np.zeros((1, 3, 32, 32), dtype=np.float32))
    with serve_model(net) as srv:
        req = urllib.request.Request(srv.url + "/predict", data=buf.getvalue(), method="POST")
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(req, timeout=30)
        assert exc.value.code == 400 and b"numpy.savez" in exc.value.read()


def test_a_file_that_is_no_archive_is_named_so_without_pickle_advice(tmp_path):
    path = tmp_path / "notes.npz"
    path.write_text("just some text\n")
    for source in (path, path.read_bytes()):
        with pytest.raises(ProxylabError, match="is not an .npz archive") as err:
            read_npz(source, "samples file")
        assert "allow_pickle" not in str(err.value)


def test_an_npz_that_is_no_signature_names_the_missing_array(tmp_path):
    from proxylab.retrieval.signature import Signature

    buf = io.BytesIO()
    np.savez(buf, images=np.zeros((2, 3)), labels=np.arange(2))
    with pytest.raises(ProxylabError, match=r"not a proxylab signature \(it has no array 'format'; it has "
                                            r"\['images', 'labels'\]\)") as err:
        Signature.from_bytes(buf.getvalue(), "signature file x.npz")
    assert str(err.value).count("not a proxylab signature") == 1
    with pytest.raises(ProxylabError) as err:  # not even an archive: said once, not twice
        Signature.from_bytes(b"hello world", "signature file x.npz")
    assert str(err.value).count("x.npz") == 1
