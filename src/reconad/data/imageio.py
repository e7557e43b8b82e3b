"""Safe image and mask decoding: every failure becomes a one-line :class:`ReconadError` naming the file.

Images come back as ``H×W×3`` uint8 RGB whatever their mode (alpha dropped, palettes expanded, 16-bit data
scaled by its dtype range, EXIF orientation applied); masks come back as ``H×W`` bool.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import IO

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from reconad.data.fastpng import decode_plain_png
from reconad.data.sample import Sample
from reconad.errors import ImageTooLarge, NotAnImage, ReconadError

IMAGE_SUFFIXES: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
MAX_PIXELS = 64_000_000  # refuse larger images before decoding them (decompression bombs)
_SIXTEEN_BIT = {
    "I;16",
    "I;16L",
    "I;16B",
    "I;16N",
    "I",
}  # mode I: 32-bit ints that hold 16-bit data in practice


def show_path(path: os.PathLike | str) -> str:
    """``path`` as printable text, also when its name is not valid UTF-8 (undecodable bytes as ``\\x..``)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _open(path: Path, what: str) -> Image.Image:
    """Open, size-check and fully decode the file ``path`` (:func:`_decode`)."""
    where = f"cannot read {what} {show_path(path)}"
    try:
        if not path.exists():
            raise ReconadError(f"{where}: file not found")
        if path.is_dir():
            raise ReconadError(f"{where}: it is a directory, not an image file")
        if path.stat().st_size == 0:
            raise ReconadError(f"{where}: empty file (0 bytes)")
        with open(path, "rb") as fp:
            return _decode(fp, where)
    except PermissionError:
        raise ReconadError(f"{where}: permission denied") from None


def _decode(fp: IO[bytes], where: str) -> Image.Image:
    """Size-check and fully decode the image in ``fp`` (first frame), EXIF orientation applied; any failure
    is a :class:`ReconadError` starting with ``where``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # PIL's notes on odd-but-readable files
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(fp)
            w, h = img.size
            if w * h > MAX_PIXELS:
                raise ImageTooLarge(
                    f"{where}: {w}×{h} = {w * h / 1e6:.0f} Mpx exceeds the limit of "
                    f"{MAX_PIXELS / 1e6:.0f} Mpx (possible decompression bomb)"
                )
            img.load()  # force the full decode now (first frame): truncated files fail here
            _apply_exif_orientation(img)
    except (ReconadError, PermissionError):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageTooLarge(f"{where}: too many pixels, possible decompression bomb ({e})") from None
    except Image.UnidentifiedImageError:
        raise NotAnImage(f"{where}: not a recognised image format (corrupt or not an image)") from None
    except Exception as e:  # noqa: BLE001  decoders of untrusted bytes raise anything; report it in one line
        reason = " ".join(str(e).split()) or type(e).__name__
        raise ReconadError(f"{where}: corrupt or truncated image ({reason})") from None
    return img


def _apply_exif_orientation(img: Image.Image) -> None:
    """Rotate/flip ``img`` in place as its EXIF orientation says; malformed EXIF leaves it unrotated."""
    with contextlib.suppress(Exception):  # malformed EXIF must not lose a decodable image
        ImageOps.exif_transpose(img, in_place=True)


def _to_rgb(img: Image.Image) -> np.ndarray:
    """Any PIL mode → H×W×3 uint8; 16-bit data scaled by 65535 (its dtype range), never by its max."""
    mode = img.mode
    if mode in _SIXTEEN_BIT:
        a = np.asarray(img).astype(np.float64)
        gray = np.round(np.clip(a, 0, 65535) * (255 / 65535)).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
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


def _image_pixels(img: Image.Image, name: str) -> np.ndarray:
    try:
        return _to_rgb(img)
    except Exception as e:  # noqa: BLE001
        raise ReconadError(f"cannot read image {name}: unsupported mode {img.mode} ({e})") from None


def read_image(path: Path) -> np.ndarray:
    """Decode ``path`` to an H×W×3 uint8 RGB array; a :class:`ReconadError` naming the file otherwise."""
    path = Path(path)
    if path.suffix.lower() == ".png":
        try:
            pixels = decode_plain_png(path.read_bytes(), MAX_PIXELS)
        except OSError:
            pixels = None  # Pillow's path below names the problem
        if pixels is not None:
            return pixels
    return _image_pixels(_open(path, "image"), show_path(path))


def decode_image(data: bytes, name: str) -> np.ndarray:
    """Decode image bytes (an upload) as :func:`read_image` decodes a file, with the same checks; errors
    name ``name``: :class:`ImageTooLarge` for bombs, :class:`NotAnImage` for bytes no decoder knows."""
    if not data:
        raise ReconadError(f"cannot read image {name}: empty file (0 bytes)")
    pixels = decode_plain_png(data, MAX_PIXELS)
    if pixels is not None:
        return pixels
    return _image_pixels(_decode(io.BytesIO(data), f"cannot read image {name}"), name)


def _mask_values(img: Image.Image) -> tuple[np.ndarray, float]:
    """A 2-D array of mask values and the full range of the mask's mode."""
    mode = img.mode
    if mode == "1":
        return np.asarray(img, dtype=np.uint8), 1.0
    if mode in _SIXTEEN_BIT:
        return np.asarray(img).astype(np.float64), 65535.0
    if mode == "F":
        return np.asarray(img).astype(np.float64), 1.0
    if mode in ("L", "LA", "La"):
        return np.asarray(img.getchannel(0)), 255.0
    return np.asarray(_to_rgb(img)).max(axis=2), 255.0  # colour masks: the brightest channel


def read_mask(path: Path, image_hw: tuple[int, int], image_path: Path | None = None) -> np.ndarray:
    """Decode a ground-truth mask to H×W bool, checking it matches its image's ``(H, W)``.

    Foreground = value > half the mode's full range (0/255, antialiased and 16-bit masks alike); a mask whose
    values are all in {0, 1} is a 0/1-coded mask and 1 is foreground.
    """
    path = Path(path)
    values, full = _mask_values(_open(path, "mask"))
    if values.shape != tuple(image_hw):
        of = f" of image {show_path(image_path)}" if image_path is not None else ""
        raise ReconadError(
            f"mask {show_path(path)} is {values.shape[1]}×{values.shape[0]} (W×H) but the image{of} is "
            f"{image_hw[1]}×{image_hw[0]}"
        )
    if full > 1 and values.max(initial=0) <= 1 and values.min(initial=0) >= 0:
        return values >= 1  # a 0/1-coded mask stored in a wider mode
    return values > full / 2


def _check_size(size: int) -> None:
    if not isinstance(size, int) or size < 1:
        raise ReconadError(f"image size must be a positive integer, got {size!r}")


def resize_images(images: list[np.ndarray], size: int) -> np.ndarray:
    """``H×W×3`` uint8 images → ``[N, size, size, 3]`` uint8: antialiased bilinear (``align_corners=False``),
    torch's uint8 kernel (within 1 grey level of Pillow's BILINEAR, 2.5× faster); same-sized images in one
    call."""
    _check_size(size)
    out = np.empty((len(images), size, size, 3), dtype=np.uint8)
    shapes: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):
        shapes.setdefault(image.shape, []).append(i)
    for shape, idx in shapes.items():
        batch = torch.from_numpy(np.stack([images[i] for i in idx])).permute(0, 3, 1, 2)
        if shape[:2] != (size, size):
            batch = F.interpolate(
                batch, size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )
        out[idx] = batch.permute(0, 2, 3, 1).numpy()
    return out


def load_image_and_mask(sample: Sample, size: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The sample's image at its own size (uint8 H×W×3) and its mask resized to ``size×size`` (nearest,
    bool), or None for good samples and for anomalous samples without a mask."""
    image = read_image(sample.path)
    if sample.label == 0 or sample.mask_path is None:
        return image, None
    mask = read_mask(sample.mask_path, image.shape[:2], image_path=sample.path)
    small = Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.Resampling.NEAREST)
    return image, np.asarray(small) > 127


def load_resized(sample: Sample, size: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The sample's image resized to ``size×size`` (:func:`resize_images`) and its mask (as
    :func:`load_image_and_mask`)."""
    _check_size(size)
    image, mask = load_image_and_mask(sample, size)
    return resize_images([image], size)[0], mask


def scan_images(folder: Path, recursive: bool = True, suffixes: Iterable[str] = IMAGE_SUFFIXES) -> list[Path]:
    """Image files under ``folder`` (sorted; hidden entries skipped; symlinked folders followed once, so
    loops end); possibly empty. A missing or unreadable folder is a :class:`ReconadError`."""
    folder = Path(folder)
    if not folder.is_dir():
        why = "is not a folder" if folder.exists() else "not found"
        raise ReconadError(f"image folder {show_path(folder)} {why}")
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
        except PermissionError:
            raise ReconadError(f"cannot list image folder {show_path(current)}: permission denied") from None
        except OSError as e:
            raise ReconadError(f"cannot list image folder {show_path(current)}: {e.strerror or e}") from None
    return sorted(found, key=lambda p: os.fsencode(p))


def list_images(folder: Path, recursive: bool = True, suffixes: Iterable[str] = IMAGE_SUFFIXES) -> list[Path]:
    """Like :func:`scan_images`, but a folder without any image is a :class:`ReconadError` naming it."""
    suffixes = tuple(suffixes)
    found = scan_images(folder, recursive=recursive, suffixes=suffixes)
    if not found:
        raise ReconadError(f"no images ({' '.join(sorted(suffixes))}) in folder {show_path(folder)}")
    return found


def subfolders(folder: Path) -> list[Path]:
    """The non-hidden sub-folders of ``folder``, sorted by name (empty when ``folder`` is not a folder)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    try:
        return sorted(
            (p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name
        )
    except OSError as e:
        raise ReconadError(f"cannot list folder {show_path(folder)}: {e.strerror or e}") from None
