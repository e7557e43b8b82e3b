"""Heat-map overlays: an anomaly map drawn over its image, scaled so the decision threshold sits mid-scale.

The overlay itself is torch- and matplotlib-free (:mod:`reconad.imagefiles`, which an exported model ships);
this module adds the ground-truth outline of the report.
"""

from __future__ import annotations

import io

import numpy as np

from reconad.imagefiles import JET, heatmap_overlay, normalise

__all__ = ["JET", "heatmap_overlay", "mask_outline", "normalise"]


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
