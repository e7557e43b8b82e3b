"""Safe image and mask decoding: every failure becomes a one-line :class:`ReconadError` naming the file.

Pillow decoding and folder listing live in the torch-free :mod:`reconad.image_runtime` (an exported model
ships it); this module adds the fast PNG path, masks, torch's resize and the library's error type.

Images come back as ``H×W×3`` uint8 RGB whatever their mode (alpha dropped, palettes expanded, EXIF
orientation applied; >8-bit data read at full precision and mapped to 0–255 by a :class:`Decoding`'s levels,
by default its dtype range); masks come back as ``H×W`` bool.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from reconad import image_runtime
from reconad.data.fastpng import decode_plain_png
from reconad.data.sample import Sample
from reconad.errors import ImageTooLarge, NotAnImage, ReconadError
from reconad.image_runtime import (
    DECODING,
    IMAGE_SUFFIXES,
    MAX_PIXELS,
    SIXTEEN_BIT,
    Decoding,
    ImageFileError,
    ImageTooLargeError,
    NotAnImageError,
    open_image,
    show_path,
    wide_colour,
)
from reconad.image_runtime import to_rgb as _to_rgb


@contextlib.contextmanager
def _reconad_errors() -> Iterator[None]:
    """Re-raise :class:`~reconad.image_runtime.ImageFileError` (torch-free) as :class:`ReconadError`."""
    try:
        yield
    except ImageTooLargeError as err:
        raise ImageTooLarge(str(err)) from None
    except NotAnImageError as err:
        raise NotAnImage(str(err)) from None
    except ImageFileError as err:
        raise ReconadError(str(err)) from None


def _open(path: Path, what: str, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open, size-check and fully decode ``path`` (first frame), EXIF orientation applied."""
    with _reconad_errors():
        return open_image(path, what, max_pixels)


def read_image(path: Path, decoding: Decoding = DECODING) -> np.ndarray:
    """Decode ``path`` to an H×W×3 uint8 RGB array (>8-bit data mapped by ``decoding``'s levels); a
    :class:`ReconadError` naming the file otherwise."""
    path = Path(path)
    if path.suffix.lower() == ".png":
        try:
            pixels = decode_plain_png(path.read_bytes(), decoding.max_pixels)
        except OSError:
            pixels = None  # Pillow's path below names the problem
        if pixels is not None:
            return pixels
    with _reconad_errors():
        return image_runtime.read_image(path, decoding)


def decode_bytes(data: bytes, name: str, decoding: Decoding = DECODING) -> np.ndarray:
    """Decode image bytes (an upload) as :func:`read_image` decodes a file, with the same checks; errors
    name ``name``: :class:`ImageTooLarge` for bombs, :class:`NotAnImage` for bytes no decoder knows."""
    if not data:
        raise ReconadError(f"cannot read image {name}: empty file (0 bytes)")
    pixels = decode_plain_png(data, decoding.max_pixels)
    if pixels is not None:
        return pixels
    with _reconad_errors():
        return image_runtime.decode_bytes(data, name, decoding)


def pixel_range(path: Path, max_pixels: int = MAX_PIXELS) -> tuple[int, int] | None:
    """(lowest, highest) sample of ``path`` where it holds >8-bit data (16-bit PNG or TIFF); None for 8-bit
    data, found from the header alone."""
    path = Path(path)
    try:
        with open(path, "rb") as fp, Image.open(fp) as img:
            wide = img.mode in SIXTEEN_BIT or wide_colour(img)
    except Exception:  # noqa: BLE001  read_pixels below names what is wrong with it
        wide = True
    if not wide:
        return None
    with _reconad_errors():
        pixels = image_runtime.read_pixels(path, max_pixels)
    return int(pixels.min(initial=65535)), int(pixels.max(initial=0))


def _mask_values(img: Image.Image) -> tuple[np.ndarray, float]:
    """A 2-D array of mask values and the full range of the mask's mode."""
    mode = img.mode
    if mode == "1":
        return np.asarray(img, dtype=np.uint8), 1.0
    if mode in SIXTEEN_BIT:
        return np.asarray(img).astype(np.float64), 65535.0
    if mode == "F":
        return np.asarray(img).astype(np.float64), 1.0
    if mode in ("L", "LA", "La"):
        return np.asarray(img.getchannel(0)), 255.0
    return np.asarray(_to_rgb(img)).max(axis=2), 255.0  # colour masks: the brightest channel


def read_mask(
    path: Path, image_hw: tuple[int, int], image_path: Path | None = None, max_pixels: int = MAX_PIXELS
) -> np.ndarray:
    """Decode a ground-truth mask to H×W bool, checking it matches its image's ``(H, W)``.

    Foreground = value > half the mode's full range (0/255, antialiased and 16-bit masks alike); a mask whose
    values are all in {0, 1} is a 0/1-coded mask and 1 is foreground.
    """
    path = Path(path)
    values, full = _mask_values(_open(path, "mask", max_pixels))
    if values.shape != tuple(image_hw):
        of = f" of image {show_path(image_path)}" if image_path is not None else ""
        raise ReconadError(
            f"mask {show_path(path)} is {values.shape[1]}×{values.shape[0]} (W×H) but the image{of} is "
            f"{image_hw[1]}×{image_hw[0]}"
        )
    if full > 1 and values.max(initial=0) <= 1 and values.min(initial=0) >= 0:
        return values >= 1  # a 0/1-coded mask stored in a wider mode
    return values > full / 2


def _check_size(size: int | tuple[int, int]) -> tuple[int, int]:
    """``(h, w)`` of ``size`` (an int: a square); a one-line error unless both are positive integers."""
    hw = (size, size) if isinstance(size, int) else tuple(size) if isinstance(size, (tuple, list)) else ()
    if len(hw) != 2 or not all(isinstance(s, int) and s >= 1 for s in hw):
        raise ReconadError(f"image size must be a positive integer or (h, w), got {size!r}")
    return hw  # type: ignore[return-value]


def resize_images(images: list[np.ndarray], size: int | tuple[int, int]) -> np.ndarray:
    """``H×W×3`` uint8 images → ``[N, h, w, 3]`` uint8 (``size``: ``(h, w)``, or an int for a square):
    antialiased bilinear (``align_corners=False``), torch's uint8 kernel (within 1 grey level of Pillow's
    BILINEAR, 2.5× faster); same-sized images in one call."""
    hw = _check_size(size)
    out = np.empty((len(images), *hw, 3), dtype=np.uint8)
    shapes: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):
        shapes.setdefault(image.shape, []).append(i)
    for shape, idx in shapes.items():
        batch = torch.from_numpy(np.stack([images[i] for i in idx])).permute(0, 3, 1, 2)
        if shape[:2] != hw:
            batch = F.interpolate(batch, size=hw, mode="bilinear", antialias=True, align_corners=False)
        out[idx] = batch.permute(0, 2, 3, 1).numpy()
    return out


def load_image_and_mask(
    sample: Sample, size: int | tuple[int, int], decoding: Decoding = DECODING
) -> tuple[np.ndarray, np.ndarray | None]:
    """The sample's image at its own size (uint8 H×W×3, :func:`read_image` by ``decoding``) and its mask
    resized to ``size`` (``(h, w)`` or an int for a square; nearest, bool), or None for good samples and for
    anomalous samples without a mask."""
    h, w = _check_size(size)
    image = read_image(sample.path, decoding)
    if sample.label == 0 or sample.mask_path is None:
        return image, None
    mask = read_mask(sample.mask_path, image.shape[:2], sample.path, decoding.max_pixels)
    small = Image.fromarray(mask.astype(np.uint8) * 255).resize((w, h), Image.Resampling.NEAREST)
    return image, np.asarray(small) > 127


def load_resized(
    sample: Sample, size: int | tuple[int, int], decoding: Decoding = DECODING
) -> tuple[np.ndarray, np.ndarray | None]:
    """The sample's image resized to ``size`` (:func:`resize_images`) and its mask (as
    :func:`load_image_and_mask`)."""
    image, mask = load_image_and_mask(sample, size, decoding)
    return resize_images([image], size)[0], mask


def training_aspect(samples: Iterable[Sample], max_pixels: int = MAX_PIXELS) -> float:
    """The median aspect (width / height) of ``samples``' images, from their headers (EXIF orientation
    applied): the aspect ``--keep-aspect`` fits at."""
    with _reconad_errors():
        sizes = [image_runtime.file_hw(s.path, max_pixels) for s in samples]
    if not sizes:
        raise ReconadError("--keep-aspect: no training images to measure the aspect of")
    return float(np.median([w / h for h, w in sizes]))


def training_size(samples: Iterable[Sample], max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """The median ``(height, width)`` of ``samples``' images, from their headers (EXIF orientation applied):
    the native size ``--tile`` cuts its tiles from."""
    with _reconad_errors():
        sizes = np.array([image_runtime.file_hw(s.path, max_pixels) for s in samples])
    if not len(sizes):
        raise ReconadError("--tile: no training images to measure the size of")
    return int(np.median(sizes[:, 0])), int(np.median(sizes[:, 1]))


def scan_images(folder: Path, recursive: bool = True, suffixes: Iterable[str] = IMAGE_SUFFIXES) -> list[Path]:
    """Image files under ``folder`` (sorted; hidden entries skipped; symlinked folders followed once, so
    loops end); possibly empty. A missing or unreadable folder is a :class:`ReconadError`."""
    with _reconad_errors():
        return image_runtime.scan_images(folder, recursive, suffixes)


def collect_images(inputs: Iterable[Path]) -> list[Path]:
    """The images ``inputs`` name (files as given, folders scanned); a :class:`ReconadError` for an input
    that does not exist or when there is no image at all."""
    with _reconad_errors():
        return image_runtime.collect_images(inputs)


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
