"""Heat-map overlays: an anomaly map drawn over its image, scaled so the decision threshold sits mid-scale."""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps


def normalise(amap: np.ndarray, threshold: float, normal_level: float) -> np.ndarray:
    """Map values to [0, 1]: ``normal_level`` (mean map of good images) → 0, ``threshold`` → 0.5."""
    span = max(threshold - normal_level, 1e-12)
    return np.clip((amap - normal_level) / (2 * span), 0.0, 1.0)


def heatmap_overlay(
    image: np.ndarray, amap: np.ndarray, threshold: float, normal_level: float, alpha: float = 0.5
) -> np.ndarray:
    """``image`` (H×W×3 uint8) blended with a jet-coloured ``amap`` (H×W); returns H×W×3 uint8."""
    colours = colormaps["jet"](normalise(amap, threshold, normal_level))[..., :3]
    blended = (1 - alpha) * image.astype(np.float32) / 255 + alpha * colours
    return (np.clip(blended, 0, 1) * 255).round().astype(np.uint8)


def mask_outline(
    image: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int] = (255, 0, 0)
) -> np.ndarray:
    """``image`` with the boundary of a boolean ``mask`` drawn in ``colour``."""
    from skimage.segmentation import find_boundaries

    out = image.copy()
    out[find_boundaries(mask, mode="inner")] = colour
    return out
