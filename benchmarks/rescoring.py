"""What the scripts that re-score fitted runs share: each category's test split, read from the data the run
was fitted on (features from the cache), and the model's patch scores on it."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from reconad.data.sample import CategoryData
from reconad.data.sources import load_sources
from reconad.features.cache import FeatureCache
from reconad.features.extractor import FeatureExtractor
from reconad.pipeline import Extracted, extract
from reconad.runs import Run

BATCH = 32


def _joined(parts: list[Tensor] | list[list[Tensor]]) -> Tensor | list[Tensor]:
    """Batches of patch scores (or of per-level maps, the unified models) joined along the images."""
    if isinstance(parts[0], Tensor):
        return torch.cat(parts)
    return [torch.cat(level) for level in zip(*parts, strict=True)]


def scored_test_splits(
    run: Run, extractor: FeatureExtractor, cache: FeatureCache, *, with_masks: bool = False
) -> Iterator[tuple[CategoryData, Extracted, Tensor | list[Tensor]]]:
    """Per category of ``run``: its data, its test split's features (and masks with ``with_masks``) and the
    model's ``predict`` on them, in batches of :data:`BATCH`."""
    for name, info in run.categories.items():
        cat = next(c for c in load_sources([info["source"]]) if c.name == name)
        test = extract(cat.test, extractor, cache=cache, with_masks=with_masks)
        model = run.model_for(name)
        parts = [model.predict(test.features[i : i + BATCH]) for i in range(0, len(test.features), BATCH)]
        yield cat, test, _joined(parts)
