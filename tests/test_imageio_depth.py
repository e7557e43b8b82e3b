"""Bit depth and size: >8-bit PNG and TIFF read at full precision and mapped by a Decoding's levels; the
pixel limit moved on purpose (``--max-pixels``) and refused in one line."""

from __future__ import annotations

import imagecodecs
import numpy as np
import pytest
import tifffile
from PIL import Image

from reconad import image_runtime
from reconad.data.imageio import decode_bytes, pixel_range, read_image, read_mask
from reconad.errors import ImageTooLarge
from reconad.image_runtime import Decoding, read_pixels


def _eight_bit(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _twelve_bit(pixels: np.ndarray) -> np.ndarray:
    """The 12-bit equivalent of 8-bit pixels (as a 12-bit camera would record them)."""
    return np.round(pixels.astype(np.float64) * 4095 / 255).astype(np.uint16)


def _png16(path, values: np.ndarray):
    path.write_bytes(imagecodecs.png_encode(np.ascontiguousarray(values)))
    return path


@pytest.mark.parametrize("shape", [(24, 32), (24, 32, 3)], ids=["grey", "rgb"])
def test_twelve_bit_png_scaled_by_its_depth(tmp_path, shape):
    eight = _eight_bit(shape)
    path = _png16(tmp_path / "x.png", _twelve_bit(eight))
    as_rgb = eight if eight.ndim == 3 else np.repeat(eight[:, :, None], 3, axis=2)
    out = read_image(path, Decoding.of_bit_depth(12))
    assert out.dtype == np.uint8 and out.shape == (24, 32, 3)
    assert np.abs(out.astype(int) - as_rgb).max() <= 1  # the 8-bit picture, not one 16 times darker
    assert abs(out.mean() - as_rgb.mean()) < 0.5
    assert read_image(path).mean() < as_rgb.mean() / 10  # the container's range: what 12-bit data got before


@pytest.mark.parametrize("shape", [(20, 30), (20, 30, 3)], ids=["grey", "rgb"])
@pytest.mark.parametrize("byteorder", ["<", ">"])
def test_sixteen_bit_tiff_read_at_full_precision(tmp_path, shape, byteorder):
    values = np.random.default_rng(1).integers(0, 65536, shape, dtype=np.uint16)
    path = tmp_path / "x.tif"
    tifffile.imwrite(path, values, byteorder=byteorder)
    np.testing.assert_array_equal(read_pixels(path), values)  # every bit, not the high byte
    assert pixel_range(path) == (values.min(), values.max())


def test_sixteen_bit_colour_png_read_at_full_precision(tmp_path):
    values = np.random.default_rng(2).integers(0, 65536, (10, 12, 4), dtype=np.uint16)  # RGBA
    path = _png16(tmp_path / "x.png", values)
    assert Image.open(path).mode == "RGBA"  # Pillow would cut it to 8 bits
    np.testing.assert_array_equal(read_pixels(path), values[:, :, :3])  # alpha dropped


def test_levels_map_low_and_high_to_the_backbone_range(tmp_path):
    path = _png16(tmp_path / "x.png", np.array([[1000, 2000, 3000, 500, 3500]], np.uint16))
    out = read_image(path, Decoding((1000, 3000)))[0, :, 0]
    np.testing.assert_array_equal(out, [0, 128, 255, 0, 255])  # clipped outside the levels


def test_default_keeps_the_sixteen_bit_scaling(tmp_path):
    values = np.arange(0, 65536, 257, dtype=np.uint16).reshape(16, 16)
    path = tmp_path / "x.png"
    Image.fromarray(values).save(path)
    expected = np.round(values * (255 / 65535)).astype(np.uint8)
    np.testing.assert_array_equal(read_image(path)[:, :, 0], expected)


def test_eight_bit_images_ignore_the_levels(tmp_path):
    pixels = _eight_bit((8, 8, 3))
    path = tmp_path / "x.png"
    Image.fromarray(pixels).save(path)
    np.testing.assert_array_equal(read_image(path, Decoding((0, 4095))), pixels)
    assert pixel_range(path) is None


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_twins_decode_alike(tmp_path, suffix):
    values = _twelve_bit(_eight_bit((9, 7, 3), 3))
    path = tmp_path / f"x{suffix}"
    if suffix == ".png":
        _png16(path, values)
    else:
        tifffile.imwrite(path, values)
    decoding = Decoding.of_bit_depth(12)
    library = read_image(path, decoding)
    np.testing.assert_array_equal(image_runtime.read_image(path, decoding), library)
    np.testing.assert_array_equal(decode_bytes(path.read_bytes(), "up", decoding), library)
    np.testing.assert_array_equal(image_runtime.decode_bytes(path.read_bytes(), "up", decoding), library)


def test_max_pixels_both_ways(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.fromarray(_eight_bit((60, 50, 3))).save(path)  # 3,000 pixels
    with pytest.raises(ImageTooLarge) as info:
        read_image(path, Decoding(max_pixels=2_999))
    message = str(info.value)
    assert "\n" not in message and "big.png" in message and "--max-pixels" in message
    assert read_image(path, Decoding(max_pixels=3_000)).shape == (60, 50, 3)
    mask = tmp_path / "mask.png"
    Image.fromarray(np.zeros((60, 50), np.uint8)).save(mask)
    with pytest.raises(ImageTooLarge, match="--max-pixels"):
        read_mask(mask, (60, 50), max_pixels=100)
    tiff = tmp_path / "big.tif"  # Pillow decodes it (the plain-PNG path does not)
    tifffile.imwrite(tiff, _twelve_bit(_eight_bit((60, 50))))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)  # Pillow's own bomb check: an error at 2,000
    assert read_image(tiff, Decoding(max_pixels=10_000)).shape == (60, 50, 3)  # raised on purpose
