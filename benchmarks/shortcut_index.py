"""The shortcut index of fitted runs: mean reconstruction error inside the defect masks ÷ mean error on
defect-free pixels, per category of each run's test split (higher = anomalies were reconstructed worse).

    .venv/bin/python benchmarks/shortcut_index.py RUN [RUN ...]

For runs made by ``reconad fit`` / ``reconad bench`` (any model; the index is meant for the reconstruction
models). Test features come from the feature cache, data from the paths the run was fitted on. Prints a
markdown table: per run one row per score, one column per category, and their mean.

Each model's own score (``own``: RLR's MSE + (1 − cos) on standardised features, UniAD's L2 norm on raw ones)
is not comparable across models: a norm is the square root of a squared error and halves the index's
logarithm. Every unified model is therefore also scored by one common score (``common``,
:func:`common_errors`): per token, the mean over channels of the squared error between the target the
network reconstructs and its reconstruction, each channel divided by its target's standard deviation over the
category's test tokens. Bank models have no reconstruction: their ``common`` row is left out.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from reconad.data.sample import CategoryData
from reconad.data.sources import load_sources
from reconad.features.cache import FeatureCache
from reconad.features.extractor import FeatureExtractor
from reconad.pipeline import Extracted, extract
from reconad.runs import Run, load_run
from reconad.runtime import keep_freed_memory
from reconad.scoring import anomaly_maps

Extractors = dict[str, tuple[FeatureExtractor, FeatureCache]]
BATCH = 32


def _joined(parts: list[Tensor] | list[list[Tensor]]) -> Tensor | list[Tensor]:
    """Batches of patch scores (or of per-level maps, the unified models) joined along the images."""
    if isinstance(parts[0], Tensor):
        return torch.cat(parts)
    return [torch.cat(level) for level in zip(*parts, strict=True)]


def scored_test_splits(
    run: Run, extractor: FeatureExtractor, cache: FeatureCache, *, with_masks: bool = False
) -> Iterator[tuple[CategoryData, Extracted, Tensor | list[Tensor]]]:
    """Per category of ``run``: its data, its test split's features (and masks with ``with_masks``) read from
    the data the run was fitted on (features from the cache), and the model's ``predict`` on them, in batches
    of :data:`BATCH`."""
    for name, info in run.categories.items():
        cat = next(c for c in load_sources([info["source"]]) if c.name == name)
        test = extract(cat.test, extractor, cache=cache, with_masks=with_masks)
        model = run.model_for(name)
        parts = [model.predict(test.features[i : i + BATCH]) for i in range(0, len(test.features), BATCH)]
        yield cat, test, _joined(parts)


def common_errors(pairs: list[tuple[Tensor, Tensor]], grids: list[tuple[int, int]]) -> list[Tensor]:
    """The common score of each network's (target, reconstruction) tokens ``[N, h·w, C]`` (one category's
    test split), as a map ``[N, h, w]`` on its grid: the squared error per channel in units of that channel's
    standard deviation over the split's targets, averaged over the channels."""
    maps = []
    for (target, rec), hw in zip(pairs, grids, strict=True):
        scale = target.flatten(0, 1).double().std(dim=0).clamp_min(1e-12)
        maps.append(((rec - target).double() / scale).pow(2).mean(dim=-1).float().view(-1, *hw))
    return maps


def shortcut_index(maps: torch.Tensor, masks: np.ndarray) -> float | None:
    """Mean error inside defect masks ÷ mean error on defect-free pixels (``maps``: the model's errors resized
    to the mask size as the library resizes them, no smoothing); ``None`` without defect pixels."""
    m = torch.from_numpy(masks)
    if not m.any():
        return None
    return float(maps[m].mean() / maps[~m].mean())


def run_extractor(run: Run, extractors: Extractors) -> tuple[FeatureExtractor, FeatureCache]:
    """The backbone (and its feature cache) ``run`` was fitted on; ``extractors`` keeps one per distinct
    features config, shared by the runs that use it."""
    key = json.dumps(run.config["features"], sort_keys=True)
    if key not in extractors:
        extractor = FeatureExtractor.from_config(run.config["features"])
        extractors[key] = extractor, FeatureCache(extractor.key(), None)
    return extractors[key]


def run_index(path: Path, extractors: Extractors) -> dict[str, dict[str, float]]:
    """Per score (``own``, and ``common`` for the unified models), per category of the run, its shortcut index
    on that category's test split."""
    run = load_run(path)
    extractor, cache = run_extractor(run, extractors)
    out: dict[str, dict[str, float]] = {"own": {}, "common": {}}
    for cat, test, patches in scored_test_splits(run, extractor, cache, with_masks=True):
        model = run.model_for(cat.name)
        scores = {"own": patches}
        if hasattr(model, "reconstructions"):
            scores["common"] = common_errors(model.reconstructions(test.features), model.level_hw_)
        for score, errors in scores.items():
            maps = anomaly_maps(errors, test.masks.shape[-2:], 0, model.align_corners)
            if (index := shortcut_index(maps, test.masks)) is not None:
                out[score][cat.name] = index
    return {score: r for score, r in out.items() if r}


def main() -> None:
    keep_freed_memory()  # as the CLI does (reconad.runtime)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", type=Path, nargs="+")
    args = ap.parse_args()
    extractors: Extractors = {}
    rows = {(str(p), score): r for p in args.runs for score, r in run_index(p, extractors).items()}
    cats = list(dict.fromkeys(c for r in rows.values() for c in r))
    print("| run | score | " + " | ".join(cats) + " | mean |\n|---|---|" + "---:|" * (len(cats) + 1))
    for (run, score), r in rows.items():
        cells = " | ".join(f"{r[c]:.3f}" if c in r else "—" for c in cats)
        print(f"| {run} | {score} | {cells} | {np.mean(list(r.values())):.3f} |")


if __name__ == "__main__":
    main()
