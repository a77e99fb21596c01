"""The write layer: a failed write is one WriteError naming the path and the reason, and leaves
nothing behind (temp file, partial folder, or folders it created on the way)."""

import errno
import os

import pytest

from odelt import fileio
from odelt.errors import WriteError


def _full_disk(monkeypatch):
    def commit(tmp, path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(fileio.PRIMITIVES, "commit", commit)


def test_failed_write_removes_its_temp_file_and_new_folders(tmp_path, monkeypatch):
    _full_disk(monkeypatch)
    with pytest.raises(WriteError) as e:
        fileio.write_json_atomic(tmp_path / "a" / "b" / "x.json", {"k": 1})
    assert str(e.value) == f"cannot write {tmp_path}/a/b/x.json: No space left on device"
    assert list(tmp_path.iterdir()) == []


def test_existing_file_survives_a_failed_replace(tmp_path, monkeypatch):
    target = fileio.write_text_atomic(tmp_path / "x.txt", "old")
    _full_disk(monkeypatch)
    with pytest.raises(WriteError):
        fileio.write_text_atomic(target, "new")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["x.txt"]


def test_partial_folder_is_removed_and_named_by_its_target(tmp_path, monkeypatch):
    with pytest.raises(WriteError) as e:
        with fileio.building(tmp_path, "bundle") as work:
            (work / "kept.txt").write_text("x")
            _full_disk(monkeypatch)
            fileio.write_text_atomic(work / "graph.onnx", "y")
    assert str(e.value) == f"cannot write {tmp_path}/bundle/graph.onnx: No space left on device"
    assert list(tmp_path.iterdir()) == []


def test_library_writes_are_cleaned_up_too(tmp_path):
    started = tmp_path / "engine.data"
    with pytest.raises(WriteError, match="engine.plan: Read-only file system"):
        with fileio.writing(tmp_path / "engine.plan", cleanup=(started,)):
            started.write_bytes(b"half")
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
    assert not started.exists()


def test_success_is_atomic_and_shared(tmp_path):
    path = fileio.write_bytes_atomic(tmp_path / "x.bin", b"abc")
    assert path.read_bytes() == b"abc" and oct(path.stat().st_mode & 0o777) == "0o644"
    assert fileio.file_hash(path) == "ba7816bf8f01cfea"          # sha256("abc"), first 16 hex digits


def test_swap_in_dir_replaces_a_folder_or_keeps_the_old_one(tmp_path, monkeypatch):
    final = tmp_path / "vae"
    final.mkdir()
    (final / "old.txt").write_text("old")
    new = fileio.partial_dir(tmp_path, "vae")
    (new / "new.txt").write_text("new")
    assert fileio.swap_in_dir(new, final) == final
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vae"] and sorted(os.listdir(final)) == ["new.txt"]
    again = fileio.partial_dir(tmp_path, "vae")
    real_commit = fileio.PRIMITIVES.commit

    def commit(tmp, path):                       # moving the old folder aside and back works; the new one fails
        if tmp == again:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_commit(tmp, path)
    monkeypatch.setattr(fileio.PRIMITIVES, "commit", commit)
    with pytest.raises(WriteError, match="vae: No space left on device"):
        fileio.swap_in_dir(again, final)
    monkeypatch.setattr(fileio.PRIMITIVES, "commit", real_commit)
    assert sorted(os.listdir(final)) == ["new.txt"]
    assert not any(p.name.startswith(".vae.old") for p in tmp_path.iterdir())
