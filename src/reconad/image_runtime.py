"""Image files without torch: decode, list, resize, draw heat-map overlays and name them.

This module imports only numpy and Pillow (and, for 16-bit colour files, imagecodecs where it is installed)
and nothing from reconad, so an exported model folder
(``reconad export``) ships this very file beside its ``predict.py``: the folder decodes, resizes and draws
exactly as the library does. Failures are :class:`ImageFileError` with a one-line message naming the file (the
library re-raises them as ``ReconadError``).

:func:`resize_image` is torch's antialiased bilinear uint8 resize (the library's, ``reconad.data.imageio``)
rebuilt on numpy: the same int16 weights and fixed-point rounding, horizontal pass first, pixel for pixel
the same result, about ten times slower than torch's kernel.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageOps

try:
    import imagecodecs  # 16-bit colour PNG and TIFF, which Pillow cuts to 8 bits
except ImportError:  # pragma: no cover  (a reconad dependency; an export's folder may lack it)
    imagecodecs = None

IMAGE_SUFFIXES: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
MAX_PIXELS = 64_000_000  # the default limit (``--max-pixels``): larger images are refused before decoding
#: Modes that hold 16-bit data (mode I: 32-bit ints that hold 16-bit data in practice).
SIXTEEN_BIT = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
#: ``--bit-depth``: the significant bits of >8-bit data (12-bit data in 16-bit files: 12).
BIT_DEPTHS = (8, 10, 12, 14, 16)
#: EXIF orientation → the numpy steps of Pillow's ``exif_transpose`` (for the pixels Pillow does not decode).
_ORIENT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
    8: lambda a: np.rot90(a, 1),
}


@dataclass(frozen=True)
class Decoding:
    """How image files become the backbone's 8-bit pixels; a run stores it (``run.json``, features config)
    so that fit, test, predict, serve and an export decode alike.

    ``levels``: the values of >8-bit data mapped to 0 and 255 (``(0, 2**bits - 1)`` for ``--bit-depth``, or
    the range measured on the good training images; None: the container's full range, 0–65535). 8-bit data
    is used as it is. ``max_pixels``: larger images are refused before decoding (``--max-pixels``).
    ``levels_from``: where the levels came from, for the reader of ``run.json``.
    """

    levels: tuple[int, int] | None = None
    max_pixels: int = MAX_PIXELS
    levels_from: str | None = None

    def to_json(self) -> dict:
        return {
            "levels": list(self.levels) if self.levels else None,
            "levels_from": self.levels_from,
            "max_pixels": self.max_pixels,
        }

    @classmethod
    def from_json(cls, doc: dict | None) -> Decoding:
        """The decoding a run or manifest stores (absent: the default, as every run before it had)."""
        if not doc:
            return cls()
        levels = doc.get("levels")
        return cls(
            tuple(levels) if levels else None, doc.get("max_pixels", MAX_PIXELS), doc.get("levels_from")
        )

    @classmethod
    def of_features(cls, features: dict) -> Decoding:
        """The decoding of a run's features config (``run.json``'s, or an export manifest's ``features``)."""
        return cls.from_json(features.get("decoding"))

    @classmethod
    def of_bit_depth(cls, bits: int, max_pixels: int = MAX_PIXELS) -> Decoding:
        """>8-bit data of ``bits`` significant bits: 0 … 2**bits − 1 mapped to 0 … 255."""
        return cls((0, 2**bits - 1), max_pixels, f"--bit-depth {bits}")


#: The default: >8-bit data over its container's full range, at most :data:`MAX_PIXELS` pixels.
DECODING = Decoding()


class ImageFileError(Exception):
    """An image file or folder that cannot be read; the message names it."""


class ImageTooLargeError(ImageFileError):
    """An image with more pixels than :data:`MAX_PIXELS` (a possible decompression bomb)."""


class NotAnImageError(ImageFileError):
    """Bytes that no image decoder recognises."""


def show_path(path: os.PathLike | str) -> str:
    """``path`` as printable text, also when its name is not valid UTF-8 (undecodable bytes as ``\\x..``)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


# --- decoding -----------------------------------------------------------------------------------------------


def open_image(path: Path, what: str = "image", max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open, size-check and fully decode ``path`` (first frame), EXIF orientation applied."""
    with _opened(path, what) as (fp, where):
        return _decode(fp, where, max_pixels)


@contextlib.contextmanager
def _opened(path: Path, what: str) -> Iterator[tuple[IO[bytes], str]]:
    """``path`` open for reading and the start of its error messages; a missing, empty or forbidden file is
    an :class:`ImageFileError` naming it."""
    where = f"cannot read {what} {show_path(path)}"
    try:
        if not path.exists():
            raise ImageFileError(f"{where}: file not found")
        if path.is_dir():
            raise ImageFileError(f"{where}: it is a directory, not an image file")
        if path.stat().st_size == 0:
            raise ImageFileError(f"{where}: empty file (0 bytes)")
        with open(path, "rb") as fp:
            yield fp, where
    except PermissionError:
        raise ImageFileError(f"{where}: permission denied") from None


@contextlib.contextmanager
def _decoder_errors(where: str) -> Iterator[None]:
    """Any failure of a decoder as an :class:`ImageFileError` starting with ``where``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # PIL's notes on odd-but-readable files
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit is checked
            yield
    except (ImageFileError, PermissionError):
        raise
    except Image.DecompressionBombError as e:
        raise ImageTooLargeError(
            f"{where}: too many pixels (--max-pixels; possible decompression bomb: {e})"
        ) from None
    except Image.UnidentifiedImageError:
        raise NotAnImageError(f"{where}: not a recognised image format (corrupt or not an image)") from None
    except Exception as e:  # noqa: BLE001  decoders of untrusted bytes raise anything; report it in one line
        reason = " ".join(str(e).split()) or type(e).__name__
        raise ImageFileError(f"{where}: corrupt or truncated image ({reason})") from None


def _open_checked(fp: IO[bytes], where: str, max_pixels: int) -> Image.Image:
    """The image in ``fp`` opened (not decoded) once its size is within ``max_pixels``. Pillow's own bomb
    check (``Image.MAX_IMAGE_PIXELS``, an error at twice it) is raised for the process where a larger
    limit is asked for."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and 2 * limit < max_pixels:
        Image.MAX_IMAGE_PIXELS = (max_pixels + 1) // 2
    img = Image.open(fp)
    w, h = img.size
    if w * h > max_pixels:
        raise ImageTooLargeError(
            f"{where}: {w}×{h} = {w * h:,} pixels exceeds the limit of {max_pixels:,} "
            "(--max-pixels; possible decompression bomb)"
        )
    return img


def _finish(img: Image.Image) -> Image.Image:
    """Decode ``img`` fully now (first frame: truncated files fail here), EXIF orientation applied."""
    img.load()
    with contextlib.suppress(Exception):  # malformed EXIF must not lose a decodable image
        ImageOps.exif_transpose(img, in_place=True)
    return img


def _decode(fp: IO[bytes], where: str, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Size-check and fully decode the image in ``fp`` (first frame), EXIF orientation applied; any failure
    is an :class:`ImageFileError` starting with ``where``."""
    with _decoder_errors(where):
        return _finish(_open_checked(fp, where, max_pixels))


def wide_colour(img: Image.Image) -> bool:
    """True for a >8-bit colour (or grey + alpha) PNG or TIFF, whose samples Pillow cuts to 8 bits."""
    if img.mode in SIXTEEN_BIT or img.format not in ("PNG", "TIFF"):
        return False
    if img.format == "TIFF":
        return max(img.tag_v2.get(258, (8,)) or (8,)) > 8  # BitsPerSample
    return any(";16" in str(t.args[0] if isinstance(t.args, tuple) else t.args) for t in img.tile)


def _wide_pixels(data: bytes, img: Image.Image, where: str) -> np.ndarray:
    """``H×W`` or ``H×W×3`` uint16 samples of a :func:`wide_colour` file (alpha dropped, EXIF orientation
    applied), decoded by imagecodecs."""
    if imagecodecs is None:
        raise ImageFileError(f"{where}: 16-bit colour images need the imagecodecs package (pip install it)")
    a = (imagecodecs.png_decode if img.format == "PNG" else imagecodecs.tiff_decode)(data)
    w, h = img.size
    if a.ndim == 3 and a.shape[:2] != (h, w) and a.shape[1:] == (h, w):
        a = np.moveaxis(a, 0, -1)  # planar TIFF
    if a.dtype != np.uint16 or a.shape[:2] != (h, w):
        raise ImageFileError(f"{where}: unsupported {img.format} samples ({a.dtype}, shape {a.shape})")
    a = a[:, :, :3] if a.ndim == 3 and a.shape[2] >= 3 else a[:, :, 0] if a.ndim == 3 else a
    with contextlib.suppress(Exception):  # malformed EXIF must not lose a decodable image
        a = _ORIENT.get(img.getexif().get(0x0112), lambda x: x)(a)
    return np.ascontiguousarray(a)


def _decode_pixels(fp: IO[bytes], where: str, max_pixels: int) -> np.ndarray:
    """The samples of the image in ``fp`` at full precision (:func:`read_pixels`), size-checked."""
    with _decoder_errors(where):
        img = _open_checked(fp, where, max_pixels)
        if wide_colour(img):
            fp.seek(0)
            return _wide_pixels(fp.read(), img, where)
        img = _finish(img)
    try:
        if img.mode in SIXTEEN_BIT:
            return np.clip(np.asarray(img), 0, 65535).astype(np.uint16)
        return to_rgb(img)
    except Exception as e:  # noqa: BLE001
        raise ImageFileError(f"{where}: unsupported mode {img.mode} ({e})") from None


def scale_pixels(pixels: np.ndarray, levels: tuple[int, int] | None = None) -> np.ndarray:
    """:func:`read_pixels`' samples → ``H×W×3`` uint8: 8-bit ones as they are, wider ones mapped ``levels``
    (low, high) → 0, 255 (None: 0, 65535), clipped and rounded once."""
    if pixels.dtype != np.uint8:
        low, high = levels or (0, 65535)
        scaled = (pixels.astype(np.float64) - low) * (255 / (high - low))
        pixels = np.round(np.clip(scaled, 0, 255)).astype(np.uint8)
    return np.repeat(pixels[:, :, None], 3, axis=2) if pixels.ndim == 2 else pixels


def to_rgb(img: Image.Image) -> np.ndarray:
    """Any PIL mode → H×W×3 uint8; 16-bit data scaled by 65535 (its dtype range), never by its max."""
    mode = img.mode
    if mode in SIXTEEN_BIT:
        return scale_pixels(np.clip(np.asarray(img), 0, 65535).astype(np.uint16))
    if mode == "F":
        a = np.asarray(img).astype(np.float64)
        gray = np.round(np.clip(np.nan_to_num(a), 0.0, 1.0) * 255).astype(np.uint8)  # floats: [0, 1] range
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode in ("RGBA", "RGBa", "RGBX"):
        return np.ascontiguousarray(np.asarray(img)[:, :, :3])  # drop alpha, do not composite
    if mode in ("LA", "La", "PA"):
        img = img.getchannel(0) if mode != "PA" else img.convert("RGBA")
    elif mode == "P":
        img = img.convert("RGBA")  # expand the palette; transparency then lives in alpha, which we drop
    if img.mode == "RGBA":
        return np.ascontiguousarray(np.asarray(img)[:, :, :3])
    if img.mode == "1":
        img = img.convert("L")
    return np.asarray(img if img.mode == "RGB" else img.convert("RGB"), dtype=np.uint8)


def read_pixels(path: Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """``path``'s samples at full precision: ``H×W×3`` uint8 for 8-bit data, uint16 ``H×W`` (grey) or
    ``H×W×3`` (colour) for >8-bit data (16-bit PNG and TIFF); an :class:`ImageFileError` otherwise."""
    with _opened(Path(path), "image") as (fp, where):
        return _decode_pixels(fp, where, max_pixels)


def read_image(path: Path, decoding: Decoding = DECODING) -> np.ndarray:
    """Decode ``path`` to the backbone's H×W×3 uint8 RGB pixels (:func:`read_pixels`, then
    :func:`scale_pixels` by ``decoding``'s levels); an :class:`ImageFileError` otherwise."""
    return scale_pixels(read_pixels(path, decoding.max_pixels), decoding.levels)


def decode_bytes(data: bytes, name: str, decoding: Decoding = DECODING) -> np.ndarray:
    """Decode image bytes (an upload) as :func:`read_image` decodes a file, with the same checks; errors
    name ``name``."""
    if not data:
        raise ImageFileError(f"cannot read image {name}: empty file (0 bytes)")
    pixels = _decode_pixels(io.BytesIO(data), f"cannot read image {name}", decoding.max_pixels)
    return scale_pixels(pixels, decoding.levels)


# --- listing ------------------------------------------------------------------------------------------------


def scan_images(folder: Path, recursive: bool = True, suffixes: Iterable[str] = IMAGE_SUFFIXES) -> list[Path]:
    """Image files under ``folder`` (sorted; hidden entries skipped; symlinked folders followed once, so
    loops end); possibly empty. A missing or unreadable folder is an :class:`ImageFileError`."""
    folder = Path(folder)
    if not folder.is_dir():
        why = "is not a folder" if folder.exists() else "not found"
        raise ImageFileError(f"image folder {show_path(folder)} {why}")
    wanted = {s.lower() for s in suffixes}
    found: list[Path] = []
    seen: set[tuple[int, int]] = set()
    stack = [folder]
    while stack:
        current = stack.pop()
        try:
            st = current.stat()
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            with os.scandir(current) as entries:
                for entry in entries:
                    if entry.name.startswith("."):
                        continue
                    try:
                        if entry.is_dir():
                            if recursive:
                                stack.append(Path(entry.path))
                        elif entry.is_file() and os.path.splitext(entry.name)[1].lower() in wanted:
                            found.append(Path(entry.path))
                    except OSError:
                        continue  # a dangling or looping link: not an image
        except OSError as e:
            why = "permission denied" if isinstance(e, PermissionError) else e.strerror or e
            raise ImageFileError(f"cannot list image folder {show_path(current)}: {why}") from None
    return sorted(found, key=lambda p: os.fsencode(p))


def collect_images(inputs: Iterable[Path]) -> list[Path]:
    """The images ``inputs`` name: files as they are (readable or not), folders scanned (:func:`scan_images`);
    an :class:`ImageFileError` for an input that does not exist or when there is no image at all."""
    inputs = list(inputs)
    paths: list[Path] = []
    for item in inputs:
        if item.is_dir():
            paths += scan_images(item)
        elif item.exists() or item.is_symlink():
            paths.append(item)
        else:
            raise ImageFileError(f"no such file or folder: {show_path(item)}")
    if not paths:
        raise ImageFileError(f"no images found in {', '.join(show_path(p) for p in inputs)}")
    return paths


# --- resizing -----------------------------------------------------------------------------------------------

_BLOCK = 32  # outputs per block of the banded resize matrix


@lru_cache(maxsize=64)
def _axis_resize(n_in: int, n_out: int) -> tuple[list[tuple[int, int, int, np.ndarray]], int]:
    """One axis of the resize: blocks ``(out_start, in_start, in_stop, weights [outs, ins])`` of the banded
    integer weight matrix, and the weights' fixed-point precision (bits).

    As torch computes them for uint8 images: the antialiased triangle filter (support = the scale when
    shrinking), normalised, scaled to int16 by the largest power of two that keeps every weight below 2¹⁵.
    Weights are stored as float32 where every partial sum stays an integer below 2²⁴ (exact), else float64.
    """
    scale = n_in / n_out
    support = scale if scale >= 1.0 else 1.0
    inv = 1.0 / scale if scale >= 1.0 else 1.0
    taps = math.ceil(support) * 2 + 1
    center = scale * (np.arange(n_out) + 0.5)
    lo = np.maximum((center - support + 0.5).astype(np.int64), 0)  # C casts truncate; both are >= -0.5
    size = np.minimum((center + support + 0.5).astype(np.int64), n_in) - lo
    j = np.arange(taps)
    w = np.maximum(1.0 - np.abs((j + lo[:, None] - center[:, None] + 0.5) * inv), 0.0)
    w[j >= size[:, None]] = 0.0
    total = w.sum(1, keepdims=True)
    w = np.divide(w, total, out=w, where=total != 0)
    bits = 0
    while bits < 22 and int(0.5 + w.max() * (1 << (bits + 1))) < (1 << 15):
        bits += 1
    w = np.floor(0.5 + w * (1 << bits))
    dtype = np.float32 if 255 * w.sum(1).max() + (1 << bits) < (1 << 24) else np.float64
    blocks = []
    for start in range(0, n_out, _BLOCK):
        rows = slice(start, min(start + _BLOCK, n_out))
        first, last = int(lo[rows].min()), int((lo[rows] + size[rows]).max())
        m = np.zeros((len(lo[rows]), last - first), dtype)
        for r, (a, n, weights) in enumerate(zip(lo[rows], size[rows], w[rows])):
            m[r, a - first : a - first + n] = weights[:n]
        blocks.append((start, first, last, m))
    return blocks, bits


def _resize_rows(a: np.ndarray, n_out: int) -> np.ndarray:
    """Resize axis 0 of a ``[n, M]`` uint8 array to ``n_out`` rows (one pass of :func:`resize_image`)."""
    blocks, bits = _axis_resize(a.shape[0], n_out)
    dtype = blocks[0][3].dtype
    out = np.empty((n_out, a.shape[1]), dtype)
    x = a.astype(dtype)
    for start, first, last, m in blocks:
        out[start : start + len(m)] = m @ x[first:last]
    out += 1 << (bits - 1)  # round half up, then drop the fraction bits: exact on these integers
    out *= 1.0 / (1 << bits)
    return np.clip(np.floor(out, out=out), 0, 255).astype(np.uint8)


def resize_image(image: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """An ``H×W×3`` uint8 image → ``[h, w, 3]`` uint8 (``size``: ``(h, w)``, or an int for a square), exactly
    as ``reconad.data.resize_images``: antialiased bilinear (``align_corners=False``), torch's uint8
    arithmetic, horizontal pass first; an axis already of the right length is left as it is."""
    out_h, out_w = (size, size) if isinstance(size, int) else size
    h, w, c = image.shape
    if w != out_w:
        rows = _resize_rows(image.transpose(1, 0, 2).reshape(w, h * c), out_w)
        image = rows.reshape(out_w, h, c).transpose(1, 0, 2)
    if h != out_h:
        image = _resize_rows(image.reshape(h, out_w * c), out_h).reshape(out_h, out_w, c)
    return np.ascontiguousarray(image)


# --- image sizes and aspects --------------------------------------------------------------------------------

#: How far an image's aspect (width / height) may stray from the run's before predict and serve say so once.
ASPECT_TOLERANCE = 0.10


def size_hw(size: int | str) -> tuple[int, int]:
    """The ``(height, width)`` of an image size as run.json and the export manifest store it: an int ``N`` is
    ``N×N``; a non-square size is the text ``"WxH"`` (width first, as ``--image-size`` takes it)."""
    if isinstance(size, int):
        return size, size
    text = str(size).strip().lower().replace("×", "x")
    try:
        parts = [int(p) for p in text.split("x")]
    except ValueError:
        raise ValueError(f"image size {size!r}: expected N or WxH, e.g. 256 or 512x256") from None
    if len(parts) == 1:
        return parts[0], parts[0]
    if len(parts) != 2:
        raise ValueError(f"image size {size!r}: expected N or WxH, e.g. 256 or 512x256")
    return parts[1], parts[0]


def stored_size(hw: tuple[int, int]) -> int | str:
    """How run.json and the manifest store the size ``(h, w)``: an int when square (as ever), else
    ``"WxH"``."""
    h, w = hw
    return h if h == w else f"{w}x{h}"


def file_hw(path: Path, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """An image file's ``(height, width)`` from its header alone, EXIF orientation applied (as decoded); an
    image over ``max_pixels`` is refused as the decoder refuses it."""
    try:
        with open(path, "rb") as f, _open_checked(f, f"image {show_path(path)}", max_pixels) as img:
            w, h = img.size
            turned = img.getexif().get(0x0112, 1) in (5, 6, 7, 8)  # transposed or rotated by 90°
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise ImageFileError(f"cannot read image {show_path(path)}: {err}") from None
    return (w, h) if turned else (h, w)


def aspect_note(name: str, image_hw: tuple[int, int], run_hw: tuple[int, int]) -> str | None:
    """A note when the image's aspect (width / height) differs from the run's by more than
    :data:`ASPECT_TOLERANCE` (either way): it is squashed to the run's size, which shifts what is normal."""
    image, run = image_hw[1] / image_hw[0], run_hw[1] / run_hw[0]
    if max(image / run, run / image) <= 1 + ASPECT_TOLERANCE:
        return None
    return (
        f"{name} is {image_hw[1]}x{image_hw[0]} (aspect {image:.2f}), the run's size {run_hw[1]}x{run_hw[0]} "
        f"(aspect {run:.2f}): it is stretched to that size, so its score may mislead (said once, for the "
        "first such image; fit at their aspect with --image-size WxH or --keep-aspect)"
    )


class AspectWatch:
    """Says :func:`aspect_note` through ``say`` once: for the first image whose aspect strays from the
    run's."""

    def __init__(self, run_hw: tuple[int, int], say: Callable[[str], None]) -> None:
        self.run_hw, self.say, self.said = run_hw, say, False

    def __call__(self, name: str, image_hw: tuple[int, int]) -> None:
        if not self.said and (note := aspect_note(name, image_hw, self.run_hw)) is not None:
            self.said = True
            self.say(note)


# --- overlays -----------------------------------------------------------------------------------------------

#: matplotlib's ``jet`` segments (x, y_left, y_right) per channel.
_JET_SEGMENTS = (
    ((0.0, 0, 0), (0.35, 0, 0), (0.66, 1, 1), (0.89, 1, 1), (1.0, 0.5, 0.5)),
    ((0.0, 0, 0), (0.125, 0, 0), (0.375, 1, 1), (0.64, 1, 1), (0.91, 0, 0), (1.0, 0, 0)),
    ((0.0, 0.5, 0.5), (0.11, 1, 1), (0.34, 1, 1), (0.65, 0, 0), (1.0, 0, 0)),
)


def _jet(n: int = 256) -> np.ndarray:
    """matplotlib's ``jet`` as an ``[n, 3]`` table of 0–255 float32 values, computed as matplotlib's
    ``LinearSegmentedColormap`` does (the same float64 steps, so the same numbers)."""
    channels = []
    for segments in _JET_SEGMENTS:
        x, y0, y1 = (np.array(v, dtype=float) for v in zip(*segments))
        x = x * (n - 1)
        at = (n - 1) * np.linspace(0, 1, n)
        ind = np.searchsorted(x, at)[1:-1]
        distance = (at[1:-1] - x[ind - 1]) / (x[ind] - x[ind - 1])
        lut = np.concatenate([[y1[0]], distance * (y0[ind] - y1[ind - 1]) + y1[ind - 1], [y0[-1]]])
        channels.append(np.clip(lut, 0.0, 1.0))
    return (np.stack(channels, axis=1) * 255).astype(np.float32)


#: The 256 colours of matplotlib's jet, 0–255 as float32: a table lookup is 2.4× faster than calling the
#: colormap on every pixel (which builds an H×W×4 float64 array) and picks the same colour.
JET = _jet()


def normalise(amap: np.ndarray, threshold: float, normal_level: float) -> np.ndarray:
    """Map values to [0, 1]: ``normal_level`` (mean map of good images) → 0, ``threshold`` → 0.5."""
    span = max(threshold - normal_level, 1e-12)
    return np.clip((amap - normal_level) / (2 * span), 0.0, 1.0)


def heatmap_overlay(
    image: np.ndarray, amap: np.ndarray, threshold: float, normal_level: float, alpha: float = 0.5
) -> np.ndarray:
    """``image`` (H×W×3 uint8) blended with a jet-coloured ``amap`` (H×W); returns H×W×3 uint8."""
    level = np.minimum((normalise(amap, threshold, normal_level) * 256).astype(np.intp), 255)
    blended = (1 - alpha) * image.astype(np.float32) + alpha * JET[level]
    return np.clip(blended, 0, 255).round().astype(np.uint8)


def overlay_name(path: Path, taken: set[str]) -> str:
    """A file name for ``path``'s overlay not yet in ``taken`` (which it joins): ``STEM_overlay.png``."""
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in path.stem) or "image"
    name, i = f"{stem}_overlay.png", 1
    while name in taken:
        name, i = f"{stem}_{i}_overlay.png", i + 1
    taken.add(name)
    return name
