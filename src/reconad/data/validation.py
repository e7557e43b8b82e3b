"""A labelled validation set made from good training images only, to choose settings without test labels.

Per category a seeded 10 % of the good training images (at least 16) is held out; each held-out image is kept
clean and also corrupted twice with known masks: a CutPaste rectangle from another training image (Li et al.,
CVPR 2021) and an elliptic brightness blotch. Optionally a third copy gets a *foreign texture*: an irregular
region blended with another category's training image, the way DRAEM pastes outside textures (neither of the
first two brings features from outside the category). The model is fitted on the other training images; the
test split is never read.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

from reconad.data.imageio import load_resized
from reconad.data.sample import CategoryData, Sample
from reconad.errors import ReconadError

MIN_HELD_OUT = 16
TEXTURES_PER_CATEGORY = 8


@dataclass
class ValidationImages:
    """One category's validation set: the clean held-out images first, then their corrupted copies."""

    fit: list[Sample]  # the training images the model is fitted on
    images: np.ndarray  # [N, S, S, 3] uint8
    masks: np.ndarray  # [N, S, S] bool
    labels: np.ndarray  # [N] 0 clean, 1 corrupted
    kinds: np.ndarray  # [N] "good", "cutpaste", "blotch" or "foreign"
    twins: np.ndarray  # [N] index of each image's clean original (its own index for the clean ones)


def cutpaste(img: np.ndarray, donor: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A rectangle (10–25 % of the side) from ``donor`` pasted at a random place of ``img``."""
    s = img.shape[0]
    h, w = rng.integers(int(0.1 * s), int(0.25 * s), 2)
    y0, x0 = rng.integers(0, s - h), rng.integers(0, s - w)
    y1, x1 = rng.integers(0, s - h), rng.integers(0, s - w)
    out, mask = img.copy(), np.zeros((s, s), bool)
    out[y0 : y0 + h, x0 : x0 + w] = donor[y1 : y1 + h, x1 : x1 + w]
    mask[y0 : y0 + h, x0 : x0 + w] = True
    return out, mask


def blotch(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """An elliptic region (radii 5–15 % of the side) darkened ×0.5–0.75 or brightened ×1.3–1.6."""
    s = img.shape[0]
    cy, cx = rng.uniform(0.15, 0.85, 2) * s
    ry, rx = rng.uniform(0.05, 0.15, 2) * s
    yy, xx = np.mgrid[:s, :s]
    mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    factor = rng.uniform(0.5, 0.75) if rng.random() < 0.5 else rng.uniform(1.3, 1.6)
    out = img.astype(np.float32)
    out[mask] *= factor
    return np.clip(out, 0, 255).astype(np.uint8), mask


def foreign_texture(
    img: np.ndarray, texture: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """An irregular region (smooth noise, σ 3–8 px, thresholded at its median inside an ellipse of radii
    8–20 % of the side) blended with ``texture`` (rotated by k·90°) at opacity 0.3–1: a DRAEM-style
    anomaly whose features come from outside the category."""
    s = img.shape[0]
    cy, cx = rng.uniform(0.2, 0.8, 2) * s
    ry, rx = rng.uniform(0.08, 0.2, 2) * s
    yy, xx = np.mgrid[:s, :s]
    inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    noise = gaussian_filter(rng.standard_normal((s, s)), rng.uniform(3, 8))
    mask = inside & (noise > np.median(noise[inside]))
    beta = rng.uniform(0.3, 1.0)
    tex = np.rot90(texture, int(rng.integers(4))).astype(np.float32)
    out = img.astype(np.float32)
    out[mask] = (1 - beta) * out[mask] + beta * tex[mask]
    return np.clip(out, 0, 255).astype(np.uint8), mask


def foreign_textures(
    data: list[CategoryData], size: int, seed: int, per_category: int = TEXTURES_PER_CATEGORY
) -> dict[str, list[np.ndarray]]:
    """Per category, ``per_category`` seeded training images of each *other* category (the textures of
    :func:`foreign_texture`); training images only, never a test image."""
    if len(data) < 2:
        raise ReconadError("foreign textures come from the other categories: give at least two categories")
    rng = np.random.default_rng(seed)
    picked = {}
    for c in data:
        if len(c.train) < per_category:
            raise ReconadError(
                f"category {c.name}: foreign textures need {per_category} good training images, "
                f"found {len(c.train)}"
            )
        chosen = rng.choice(len(c.train), per_category, replace=False)
        picked[c.name] = [load_resized(c.train[i], size)[0] for i in chosen]
    return {name: [img for other, imgs in picked.items() if other != name for img in imgs] for name in picked}


def validation_images(
    category: CategoryData, size: int, seed: int, textures: list[np.ndarray] | None = None
) -> ValidationImages:
    """The validation set of ``category`` at ``size`` px. With ``textures`` (:func:`foreign_textures`), a
    third corruption drawn from its own generator, so the first two are the same with or without it."""
    rng = np.random.default_rng(seed)
    train = list(category.train)
    n_val = max(MIN_HELD_OUT, round(0.1 * len(train)))
    if len(train) < 2 * n_val:  # every held-out image takes its CutPaste donor from a different fit image
        raise ReconadError(
            f"category {category.name}: the validation set needs at least {2 * n_val} good training "
            f"images, found {len(train)}"
        )
    order = rng.permutation(len(train))
    val, fit = [train[i] for i in order[:n_val]], [train[i] for i in order[n_val:]]
    clean = [load_resized(s, size)[0] for s in val]
    donors = [load_resized(fit[i], size)[0] for i in rng.choice(len(fit), len(val), replace=False)]
    images, masks = list(clean), [np.zeros((size, size), bool)] * len(clean)
    for img, donor in zip(clean, donors):
        for out, mask in (cutpaste(img, donor, rng), blotch(img, rng)):
            images.append(out)
            masks.append(mask)
    kinds = ["good"] * len(clean) + ["cutpaste", "blotch"] * len(clean)
    twins = [*range(len(clean)), *(i for i in range(len(clean)) for _ in range(2))]
    if textures:
        trng = np.random.default_rng([seed, 1])
        for i, img in enumerate(clean):
            out, mask = foreign_texture(img, textures[trng.integers(len(textures))], trng)
            images.append(out)
            masks.append(mask)
            kinds.append("foreign")
            twins.append(i)
    return ValidationImages(
        fit=fit,
        images=np.stack(images),
        masks=np.stack(masks),
        labels=np.array([0] * len(clean) + [1] * (len(images) - len(clean))),
        kinds=np.array(kinds),
        twins=np.array(twins),
    )
