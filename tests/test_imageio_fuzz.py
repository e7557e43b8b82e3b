"""Property: whatever bytes a file holds, read_image returns an H×W×3 uint8 array or raises ReconadError."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
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
_DIR = Path(tempfile.mkdtemp(prefix="reconad-fuzz-"))


def _check(data: bytes, name: str) -> None:
    path = _DIR / name
    path.write_bytes(data)
    try:
        out = read_image(path)
    except ReconadError as e:
        assert name in str(e)
        return
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3 and min(out.shape) >= 1


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=600), st.sampled_from(["x.png", "x.jpg", "x.tif", "x.bmp", "x.webp"]))
def test_random_bytes(data, name):
    _check(data, name)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(range(len(VALID))),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=6),
    st.integers(0, 10_000),
)
def test_corrupted_valid_files(which, flips, cut):
    data = bytearray(VALID[which])
    for pos, value in flips:
        data[pos % len(data)] = value
    _check(bytes(data[: max(1, len(data) - cut % len(data))]), "y.img")
