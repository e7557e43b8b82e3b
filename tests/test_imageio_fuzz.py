"""Property: whatever bytes a file holds, read_image returns an H×W×3 uint8 array or raises ReconadError."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from reconad.data.imageio import read_image
from reconad.errors import ReconadError


def _encoded(fmt: str) -> bytes:
    buf = io.BytesIO()
    a = np.random.default_rng(1).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    Image.fromarray(a).save(buf, format=fmt)
    return buf.getvalue()


VALID = [_encoded(f) for f in ("PNG", "JPEG", "BMP", "TIFF", "GIF", "WEBP")]


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _check(folder: Path, data: bytes, name: str) -> None:
    path = folder / name
    path.write_bytes(data)
    try:
        out = read_image(path)
    except ReconadError as e:
        assert name in str(e)
        return
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3 and min(out.shape) >= 1


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=600), st.sampled_from(["x.png", "x.jpg", "x.tif", "x.bmp", "x.webp"]))
def test_random_bytes(fuzz_dir, data, name):
    _check(fuzz_dir, data, name)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(range(len(VALID))),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=6),
    st.integers(0, 10_000),
)
def test_corrupted_valid_files(fuzz_dir, which, flips, cut):
    data = bytearray(VALID[which])
    for pos, value in flips:
        data[pos % len(data)] = value
    _check(fuzz_dir, bytes(data[: max(1, len(data) - cut % len(data))]), "y.img")
