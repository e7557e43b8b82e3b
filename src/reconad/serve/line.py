"""What a production line keeps from ``reconad serve``: the record of every decision (``--record FILE``) and
the images people label on the page (``--feedback-dir DIR``).

The record is a CSV file only ever appended to. Each request's rows go in one ``write`` on a descriptor
opened with ``O_APPEND`` while an exclusive ``flock`` on the file is held; the header is written, under the
same lock, only when the file is empty. So rows from several threads and several ``--workers`` processes
are whole lines in some order, never interleaved, and a download (which takes the lock shared to read the
size) ends on a whole line. ``flock`` is advisory and local: it holds between ``reconad serve`` processes on
one machine, not over NFS.

Feedback lands as ``DIR/<category>/<label>/<sha256[:16]><suffix>`` (``label`` ``good`` or ``defective``), the
layout ``reconad add`` (``DIR/<category>/good``) and ``reconad threshold --labelled DIR/<category>`` read.
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import io
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconad.atomic import atomic_file, check_writable
from reconad.errors import ReconadError
from reconad.image_runtime import IMAGE_SUFFIXES, show_path

if TYPE_CHECKING:  # the record is written without torch loaded (a test appends from fresh processes)
    from reconad.serve.predictor import Upload

COLUMNS = ("time", "name", "sha256", "category", "score", "threshold", "verdict", "run_id")
HEADER = (",".join(COLUMNS) + "\n").encode()
LABELS = ("good", "defective")
CHUNK = 1 << 20


@contextmanager
def _locked(path: Path, flags: int, lock: int) -> Iterator[int]:
    fd = os.open(path, flags, 0o666)
    try:
        fcntl.flock(fd, lock)
        yield fd
    finally:
        os.close(fd)  # releases the lock


class Record:
    """The CSV file ``reconad serve --record`` appends one row per image checked to."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def prepare(self) -> None:
        """Create the file with its header (and its folder) unless it exists; refuse a folder, or a file
        that is not such a record (another first line). Called before serving, before any worker starts."""
        check_writable(self.path, folder=False)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.append([])
        with open(self.path, "rb") as f:
            first = f.readline()
        if first != HEADER:
            raise ReconadError(
                f"--record {show_path(self.path)} is not a reconad record (its first line is not "
                f"{HEADER.decode().strip()!r}): name a new file or an earlier record"
            )

    def append(self, rows: Sequence[Sequence[Any]]) -> None:
        """Append ``rows`` (and first the header, if the file is empty or was moved away) in one write."""
        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerows(rows)
        data = text.getvalue().encode("utf-8", "backslashreplace")
        with _locked(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, fcntl.LOCK_EX) as fd:
            if os.fstat(fd).st_size == 0:
                data = HEADER + data
            if data:
                os.write(fd, data)  # a regular file: written whole (or an OSError), never in part

    def add(self, results: Sequence[dict[str, Any]], uploads: Sequence[Upload], run_id: str) -> None:
        """One row per scored upload (``results`` in the order of ``uploads``), all with the time now."""
        now = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        self.append(
            [
                (now, r["name"], hashlib.sha256(u.data).hexdigest(), r["category"], repr(r["score"]))
                + (repr(r["threshold"]), "anomalous" if r["is_anomalous"] else "normal", run_id)
                for r, u in zip(results, uploads)
            ]
        )

    def snapshot(self) -> tuple[int, Iterator[bytes]]:
        """The record's length now and its bytes up to there: whole rows only (a write in progress holds the
        lock this waits for)."""
        try:
            with _locked(self.path, os.O_RDONLY, fcntl.LOCK_SH) as fd:
                size = os.fstat(fd).st_size
        except FileNotFoundError:  # moved away since: the next row starts a new file
            return len(HEADER), iter([HEADER])

        def chunks() -> Iterator[bytes]:
            with open(self.path, "rb") as f:
                left = size
                while left > 0 and (chunk := f.read(min(CHUNK, left))):
                    left -= len(chunk)
                    yield chunk

        return size, chunks()


def check_feedback_dir(path: Path) -> None:
    """Refuse a feedback folder that cannot be one; create it."""
    check_writable(path, folder=True)
    path.mkdir(parents=True, exist_ok=True)


def store_feedback(root: Path, category: str, label: str, upload: Upload) -> dict[str, Any]:
    """Store ``upload`` (already checked to be an image) as ``root/category/label/<sha256[:16]><suffix>``
    (its own suffix if reconad reads it, else ``.png``), atomically. The same bytes again are not written
    again: the answer names the file already there. The same bytes under the other label are removed (the
    latest label wins) and named under ``replaced``."""
    if label not in LABELS:
        raise ReconadError(f"label must be {' or '.join(LABELS)}, got {label[:40]!r}")
    if category in ("", ".", "..") or Path(category).name != category:
        raise ReconadError(f"category {category!r} cannot be a folder name")
    sha = hashlib.sha256(upload.data).hexdigest()
    stem = sha[:16]
    suffix = Path(upload.name).suffix.lower()
    folder = root / category / label
    found = sorted(folder.glob(f"{stem}.*"))
    target = found[0] if found else folder / f"{stem}{suffix if suffix in IMAGE_SUFFIXES else '.png'}"
    if not found:
        with atomic_file(target, "wb") as f:
            f.write(upload.data)
    answer: dict[str, Any] = {
        "stored": target.relative_to(root).as_posix(),
        "label": label,
        "category": category,
        "sha256": sha,
    }
    replaced = []
    for other in LABELS:
        for old in sorted((root / category / other).glob(f"{stem}.*")) if other != label else []:
            old.unlink(missing_ok=True)
            replaced.append(old.relative_to(root).as_posix())
    if replaced:
        answer["replaced"] = replaced
    return answer
