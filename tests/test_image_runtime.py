"""The torch-free image module an exported model ships: it must decode, resize and colour exactly as the
library does (its resize is checked pixel for pixel against torch's kernel)."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
from conftest import READABLE, UNREADABLE, write_bad
from matplotlib import colormaps

from reconad import image_runtime
from reconad.data.imageio import read_image, resize_images
from reconad.errors import ReconadError


def _smooth(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    steps = rng.integers(-4, 5, (h, w, 3))
    return np.clip(128 + np.cumsum(steps, axis=1), 0, 255).astype(np.uint8)


def test_resize_equals_torch_pixel_for_pixel():
    rng = np.random.default_rng(0)
    shapes = [(int(h), int(w), int(s)) for h, w, s in zip(*rng.integers(1, 300, (3, 60)))]
    shapes += [(900, 900, 256), (1024, 768, 224), (3000, 40, 17), (1, 1, 64), (64, 64, 64), (64, 80, 64)]
    for i, (h, w, size) in enumerate(shapes):
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8) if i % 2 else _smooth(rng, h, w)
        expected = resize_images([image], size)[0]
        got = image_runtime.resize_image(image, size)
        assert got.dtype == np.uint8 and got.shape == (size, size, 3)
        assert np.array_equal(got, expected), (h, w, size)


def test_jet_is_matplotlibs():
    expected = (colormaps["jet"](np.arange(256))[:, :3] * 255).astype(np.float32)
    assert np.array_equal(image_runtime.JET, expected)


@pytest.mark.parametrize("kind", sorted(READABLE))
def test_pillow_decoding_equals_read_image(tmp_path, kind):
    path = write_bad(kind, tmp_path)
    assert np.array_equal(image_runtime.read_image(path), read_image(path))


@pytest.mark.parametrize("kind", sorted(UNREADABLE))
def test_unreadable_files_fail_alike(tmp_path, kind):
    path = write_bad(kind, tmp_path)
    with pytest.raises(image_runtime.ImageFileError) as ours:
        image_runtime.read_image(path)
    with pytest.raises(ReconadError) as library:
        read_image(path)
    assert str(ours.value) == str(library.value)


def test_imports_only_numpy_and_pillow():
    """numpy and Pillow; imagecodecs (16-bit colour files) only where installed, inside ``try``."""
    tree = ast.parse(Path(image_runtime.__file__).read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    stdlib = {
        "__future__",
        "contextlib",
        "math",
        "os",
        "warnings",
        "collections",
        "dataclasses",
        "functools",
        "pathlib",
        "io",
        "typing",
    }
    assert imported - stdlib == {"numpy", "PIL", "imagecodecs"}
    optional = [
        n for n in ast.walk(tree) if isinstance(n, ast.Try) for n in ast.walk(n) if isinstance(n, ast.Import)
    ]
    assert [a.name for n in optional for a in n.names] == ["imagecodecs"]
