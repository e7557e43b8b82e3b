"""Atomic writes: the new content appears whole or not at all, no temporaries are left, the usual
permissions, and a folder swap that puts the previous folder back when interrupted."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from reconad.atomic import atomic_file, atomic_folder, atomic_path


@pytest.fixture
def umask() -> int:
    mask = os.umask(0o027)  # a non-default umask, so "the usual permissions" is not 0644 by chance
    yield 0o027
    os.umask(mask)


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_file_replaces_the_previous_content(tmp_path, umask):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with atomic_file(target) as f:
        f.write("new")
        assert target.read_text() == "old"  # nothing visible before the block ends
    assert target.read_text() == "new"
    assert names(tmp_path) == ["a.txt"]
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def test_file_in_a_new_folder_with_binary_mode_and_kwargs(tmp_path):
    with atomic_file(tmp_path / "sub" / "b.bin", "wb") as f:
        f.write(b"\x00\x01")
    with atomic_file(tmp_path / "c.csv", "w", newline="", encoding="utf-8") as f:
        f.write("a\r\nb")
    assert (tmp_path / "sub" / "b.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "c.csv").read_bytes() == b"a\r\nb"


@pytest.mark.parametrize("exception", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_error_mid_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, exception):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(type(exception)), atomic_file(target) as f:
        f.write("half")
        raise exception
    assert target.read_text() == "old"
    assert names(tmp_path) == ["a.txt"]


def test_bad_open_arguments_leave_nothing(tmp_path):
    with pytest.raises(ValueError), atomic_file(tmp_path / "a.txt", "wz"):
        pass
    assert names(tmp_path) == []


def test_path_for_writers_that_take_a_file_name(tmp_path, umask):
    target = tmp_path / "w.bin"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target and tmp.stat().st_size == 0
        tmp.unlink()  # a writer that makes the file anew, private (safetensors does)
        tmp.touch(mode=0o600)
        tmp.write_bytes(b"abc")
    assert target.read_bytes() == b"abc" and names(tmp_path) == ["w.bin"]
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("writer failed")
    assert target.read_bytes() == b"abc" and names(tmp_path) == ["w.bin"]


def test_folder_appears_whole_with_the_usual_permissions(tmp_path, umask):
    target = tmp_path / "out"
    with atomic_folder(target) as tmp:
        assert not target.exists() and tmp.parent == tmp_path
        (tmp / "f.txt").write_text("1")
    assert names(target) == ["f.txt"] and names(tmp_path) == ["out"]
    assert target.stat().st_mode & 0o777 == 0o777 & ~umask


def test_folder_replaces_the_previous_one(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with atomic_folder(target) as tmp:
        (tmp / "new.txt").write_text("new")
        assert names(target) == ["old.txt"]  # the previous folder stays until the block ends
    assert names(target) == ["new.txt"] and names(tmp_path) == ["out"]


def test_error_while_filling_the_folder_keeps_the_previous_one(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_folder(target) as tmp:
        (tmp / "new.txt").write_text("new")
        raise KeyboardInterrupt
    assert names(target) == ["old.txt"] and names(tmp_path) == ["out"]


@pytest.mark.parametrize("failing_call", [1, 2])
def test_interrupted_between_the_renames_puts_the_previous_folder_back(tmp_path, monkeypatch, failing_call):
    """Rename 1 moves the previous folder aside, rename 2 moves the new one in: fail either, and the
    previous folder is where it was, whole, with no temporary left."""
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    real, calls = os.replace, {"n": 0}

    def replace(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == failing_call:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt), atomic_folder(target) as tmp:
        (tmp / "new.txt").write_text("new")
    monkeypatch.undo()
    assert names(target) == ["old.txt"] and names(tmp_path) == ["out"]
