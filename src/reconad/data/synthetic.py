"""Generated "parts" in the MVTec AD layout, for the demo and for tests: no download, deterministic per seed.

A part is a striped brass washer on a smooth, mottled dark background, shifted by a few pixels and with
jittered brightness. Defects are drawn on the part with exact masks: ``scratch`` (a thin dark line), ``blob``
(a red stain) and ``missing`` (a chunk of the rim cut away, showing background).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import zoom
from skimage.draw import ellipse, polygon

from reconad.data.imageio import show_path
from reconad.errors import ReconadError

DEFECTS = ("scratch", "blob", "missing")
MARKER = ".reconad_synthetic"  # lets make_parts safely replace a folder it wrote itself


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    base = np.array([58.0, 66.0, 62.0])
    smooth = zoom(rng.normal(0.0, 7.0, (6, 6)), size / 6, order=3)[:size, :size]
    return base + smooth[:, :, None] + rng.normal(0.0, 2.0, (size, size, 1))


def _part(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """A clean image (float H×W×3), the part's mask and its centre."""
    cy, cx = size / 2 + rng.uniform(-0.03, 0.03, 2) * size
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    r = np.hypot(yy - cy, xx - cx)
    on_part = (r < 0.38 * size) & (r > 0.1 * size)
    stripes = np.sin(2 * np.pi * ((xx - cx) * 0.8 + (yy - cy) * 0.6) / (size / 16))
    brass = np.array([176.0, 150.0, 104.0]) + 22.0 * stripes[:, :, None]
    img = np.where(on_part[:, :, None], brass, _background(rng, size))
    return img * rng.uniform(0.93, 1.07), on_part, (cy, cx)


def _defect(
    rng: np.random.Generator, img: np.ndarray, on_part: np.ndarray, centre: tuple[float, float], kind: str
) -> np.ndarray:
    """Draw one defect of ``kind`` into ``img`` in place; return its exact mask (the pixels it changed)."""
    size = img.shape[0]
    cy, cx = centre
    angle = rng.uniform(0, 2 * np.pi)
    mask = np.zeros(on_part.shape, bool)
    if kind == "missing":  # a wedge cut from the rim: background shows through
        r0, r1, half = 0.26 * size, 0.45 * size, rng.uniform(0.18, 0.3)
        pts = [(cy + r0 * np.sin(angle), cx + r0 * np.cos(angle))]
        pts += [(cy + r1 * np.sin(a), cx + r1 * np.cos(a)) for a in (angle - half, angle + half)]
        rr, cc = polygon([p[0] for p in pts], [p[1] for p in pts], on_part.shape)
        mask[rr, cc] = True
        mask &= on_part
        img[mask] = _background(rng, size)[mask]
        return mask
    rad = rng.uniform(0.17, 0.3) * size
    y, x = cy + rad * np.sin(angle), cx + rad * np.cos(angle)
    if kind == "blob":
        rr, cc = ellipse(
            y,
            x,
            rng.uniform(0.035, 0.06) * size,
            rng.uniform(0.035, 0.06) * size,
            on_part.shape,
            rotation=rng.uniform(0, np.pi),
        )
        mask[rr, cc] = True
        img[mask] = np.array([165.0, 48.0, 40.0]) + rng.normal(0, 6, (int(mask.sum()), 3))
    else:  # scratch: a thin dark bar through (y, x)
        t, half_len, half_w = rng.uniform(0, np.pi), rng.uniform(0.08, 0.14) * size, max(1.0, 0.012 * size)
        d, n = np.array([np.sin(t), np.cos(t)]), np.array([np.cos(t), -np.sin(t)])
        corners = [
            np.array([y, x]) + s * half_len * d + w * half_w * n
            for s, w in ((-1, -1), (-1, 1), (1, 1), (1, -1))
        ]
        rr, cc = polygon([c[0] for c in corners], [c[1] for c in corners], on_part.shape)
        mask[rr, cc] = True
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


def make_parts(
    root: Path,
    n_train: int = 40,
    n_test_good: int = 10,
    n_test_bad: int = 20,
    size: int = 128,
    seed: int = 0,
    category: str = "synthetic_part",
) -> Path:
    """Write an MVTec-layout dataset under ``root/category`` and return that category folder.

    Defect types cycle through :data:`DEFECTS`; masks are ``ground_truth/<defect>/NNN_mask.png`` (0/255).
    """
    if n_train < 1 or n_test_good < 0 or n_test_bad < 0 or size < 32:
        raise ReconadError("make_parts needs n_train >= 1, n_test_good >= 0, n_test_bad >= 0 and size >= 32")
    folder = Path(root) / category
    _prepare(folder)
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test_good)):
        for i in range(n):
            _save(_part(rng, size)[0], folder / split / "good" / f"{i:03d}.png")
    counts = dict.fromkeys(DEFECTS, 0)
    for i in range(n_test_bad):
        kind = DEFECTS[i % len(DEFECTS)]
        img, on_part, centre = _part(rng, size)
        mask = _defect(rng, img, on_part, centre, kind)
        k = counts[kind]
        counts[kind] += 1
        _save(img, folder / "test" / kind / f"{k:03d}.png")
        _save(mask.astype(np.float64) * 255, folder / "ground_truth" / kind / f"{k:03d}_mask.png")
    return folder
