"""Heat-map overlays: an anomaly map drawn over its image, scaled so the decision threshold sits mid-scale.

The overlay itself is torch- and matplotlib-free (:mod:`reconad.image_runtime`, which an exported model
ships); this module adds the ground-truth outline of the report.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from reconad.atomic import atomic_file
from reconad.data import load_resized
from reconad.image_runtime import JET, Decoding, heatmap_overlay, normalise
from reconad.pipeline import CategoryResult

__all__ = ["JET", "heatmap_overlay", "mask_outline", "normalise", "overlay_png", "write_overlays"]


def overlay_png(image: np.ndarray, amap: np.ndarray, threshold: float, normal_level: float) -> bytes:
    """:func:`heatmap_overlay` as PNG bytes (zlib level 1: 4× faster to encode than level 6)."""
    from PIL import Image

    png = io.BytesIO()
    Image.fromarray(heatmap_overlay(image, amap, threshold, normal_level)).save(
        png, format="PNG", compress_level=1
    )
    return png.getvalue()


def mask_outline(
    image: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int] = (255, 0, 0)
) -> np.ndarray:
    """``image`` with the boundary of a boolean ``mask`` drawn in ``colour``."""
    from skimage.segmentation import find_boundaries

    out = image.copy()
    out[find_boundaries(mask, mode="inner")] = colour
    return out


def write_overlays(folder: Path, config: dict[str, Any], results: Mapping[str, CategoryResult]) -> Path:
    """About eight overlays per category of a test (ground truth outlined in red) into ``folder``."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    decoding = Decoding.of_features(config.get("features", {}))
    for name, r in results.items():
        cat = config["categories"][name]
        for i in [*range(len(r.samples))][:: max(1, len(r.samples) // 8)]:
            image, _ = load_resized(r.samples[i], tuple(r.maps.shape[-2:]), decoding)
            picture = mask_outline(
                heatmap_overlay(image, r.maps[i], cat["threshold"], cat["normal_level"]), r.masks[i]
            )
            with atomic_file(
                folder / f"{name}_{r.samples[i].defect}_{r.samples[i].path.stem}.png", "wb"
            ) as f:
                Image.fromarray(picture).save(f, format="PNG")
    return folder
