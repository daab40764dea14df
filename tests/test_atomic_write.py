"""atomic_write_bytes: whole files only, and the permissions a plain open() would give."""
import os
import stat

import pytest

from proxylab.utils import atomic_write_bytes, atomic_write_text


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o027])
def test_a_new_file_gets_the_current_umask_permissions_as_open_would(tmp_path, umask):
    """Not mkstemp's 0600, and not a umask read once at import: the one in force at the write."""
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "a.csv", "x\n")
        with open(tmp_path / "plain.csv", "w") as f:
            f.write("x\n")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "a.csv") == _mode(tmp_path / "plain.csv") == 0o666 & ~umask


def test_a_replaced_file_keeps_its_own_permissions_and_no_temporary_is_left(tmp_path):
    target = tmp_path / "b.json"
    target.write_text("old")
    os.chmod(target, 0o640)
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new" and _mode(target) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["b.json"]
