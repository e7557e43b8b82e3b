"""Generated "parts" in the MVTec AD layout, for the demo, tests and benchmarks: no download, deterministic
per seed.

A part is a striped brass washer on a smooth, mottled dark background, shifted by a few pixels and with
jittered brightness; on a non-square image (``aspect``) the washer is stretched along the longer side.
Defects are drawn on the part with exact masks: ``scratch`` (a thin dark line), ``blob`` (a red stain) and
``missing`` (a chunk of the rim cut away, showing background). By default they scale with the image; with
``defect_px`` each is a few pixels across whatever the image size (:func:`make_hires`: 2048 px parts with
8–32 px defects, which a 256 px input shrinks to 1–4 px).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import zoom
from skimage.draw import disk, ellipse, polygon

from reconad.data.imageio import show_path
from reconad.errors import ReconadError

DEFECTS = ("scratch", "blob", "missing")
MARKER = ".reconad_synthetic"  # lets make_parts safely replace a folder it wrote itself


def _background(rng: np.random.Generator, hw: tuple[int, int]) -> np.ndarray:
    h, w = hw
    base = np.array([58.0, 66.0, 62.0])
    smooth = zoom(rng.normal(0.0, 7.0, (6, 6)), (h / 6, w / 6), order=3)[:h, :w]
    return base + smooth[:, :, None] + rng.normal(0.0, 2.0, (h, w, 1))


def _part(
    rng: np.random.Generator, hw: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """A clean image (float H×W×3), the part's mask and its centre. The washer's radii are fractions of the
    height; along x they are stretched by width / height."""
    h, w = hw
    cy, cx = np.array([h, w]) / 2 + rng.uniform(-0.03, 0.03, 2) * np.array([h, w])
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    r = np.hypot(yy - cy, (xx - cx) / (w / h))
    on_part = (r < 0.38 * h) & (r > 0.1 * h)
    stripes = np.sin(2 * np.pi * ((xx - cx) * 0.8 + (yy - cy) * 0.6) / (min(h, w) / 16))
    brass = np.array([176.0, 150.0, 104.0]) + 22.0 * stripes[:, :, None]
    img = np.where(on_part[:, :, None], brass, _background(rng, hw))
    return img * rng.uniform(0.93, 1.07), on_part, (cy, cx)


def _on_part(
    centre: tuple[float, float], hw: tuple[int, int], rad: float, angle: float
) -> tuple[float, float]:
    """The point at ``rad`` (a fraction of the height, stretched along x as the part is) and ``angle``."""
    (cy, cx), (h, w) = centre, hw
    return cy + rad * h * np.sin(angle), cx + rad * h * np.cos(angle) * (w / h)


def _scaled_mask(
    rng: np.random.Generator, on_part: np.ndarray, centre: tuple[float, float], kind: str
) -> np.ndarray:
    """The pixels of a defect of ``kind`` sized as fractions of the image (the default)."""
    h, w = on_part.shape
    cy, cx = centre
    angle = rng.uniform(0, 2 * np.pi)
    mask = np.zeros(on_part.shape, bool)
    if kind == "missing":  # a wedge cut from the rim: background shows through
        r0, r1, half = 0.26 * h, 0.45 * h, rng.uniform(0.18, 0.3)
        pts = [(cy + r0 * np.sin(angle), cx + r0 * np.cos(angle) * (w / h))]
        pts += [(cy + r1 * np.sin(a), cx + r1 * np.cos(a) * (w / h)) for a in (angle - half, angle + half)]
        rr, cc = polygon([p[0] for p in pts], [p[1] for p in pts], on_part.shape)
        mask[rr, cc] = True
        return mask & on_part
    rad = rng.uniform(0.17, 0.3) * h
    y, x = cy + rad * np.sin(angle), cx + rad * np.cos(angle) * (w / h)
    if kind == "blob":
        a, b = rng.uniform(0.035, 0.06) * h, rng.uniform(0.035, 0.06) * h
        rr, cc = ellipse(y, x, a, b, on_part.shape, rotation=rng.uniform(0, np.pi))
    else:  # scratch: a thin dark bar through (y, x)
        t, half_len, half_w = rng.uniform(0, np.pi), rng.uniform(0.08, 0.14) * h, max(1.0, 0.012 * h)
        rr, cc = _bar(y, x, t, half_len, half_w, on_part.shape)
    mask[rr, cc] = True
    return mask


def _bar(
    y: float, x: float, t: float, half_len: float, half_w: float, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """The pixels of a bar centred on (y, x) at angle ``t``."""
    d, n = np.array([np.sin(t), np.cos(t)]), np.array([np.cos(t), -np.sin(t)])
    corners = [
        np.array([y, x]) + s * half_len * d + w * half_w * n for s, w in ((-1, -1), (-1, 1), (1, 1), (1, -1))
    ]
    return polygon([c[0] for c in corners], [c[1] for c in corners], shape)


def _sized_mask(
    rng: np.random.Generator,
    on_part: np.ndarray,
    centre: tuple[float, float],
    kind: str,
    px: tuple[float, float],
) -> np.ndarray:
    """The pixels of a defect of ``kind`` whose longest extent is ``d`` pixels, ``d`` drawn from ``px``:
    a blob ``d`` across, a scratch ``d`` long, a bite ``d`` across out of the outer rim."""
    d, angle = rng.uniform(*px), rng.uniform(0, 2 * np.pi)
    mask = np.zeros(on_part.shape, bool)
    if kind == "missing":
        rr, cc = disk(_on_part(centre, on_part.shape, 0.38, angle), max(1.0, d / 2), shape=on_part.shape)
    else:
        y, x = _on_part(centre, on_part.shape, rng.uniform(0.17, 0.3), angle)
        if kind == "blob":
            a, b = max(1.0, d / 2), max(1.0, rng.uniform(0.5, 1.0) * d / 2)
            rr, cc = ellipse(y, x, a, b, on_part.shape, rotation=rng.uniform(0, np.pi))
        else:
            rr, cc = _bar(y, x, rng.uniform(0, np.pi), d / 2, max(0.75, d / 20), on_part.shape)
    mask[rr, cc] = True
    return mask & on_part


def _defect(
    rng: np.random.Generator,
    img: np.ndarray,
    on_part: np.ndarray,
    centre: tuple[float, float],
    kind: str,
    px: tuple[float, float] | None = None,
) -> np.ndarray:
    """Draw one defect of ``kind`` into ``img`` in place (sized as a fraction of the image, or ``px`` pixels
    across: :func:`_sized_mask`); return its exact mask (the pixels it changed)."""
    mask = (
        _scaled_mask(rng, on_part, centre, kind)
        if px is None
        else _sized_mask(rng, on_part, centre, kind, px)
    )
    if kind == "missing":
        img[mask] = _background(rng, on_part.shape)[mask]
    elif kind == "blob":
        img[mask] = np.array([165.0, 48.0, 40.0]) + rng.normal(0, 6, (int(mask.sum()), 3))
    else:
        img[mask] = np.array([28.0, 26.0, 24.0])
    return mask


def _save(img: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(np.round(img), 0, 255).astype(np.uint8)).save(path)


def _prepare(folder: Path) -> None:
    if folder.exists() and any(folder.iterdir()):
        if not (folder / MARKER).is_file():
            raise ReconadError(f"{show_path(folder)} exists and is not empty; choose another folder")
        shutil.rmtree(folder)  # our own previous output
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).write_text("written by reconad.data.synthetic.make_parts\n")


def part_hw(size: int, aspect: float) -> tuple[int, int]:
    """``(height, width)`` of a part image whose longer side is ``size`` and width / height ``aspect``."""
    return (round(size / aspect), size) if aspect >= 1 else (size, round(size * aspect))


def make_parts(
    root: Path,
    n_train: int = 40,
    n_test_good: int = 10,
    n_test_bad: int = 20,
    size: int = 128,
    seed: int = 0,
    category: str = "synthetic_part",
    aspect: float = 1.0,
    defect_px: tuple[float, float] | None = None,
) -> Path:
    """Write an MVTec-layout dataset under ``root/category`` and return that category folder.

    ``size`` is the images' longer side and ``aspect`` their width / height; ``defect_px`` (low, high) makes
    each defect that many pixels across instead of a fraction of the image. Defect types cycle through
    :data:`DEFECTS`; masks are ``ground_truth/<defect>/NNN_mask.png`` (0/255).
    """
    hw = part_hw(size, aspect) if aspect > 0 else (0, 0)
    if n_train < 1 or n_test_good < 0 or n_test_bad < 0 or min(hw) < 32:
        raise ReconadError(
            "make_parts needs n_train >= 1, n_test_good >= 0, n_test_bad >= 0 and both sides >= 32 px"
        )
    if defect_px is not None and not 1 <= defect_px[0] <= defect_px[1]:
        raise ReconadError(
            f"make_parts: defect_px must be (low, high) with 1 <= low <= high, got {defect_px}"
        )
    folder = Path(root) / category
    _prepare(folder)
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test_good)):
        for i in range(n):
            _save(_part(rng, hw)[0], folder / split / "good" / f"{i:03d}.png")
    counts = dict.fromkeys(DEFECTS, 0)
    for i in range(n_test_bad):
        kind = DEFECTS[i % len(DEFECTS)]
        img, on_part, centre = _part(rng, hw)
        mask = _defect(rng, img, on_part, centre, kind, defect_px)
        k = counts[kind]
        counts[kind] += 1
        _save(img, folder / "test" / kind / f"{k:03d}.png")
        _save(mask.astype(np.float64) * 255, folder / "ground_truth" / kind / f"{k:03d}_mask.png")
    return folder


#: The high-resolution set's categories and their aspects (width / height).
HIRES_ASPECTS = {"hires_square": 1.0, "hires_long": 3.0}


def make_hires(
    root: Path,
    n_train: int = 40,
    n_test_good: int = 10,
    n_test_bad: int = 20,
    size: int = 2048,
    defect_px: tuple[float, float] = (8, 32),
    seed: int = 0,
) -> list[Path]:
    """The high-resolution set under ``root``: one category per :data:`HIRES_ASPECTS` entry (2048 × 2048
    and 2048 × 683 parts by default), each with defects ``defect_px`` pixels across; the category folders.
    One category per aspect, so that ``--keep-aspect`` (one size per run) fits each at its own aspect."""
    return [
        make_parts(root, n_train, n_test_good, n_test_bad, size, seed + i, name, aspect, defect_px)
        for i, (name, aspect) in enumerate(HIRES_ASPECTS.items())
    ]
