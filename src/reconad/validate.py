"""Score a model on the training-only validation set of :mod:`reconad.data.validation`.

The criterion that chooses defaults without test labels: the mean over categories of pixel AUROC and AUPRO,
all corruptions pooled. Per-category models are fitted on each category's fit images, a unified model once
on those of every category; the model's seed is its own parameter (default 0), independent of the
validation set's seed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from reconad.data import CategoryData
from reconad.data.validation import ValidationImages, foreign_textures, validation_images
from reconad.errors import ReconadError
from reconad.features.cache import FeatureCache
from reconad.features.extractor import FeatureExtractor
from reconad.metrics import evaluate
from reconad.pipeline import DEFAULT_SCORING, Training, extract, fit_models, new_model, score_features
from reconad.runfolder import UNIFIED

KEYS = ("image_auroc", "pixel_auroc", "pixel_aupro")


@dataclass
class ValidationSet:
    """A category's validation images and their features, and the features of its fit images."""

    images: ValidationImages
    features: Tensor  # [N, C, H, W] of ``images.images``
    train: Tensor  # [M, C, H, W] of ``images.fit``


def validation_sets(
    data: list[CategoryData],
    extractor: FeatureExtractor,
    cache: FeatureCache | None,
    seed: int,
    foreign: bool = False,
) -> dict[str, ValidationSet]:
    """Per category its :class:`ValidationSet` (``foreign``: with the foreign-texture corruption)."""
    size = extractor.image_size
    if not isinstance(size, int):
        raise ReconadError(f"the validation sets are square: choose a square image size, not {size}")
    textures = foreign_textures(data, size, seed) if foreign else {}
    sets = {}
    for cat in data:
        images = validation_images(cat, size, seed, textures.get(cat.name))
        stack = torch.from_numpy(images.images)
        features = torch.cat([extractor(stack[i : i + 16]) for i in range(0, len(stack), 16)])
        sets[cat.name] = ValidationSet(images, features, extract(images.fit, extractor, cache=cache).features)
    return sets


def validation_metrics(images: ValidationImages, scores: Tensor, maps: Tensor) -> dict[str, Any]:
    """Image AUROC, pixel AUROC and AUPRO, and the same per corruption (``by_kind``: the clean images and
    that corruption's copies; a diagnostic, the criterion pools them)."""
    labels, masks, image_scores, pixels = images.labels, images.masks, scores.numpy(), maps.numpy()
    pooled = evaluate(labels, image_scores, masks, pixels)
    by_kind = {}
    for kind in dict.fromkeys(images.kinds[labels == 1]):
        keep = (images.kinds == "good") | (images.kinds == kind)
        m = evaluate(labels[keep], image_scores[keep], masks[keep], pixels[keep])
        by_kind[str(kind)] = {key: m[key] for key in KEYS}
    return {**{key: pooled[key] for key in KEYS}, "by_kind": by_kind}


def criterion(per_category: dict[str, dict[str, Any]]) -> float:
    """The mean over categories of (pixel AUROC + AUPRO) / 2."""
    return float(np.mean([(m["pixel_auroc"] + m["pixel_aupro"]) / 2 for m in per_category.values()]))


def validate(
    model_name: str,
    sets: dict[str, ValidationSet],
    extractor: FeatureExtractor,
    params: dict[str, Any] | None = None,
    training: Training | None = None,
) -> dict[str, Any]:
    """Fit ``model_name`` with ``params`` on the fit images and score it on every validation set:
    ``{"params", "fit_seconds", "categories": {NAME: metrics}, "criterion"}``. ``training``: how a unified
    model trains (checkpoints, progress)."""
    probe = new_model(model_name, params or {}, extractor)
    start = time.perf_counter()
    fitted = fit_models(probe, {name: s.train for name, s in sets.items()}, training)
    models = {name: fitted.get(UNIFIED) or fitted[name] for name in sets}
    fit_seconds = time.perf_counter() - start
    per_category = {}
    for name, s in sets.items():
        maps, scores = score_features(models[name], s.features, extractor.image_size, DEFAULT_SCORING)
        per_category[name] = validation_metrics(s.images, scores, maps)
    return {
        "params": probe.get_config(),
        "fit_seconds": fit_seconds,
        "categories": per_category,
        "criterion": criterion(per_category),
    }
