"""Atomic writes (indistill/common/io.py): the file a reader finds is whole, with a plain file's permissions."""
import os
import stat

import pytest

from indistill.common.io import atomic_write_bytes, atomic_write_json, atomic_write_text


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_an_atomic_write_leaves_the_permissions_a_plain_write_gives(tmp_path, monkeypatch, umask):
    import indistill.common.io as io

    monkeypatch.setattr(io, "_UMASK", umask)  # the umask read at import, as another process would have it
    written = atomic_write_text(tmp_path / "results.md", "a table\n")
    assert stat.S_IMODE(written.stat().st_mode) == 0o666 & ~umask
    assert written.read_text() == "a table\n"


def test_the_modules_umask_is_the_processes(tmp_path):
    current = os.umask(0)
    os.umask(current)
    plain = tmp_path / "plain"
    plain.write_text("x")
    atomic = atomic_write_bytes(tmp_path / "atomic", b"x")
    assert stat.S_IMODE(atomic.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode) == 0o666 & ~current


def test_an_atomic_write_leaves_no_temporary_file(tmp_path):
    atomic_write_json(tmp_path / "a.json", {"b": 1})
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
