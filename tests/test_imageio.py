"""read_image / read_mask / load_resized: every mode decodes to the documented array, every bad file to a
one-line ReconadError naming the file."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import READABLE, write_bad
from PIL import Image

from reconad.data.imageio import _to_rgb, decode_bytes, load_resized, read_image, read_mask
from reconad.data.sample import Sample
from reconad.errors import ImageTooLarge, NotAnImage, ReconadError


def _png_header_only(w: int, h: int) -> bytes:
    """A tiny PNG whose IHDR claims ``w×h`` 1-bit pixels (the pixel data is not there: never allocated)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


def _noise(h: int = 32, w: int = 48, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _expect_error(path: Path, *words: str) -> str:
    with pytest.raises(ReconadError) as info:
        read_image(path)
    msg = str(info.value)
    assert path.name in msg and "\n" not in msg
    for word in words:
        assert word in msg.lower()
    return msg


# --- bad inputs ---------------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    _expect_error(tmp_path / "nope.png", "not found")


def test_zero_byte_file(tmp_path):
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    _expect_error(p, "empty")


def test_directory(tmp_path):
    p = tmp_path / "dir.png"
    p.mkdir()
    _expect_error(p, "directory")


def test_text_named_png(tmp_path):
    p = tmp_path / "notes.png"
    p.write_text("hello, I am not a picture\n")
    _expect_error(p, "not a recognised image")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated(tmp_path, fmt):
    buf = io.BytesIO()
    Image.fromarray(_noise(64, 64)).save(buf, format=fmt)
    p = tmp_path / f"cut.{fmt.lower()}"
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    _expect_error(p, "truncated")


@pytest.mark.parametrize("side", [9000, 10000, 20000])  # ours (64 Mpx), PIL's warning, PIL's error
def test_decompression_bomb_refused(tmp_path, side):
    p = tmp_path / f"bomb{side}.png"
    p.write_bytes(_png_header_only(side, side))
    _expect_error(p, "bomb")


def test_permission_denied_mapped(tmp_path, monkeypatch):
    p = tmp_path / "locked.png"
    Image.fromarray(_noise()).save(p)

    def deny(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Image, "open", deny)
    monkeypatch.setattr(Path, "read_bytes", deny)  # the fast PNG path reads the bytes itself
    _expect_error(p, "permission denied")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores file permissions")
def test_permission_denied_real(tmp_path):
    p = tmp_path / "locked.png"
    Image.fromarray(_noise()).save(p)
    p.chmod(0)
    try:
        _expect_error(p, "permission denied")
    finally:
        p.chmod(0o644)


def test_non_utf8_name(tmp_path):
    good = Path(os.fsdecode(os.path.join(os.fsencode(tmp_path), b"caf\xe9.png")))
    Image.fromarray(_noise()).save(good)
    assert read_image(good).shape == (32, 48, 3)
    bad = Path(os.fsdecode(os.path.join(os.fsencode(tmp_path), b"bad\xff.png")))
    bad.write_bytes(b"junk")
    with pytest.raises(ReconadError) as info:
        read_image(bad)
    msg = str(info.value)
    msg.encode("utf-8")  # printable: no lone surrogates
    assert "bad\\xff.png" in msg


# --- modes --------------------------------------------------------------------------------------------------


def _roundtrip(tmp_path: Path, img: Image.Image, name: str) -> np.ndarray:
    p = tmp_path / name
    img.save(p)
    out = read_image(p)
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
    return out


def test_rgb_exact(tmp_path):
    a = _noise()
    np.testing.assert_array_equal(_roundtrip(tmp_path, Image.fromarray(a), "rgb.png"), a)


def test_rgba_drops_alpha(tmp_path):
    a = np.dstack([_noise(), np.zeros((32, 48), np.uint8)])  # fully transparent: colours must survive
    np.testing.assert_array_equal(_roundtrip(tmp_path, Image.fromarray(a, "RGBA"), "rgba.png"), a[:, :, :3])


def test_palette(tmp_path):
    idx = np.array([[0, 1], [2, 1]], np.uint8)
    img = Image.fromarray(idx, "P")
    img.putpalette([10, 20, 30, 200, 100, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    out = _roundtrip(tmp_path, img, "pal.png")
    np.testing.assert_array_equal(out[0, 0], [10, 20, 30])
    np.testing.assert_array_equal(out[1, 0], [0, 0, 255])
    np.testing.assert_array_equal(out[0, 1], [200, 100, 0])


def test_palette_with_transparency(tmp_path):
    img = Image.fromarray(np.array([[0, 1]], np.uint8), "P")
    img.putpalette([10, 20, 30, 40, 50, 60] + [0] * (256 * 3 - 6))
    p = tmp_path / "palt.png"
    img.save(p, transparency=0)
    np.testing.assert_array_equal(read_image(p)[0], [[10, 20, 30], [40, 50, 60]])


def test_palette_alpha_pa(tmp_path):
    img = Image.fromarray(np.array([[0, 1]], np.uint8), "P")
    img.putpalette([10, 20, 30, 40, 50, 60] + [0] * (256 * 3 - 6))
    pa = img.convert("PA")
    assert pa.mode == "PA"  # PIL cannot save PA files: decode the in-memory image
    np.testing.assert_array_equal(_to_rgb(pa)[0], [[10, 20, 30], [40, 50, 60]])


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_scaled_by_dtype_range(tmp_path, suffix):
    a = np.array([[0, 1000, 257 * 100, 65535]], np.uint16)  # max 65535 here, but see the dark case below
    out = _roundtrip(tmp_path, Image.fromarray(a), "g16" + suffix)
    np.testing.assert_array_equal(out[0, :, 0], [0, 4, 100, 255])
    dark = np.array([[0, 257 * 10]], np.uint16)  # max-scaling would turn 2570 into 255
    out = _roundtrip(tmp_path, Image.fromarray(dark), "dark16" + suffix)
    np.testing.assert_array_equal(out[0, :, 1], [0, 10])


def test_16bit_big_endian(tmp_path):
    a = np.array([[0, 257 * 50, 65535]], np.uint16)
    img = Image.frombytes("I;16B", (3, 1), a.astype(">u2").tobytes())
    out = _roundtrip(tmp_path, img, "g16b.tif")
    np.testing.assert_array_equal(out[0, :, 2], [0, 50, 255])


def test_mode_i(tmp_path):
    img = Image.fromarray(np.array([[0, 257 * 20, 65535]], np.int32))
    assert img.mode == "I"
    out = _roundtrip(tmp_path, img, "gi.tif")
    np.testing.assert_array_equal(out[0, :, 0], [0, 20, 255])


def test_one_bit(tmp_path):
    img = Image.fromarray(np.array([[0, 1, 1, 0]], bool))
    assert img.mode == "1"
    out = _roundtrip(tmp_path, img, "bits.png")
    np.testing.assert_array_equal(out[0, :, 0], [0, 255, 255, 0])


def test_gray_to_three_channels(tmp_path):
    g = _noise()[:, :, 0]
    out = _roundtrip(tmp_path, Image.fromarray(g, "L"), "gray.png")
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], g)


def test_gray_alpha(tmp_path):
    la = np.dstack([np.array([[7, 200]], np.uint8), np.array([[0, 255]], np.uint8)])
    out = _roundtrip(tmp_path, Image.fromarray(la, "LA"), "la.png")
    np.testing.assert_array_equal(out[0], [[7, 7, 7], [200, 200, 200]])


def test_cmyk(tmp_path):
    img = Image.new("CMYK", (2, 1))
    img.putpixel((0, 0), (0, 0, 0, 0))  # white
    img.putpixel((1, 0), (0, 0, 0, 255))  # black
    out = _roundtrip(tmp_path, img, "cmyk.tif")
    np.testing.assert_array_equal(out[0], [[255, 255, 255], [0, 0, 0]])


def test_one_pixel(tmp_path):
    out = _roundtrip(tmp_path, Image.new("RGB", (1, 1), (1, 2, 3)), "dot.png")
    np.testing.assert_array_equal(out, [[[1, 2, 3]]])


def test_exif_rotated_jpeg(tmp_path):
    a = np.zeros((20, 40, 3), np.uint8)  # stored 40 wide, 20 high: left half red, right half blue
    a[:, :20] = (255, 0, 0)
    a[:, 20:] = (0, 0, 255)
    img = Image.fromarray(a)
    exif = img.getexif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    p = tmp_path / "rotated.jpg"
    img.save(p, exif=exif, quality=95)
    out = read_image(p)
    assert out.shape == (40, 20, 3)
    assert out[5, 10, 0] > 200 and out[5, 10, 2] < 60  # top: the stored left side (red)
    assert out[35, 10, 2] > 200 and out[35, 10, 0] < 60  # bottom: blue


# --- masks --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "mode", "expected"),
    [
        ([0, 255, 255, 0], "L", [0, 1, 1, 0]),
        ([0, 1, 1, 0], "L", [0, 1, 1, 0]),  # a 0/1-coded mask
        ([0, 100, 128, 254], "L", [0, 0, 1, 1]),  # antialiased edges: > 127.5
        ([0, 30000, 40000, 65535], "I;16", [0, 0, 1, 1]),
    ],
)
def test_mask_binarised(tmp_path, values, mode, expected):
    dtype = np.uint16 if mode == "I;16" else np.uint8
    p = tmp_path / "m.png"
    Image.fromarray(np.array([values], dtype)).save(p)
    np.testing.assert_array_equal(read_mask(p, (1, 4)), np.array([expected], bool))


def test_mask_one_bit_and_rgb(tmp_path):
    p1 = tmp_path / "m1.png"
    Image.fromarray(np.array([[True, False]])).save(p1)
    np.testing.assert_array_equal(read_mask(p1, (1, 2)), [[True, False]])
    p2 = tmp_path / "m2.png"
    Image.fromarray(np.array([[[0, 0, 0], [200, 0, 0]]], np.uint8)).save(p2)
    np.testing.assert_array_equal(read_mask(p2, (1, 2)), [[False, True]])


def test_mask_size_mismatch_names_both(tmp_path):
    p = tmp_path / "m_mask.png"
    Image.new("L", (10, 8)).save(p)
    with pytest.raises(ReconadError) as info:
        read_mask(p, (16, 20), image_path=tmp_path / "img.png")
    msg = str(info.value)
    assert "m_mask.png" in msg and "img.png" in msg and "10×8" in msg and "20×16" in msg


def test_bad_mask_names_file(tmp_path):
    p = tmp_path / "broken_mask.png"
    p.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ReconadError, match="broken_mask.png"):
        read_mask(p, (4, 4))


# --- load_resized -------------------------------------------------------------------------------------------


def test_load_resized(tmp_path):
    img, mask = tmp_path / "a.png", tmp_path / "a_mask.png"
    Image.fromarray(_noise(30, 40)).save(img)
    m = np.zeros((30, 40), np.uint8)
    m[:, 20:] = 255
    Image.fromarray(m).save(mask)
    x, y = load_resized(Sample(img, 1, "c", "cut", mask), 16)
    assert x.shape == (16, 16, 3) and x.dtype == np.uint8
    assert y is not None and y.shape == (16, 16) and y.dtype == bool
    assert not y[:, :7].any() and y[:, 9:].all()
    assert load_resized(Sample(img, 0, "c", mask_path=mask), 16)[1] is None  # good: no mask
    assert load_resized(Sample(img, 1, "c", "cut"), 16)[1] is None  # anomalous without mask


def test_load_resized_mask_mismatch(tmp_path):
    img, mask = tmp_path / "a.png", tmp_path / "a_mask.png"
    Image.fromarray(_noise(30, 40)).save(img)
    Image.new("L", (8, 8)).save(mask)
    with pytest.raises(ReconadError, match="a_mask.png"):
        load_resized(Sample(img, 1, "c", "cut", mask), 16)


@pytest.mark.parametrize("size", [0, -3, 2.5])
def test_load_resized_bad_size(tmp_path, size):
    img = tmp_path / "a.png"
    Image.fromarray(_noise()).save(img)
    with pytest.raises(ReconadError, match="size"):
        load_resized(Sample(img, 0, "c"), size)


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_fast_png_path_matches_pillow(tmp_path, mode):
    from reconad.data.fastpng import decode_plain_png

    p = tmp_path / "plain.png"
    pixels = _noise(40, 56) if mode == "RGB" else _noise(40, 56)[:, :, 0]
    Image.fromarray(pixels).save(p)
    fast = decode_plain_png(p.read_bytes(), 10**8)
    assert fast is not None  # the fast path took it
    assert np.array_equal(fast, np.asarray(Image.open(p).convert("RGB")))
    assert np.array_equal(read_image(p), fast)


@pytest.mark.parametrize("mode", ["RGBA", "P", "I;16", "LA"])
def test_fast_png_path_leaves_other_pngs_to_pillow(tmp_path, mode):
    from reconad.data.fastpng import decode_plain_png

    p = tmp_path / "other.png"
    Image.fromarray(_noise(8, 8)).convert(mode).save(p)
    assert decode_plain_png(p.read_bytes(), 10**8) is None
    assert read_image(p).shape == (8, 8, 3)


def test_fast_png_path_defers_transparency_exif_and_bombs(tmp_path):
    from reconad.data.fastpng import decode_plain_png

    p = tmp_path / "t.png"
    Image.fromarray(_noise(8, 8)).save(p, transparency=(0, 0, 0))
    assert decode_plain_png(p.read_bytes(), 10**8) is None
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise
    q = tmp_path / "e.png"
    Image.fromarray(_noise(8, 12)).save(q, exif=exif)
    assert decode_plain_png(q.read_bytes(), 10**8) is None
    assert read_image(q).shape == (12, 8, 3)  # Pillow applied the orientation
    assert decode_plain_png(q.read_bytes(), 10) is None  # over the pixel limit: never decoded here


def test_fast_png_path_reports_truncation_like_pillow(tmp_path):
    p = tmp_path / "cut.png"
    Image.fromarray(_noise(64, 64)).save(p)
    p.write_bytes(p.read_bytes()[:-200])
    _expect_error(p, "corrupt or truncated")


def test_resize_images_is_within_one_level_of_pillow_and_batch_invariant():
    from reconad.data.imageio import resize_images

    images = [_noise(60, 90, seed=1), _noise(60, 90, seed=2), _noise(17, 33, seed=3), _noise(24, 24, seed=4)]
    out = resize_images(images, 24)
    assert out.shape == (4, 24, 24, 3) and out.dtype == np.uint8
    for image, got in zip(images, out):
        pil = np.asarray(Image.fromarray(image).resize((24, 24), Image.Resampling.BILINEAR))
        assert np.abs(got.astype(int) - pil.astype(int)).max() <= 1
        assert np.array_equal(resize_images([image], 24)[0], got)
    assert np.array_equal(out[3], images[3])  # already the right size: untouched


# --- decoding bytes (uploads) -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(set(READABLE) - {"non_utf8_name"}))
def test_decode_image_bytes_matches_read_image(tmp_path, kind):
    path = write_bad(kind, tmp_path)
    assert np.array_equal(decode_bytes(path.read_bytes(), "upload"), read_image(path))


@pytest.mark.parametrize(
    "kind, error",
    [
        ("zero_byte", ReconadError),
        ("truncated_png", ReconadError),
        ("truncated_jpeg", ReconadError),
        ("text_as_png", NotAnImage),
        ("decompression_bomb", ImageTooLarge),
    ],
)
def test_decode_image_bytes_refuses_what_read_image_refuses(tmp_path, kind, error):
    path = write_bad(kind, tmp_path)
    with pytest.raises(ReconadError) as from_file:
        read_image(path)
    with pytest.raises(error) as from_bytes:
        decode_bytes(path.read_bytes(), "upload.bin")
    assert type(from_bytes.value) is type(from_file.value)
    assert str(from_bytes.value) == str(from_file.value).replace(str(path), "upload.bin")
