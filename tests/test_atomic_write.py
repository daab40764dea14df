"""atomic_write_bytes: whole files only, and the permissions a plain open() would give."""
import os
import stat

from proxylab.utils import atomic_write_bytes, atomic_write_text


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_new_file_gets_the_umask_permissions_not_mkstemps_0600(tmp_path):
    atomic_write_text(tmp_path / "a.csv", "x\n")
    with open(tmp_path / "plain.csv", "w") as f:  # what the same process gets from a plain open()
        f.write("x\n")
    assert _mode(tmp_path / "a.csv") == _mode(tmp_path / "plain.csv")


def test_a_replaced_file_keeps_its_own_permissions_and_no_temporary_is_left(tmp_path):
    target = tmp_path / "b.json"
    target.write_text("old")
    os.chmod(target, 0o640)
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new" and _mode(target) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["b.json"]
