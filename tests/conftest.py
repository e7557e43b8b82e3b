"""Shared fixtures: an isolated feature cache, a tiny synthetic category, a fitted tiny PatchCore run, and
makers of every kind of bad input file the CLI must survive."""

from __future__ import annotations

import io
import os
import shutil
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

SIZE = 64  # --image-size of every fitted test run: small and fast
FIT_ARGS = ["--image-size", str(SIZE), "--param", "coreset_ratio=0.05", "--holdout", "0.2"]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test reads and writes features under one session-wide temporary cache, never ``~/.cache``."""
    root = tmp_path_factory.getbasetemp() / "feature-cache"
    monkeypatch.setenv("RECONAD_CACHE", str(root))
    return root


@pytest.fixture(scope="session")
def parts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic MVTec-layout category (12 train, 4 good + 6 defective test images, 64 px). Read-only."""
    from reconad.data.synthetic import make_parts

    return make_parts(tmp_path_factory.mktemp("parts"), n_train=12, n_test_good=4, n_test_bad=6, size=64)


@pytest.fixture(scope="session")
def extractor():
    """The default backbone at 64 px (loaded once per session)."""
    from reconad.features.extractor import FeatureExtractor

    return FeatureExtractor(image_size=SIZE)


@pytest.fixture(scope="session")
def fitted_run(parts: Path, extractor, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved PatchCore run on :func:`parts` (what ``reconad fit patchcore ... FIT_ARGS`` writes). Read-only:
    copy it (:func:`copy_run`) before changing anything."""
    from reconad import pipeline
    from reconad.data import load_sources
    from reconad.runs import save_run

    data = load_sources([f"mvtec:{parts}"])
    run = pipeline.fit("patchcore", data, extractor, params={"coreset_ratio": 0.05}, holdout=0.2)
    out = tmp_path_factory.mktemp("runs") / "patchcore"
    save_run(run, out)
    return out


@pytest.fixture
def copy_run(fitted_run: Path, tmp_path: Path) -> Callable[[], Path]:
    """A fresh writable copy of :func:`fitted_run` under the test's tmp_path."""

    def copy() -> Path:
        dst = tmp_path / "run"
        shutil.copytree(fitted_run, dst)
        return dst

    return copy


class CountingExtractor:
    """The real extractor, counting the images it is asked to compute."""

    def __init__(self, inner) -> None:
        self.inner, self.image_size, self.image_hw, self.calls = inner, inner.image_size, inner.image_hw, 0

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += len(images)
        return self.inner(images)


# --- running the CLI in-process ----------------------------------------------------------------------------


def invoke(*args: object):
    """``reconad --quiet ARGS`` in-process (stdout and stderr kept apart)."""
    from typer.testing import CliRunner

    from reconad.cli import app

    return CliRunner().invoke(app, ["--quiet", *map(str, args)], env={"COLUMNS": "80"})


def assert_clean_error(result, *words: str, code: int = 2) -> str:
    """Exit ``code``, no exception but the exit, no traceback, one ``error:`` line holding ``words`` (beside
    ``warning:`` lines, e.g. a fit's note that its good images are few for the false-reject rate)."""
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("warning: ")]
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def assert_nothing_written(out: Path) -> None:
    """``out`` does not exist and no temporary folder or file was left beside it."""
    assert not out.exists()
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]


# --- bad input files ----------------------------------------------------------------------------------------


def noise(h: int = 48, w: int = 48, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _encoded(array: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **kw)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(side: int = 20_000) -> bytes:
    """A complete, valid 1-bit ``side``×``side`` PNG of zeros: tens of KB that decode to ``side²`` pixels."""
    row = b"\0" * (1 + (side + 7) // 8)  # filter byte + packed bits
    z = zlib.compressobj(9)
    data = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", data)
        + _png_chunk(b"IEND", b"")
    )


def _exif_jpeg(path: Path) -> None:
    img = Image.fromarray(noise(32, 48, 5))
    exif = img.getexif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise for display
    img.save(path, exif=exif, quality=95)


def _save(array: np.ndarray, mode: str | None = None) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        img = Image.fromarray(array)
        (img.convert(mode) if mode else img).save(path)

    return write


def _bytes(data: bytes | Callable[[], bytes]) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(data() if callable(data) else data)


def _symlink_loop(path: Path) -> None:
    path.symlink_to(path.name)  # a link to itself: stat() fails with ELOOP


#: Files no decoder can turn into an image: fit must stop (exit 2) naming the file, predict must skip it.
UNREADABLE: dict[str, tuple[str, Callable[[Path], None]]] = {
    "zero_byte": ("empty.png", _bytes(b"")),
    "truncated_png": ("cut.png", _bytes(lambda: _encoded(noise(), "PNG")[:300])),
    "truncated_jpeg": ("cut.jpg", _bytes(lambda: _encoded(noise(), "JPEG")[:400])),
    "text_as_png": ("notes.png", _bytes(b"hello, I am a text file and not a picture\n")),
    "decompression_bomb": ("bomb.png", _bytes(bomb_png)),
}
#: Odd but valid images: every command must accept them as ordinary RGB pictures.
READABLE: dict[str, tuple[str, Callable[[Path], None]]] = {
    "rgba": ("rgba.png", _save(np.dstack([noise(seed=1), np.full((48, 48), 128, np.uint8)]))),
    "palette": ("palette.png", _save(noise(seed=2), "P")),
    "16_bit": ("deep.png", _save(noise(seed=3)[:, :, 0].astype(np.uint16) * 257)),
    "1_bit": ("bits.png", _save(noise(seed=4), "1")),
    "grayscale": ("gray.png", _save(noise(seed=5), "L")),
    "1x1": ("dot.png", _save(np.array([[[200, 120, 40]]], np.uint8))),
    "exif_rotated_jpeg": ("rotated.jpg", _exif_jpeg),
    "non_utf8_name": ("caf\udce9.png", _save(noise(seed=6))),  # the bytes b"caf\xe9.png" on disk
}


def write_bad(kind: str, folder: Path) -> Path:
    """Write the bad input ``kind`` (a key of :data:`UNREADABLE`, :data:`READABLE` or ``symlink_loop``)."""
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "symlink_loop":
        name, make = "loop.png", _symlink_loop
    else:
        name, make = {**UNREADABLE, **READABLE}[kind]
    path = Path(os.fsdecode(os.path.join(os.fsencode(folder), os.fsencode(name))))
    make(path)
    return path


def good_images(folder: Path, n: int, size: int = 48, seed: int = 10) -> list[Path]:
    """``n`` small textured good images (smooth stripes plus a little noise) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    paths = []
    for i in range(n):
        base = 120 + 60 * np.sin((xx + rng.uniform(0, 6)) / 3.0)[:, :, None] * np.array([1.0, 0.8, 0.6])
        img = np.clip(base + rng.normal(0, 4, (size, size, 3)), 0, 255).astype(np.uint8)
        paths.append(folder / f"good_{i:02d}.png")
        Image.fromarray(img).save(paths[-1])
    return paths
