"""Atomic writes: a file or folder appears under its final name only once it is complete.

Everything is written to a temporary beside the target (same file system, so ``os.replace`` is atomic),
given the permissions a new file or folder gets under the umask (``tempfile`` makes them 0600 / 0700),
and renamed into place when the ``with`` block ends without error. On any error or interrupt the
temporary is removed and the previous content is left as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from reconad.errors import ReconadError
from reconad.image_runtime import show_path


def usual_permissions(path: Path) -> None:
    """Give a ``tempfile``-made file or folder (0600 / 0700) the permissions the umask gives new ones."""
    umask = os.umask(0)
    os.umask(umask)
    path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


@contextmanager
def _temp_file_beside(path: Path) -> Iterator[tuple[int, Path]]:
    """An open descriptor (the caller's to close) and the name of a temporary file beside ``path``, renamed
    onto ``path`` when the block ends without error and removed otherwise."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(name)
    try:
        yield fd, tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


@contextmanager
def atomic_file(path: Path, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """An open file (``mode`` and ``kwargs`` as for :func:`open`) whose content replaces ``path`` when the
    block ends without error."""
    with _temp_file_beside(Path(path)) as (fd, tmp):
        try:
            usual_permissions(tmp)
            f = os.fdopen(fd, mode, **kwargs)
        except BaseException:
            os.close(fd)
            raise
        with f:
            yield f


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """The name of an empty temporary file, for writers that take a file name (``safetensors.save_file``);
    it replaces ``path``, with the usual permissions, when the block ends without error (a writer may have
    made the file anew: safetensors makes it 0600)."""
    with _temp_file_beside(Path(path)) as (fd, tmp):
        os.close(fd)
        yield tmp
        usual_permissions(tmp)


@contextmanager
def atomic_folder(path: Path) -> Iterator[Path]:
    """An empty temporary folder to fill; it replaces the folder ``path`` (:func:`replace_folder`) when the
    block ends without error. Checks of what may be replaced belong at the end of the block."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        usual_permissions(tmp)
        yield tmp
        replace_folder(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def replace_folder(new: Path, path: Path) -> None:
    """Rename the folder ``new`` to ``path``. A previous ``path`` is first renamed aside and removed only once
    ``new`` is in place; interrupted between the two renames, the previous folder is put back."""
    old: Path | None = None
    try:
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(new, path)
    finally:
        if old is not None and old.is_dir() and not path.exists():
            os.replace(old, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_json(path: Path, doc: Any) -> None:
    """Write ``doc`` as indented JSON, atomically."""
    with atomic_file(path) as f:
        json.dump(doc, f, indent=2)


def check_writable(path: Path, *, folder: bool) -> None:
    """Fail before any work when ``path`` cannot become a folder (``folder``) or a file."""
    if path.exists() and path.is_dir() != folder:
        raise ReconadError(f"{show_path(path)} exists and is {'not a folder' if folder else 'a folder'}")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ReconadError(f"cannot write {show_path(path)}: {show_path(parent)} is not a folder")
            break
