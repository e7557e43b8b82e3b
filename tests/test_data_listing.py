"""list_images / scan_images: sorted, hidden files skipped, case-insensitive suffixes, loops survived."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from reconad.data.imageio import list_images, scan_images
from reconad.errors import ReconadError


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_sorted_filtered_recursive(tmp_path):
    for name in [
        "b.png",
        "a.JPG",
        "c.TIFF",
        "notes.txt",
        ".hidden.png",
        "sub/d.webp",
        ".git/e.png",
        "f.Jpeg",
    ]:
        _touch(tmp_path / name)
    names = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)]
    assert names == ["a.JPG", "b.png", "c.TIFF", "f.Jpeg", "sub/d.webp"]
    flat = [p.name for p in list_images(tmp_path, recursive=False)]
    assert flat == ["a.JPG", "b.png", "c.TIFF", "f.Jpeg"]
    assert [p.name for p in list_images(tmp_path, suffixes=[".jpg"])] == ["a.JPG"]


def test_symlink_loop_terminates(tmp_path):
    _touch(tmp_path / "a" / "x.png")
    (tmp_path / "a" / "loop").symlink_to(tmp_path, target_is_directory=True)
    (tmp_path / "a" / "self").symlink_to(tmp_path / "a", target_is_directory=True)
    (tmp_path / "dangling.png").symlink_to(tmp_path / "missing.png")
    found = list_images(tmp_path)
    assert [p.name for p in found] == ["x.png"]


def test_non_utf8_names(tmp_path):
    raw = os.path.join(os.fsencode(tmp_path), b"caf\xe9.png")
    with open(raw, "wb") as f:
        f.write(b"x")
    _touch(tmp_path / "b.png")
    found = list_images(tmp_path)
    assert len(found) == 2 and os.fsencode(found[1]) == raw


def test_empty_and_missing_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    _touch(tmp_path / "empty" / "readme.txt")
    with pytest.raises(ReconadError, match="no images .* in folder .*empty"):
        list_images(tmp_path / "empty")
    assert scan_images(tmp_path / "empty") == []
    with pytest.raises(ReconadError, match="not found"):
        list_images(tmp_path / "absent")
    with pytest.raises(ReconadError, match="is not a folder"):
        list_images(tmp_path / "empty" / "readme.txt")
