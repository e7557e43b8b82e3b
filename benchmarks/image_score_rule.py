"""What the image score's rule does to per-category runs' image metrics: ours (the maximum of the blurred
anomaly map, the map the pixel metrics read) against official PatchCore's (the maximum of the patch scores,
before resizing and blur).

    .venv/bin/python benchmarks/image_score_rule.py RUN [RUN ...]

Each run (PatchCore or SGFR) is scored on its categories' test splits (features from the cache, data from
the paths it was fitted on); prints a Markdown table of the three-category means of image AUROC and image
F1-max under each rule.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from rescoring import scored_test_splits

from reconad.features.cache import FeatureCache
from reconad.features.extractor import FeatureExtractor
from reconad.metrics import image_auroc, image_f1_max
from reconad.runs import load_run
from reconad.runtime import keep_freed_memory
from reconad.scoring import anomaly_maps, image_scores


def rule_metrics(path: Path) -> dict[str, dict[str, float]]:
    """Rule → the run's mean image AUROC and image F1-max over its categories."""
    run = load_run(path)
    extractor = FeatureExtractor.from_config(run.config["features"])
    cache, sigma = FeatureCache(extractor.key(), None), run.config["scoring"]["sigma"]
    per_rule: dict[str, list[tuple[float, float]]] = {"map maximum (ours)": [], "patch maximum": []}
    for cat, _, patches in scored_test_splits(run, extractor, cache):
        model, size = run.model_for(cat.name), extractor.image_size
        maps = anomaly_maps(patches, size, sigma, model.align_corners)
        labels = np.array([s.label for s in cat.test])
        for rule, scores in zip(
            per_rule,
            (image_scores(maps, run.config["scoring"]["reduce"]), patches.flatten(1).amax(1)),
            strict=True,
        ):
            s = scores.numpy()
            per_rule[rule].append((image_auroc(labels, s), image_f1_max(labels, s)))
    return {
        rule: dict(zip(("image_auroc", "image_f1_max"), np.mean(v, axis=0), strict=True))
        for rule, v in per_rule.items()
    }


def main() -> None:
    keep_freed_memory()  # as the CLI does (reconad.runtime)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", type=Path, nargs="+")
    args = ap.parse_args()
    print("| run | image score | image AUROC | image F1-max |\n|---|---|---:|---:|")
    for path in args.runs:
        for rule, m in rule_metrics(path).items():
            print(f"| {path} | {rule} | {m['image_auroc']:.4f} | {m['image_f1_max']:.4f} |", flush=True)


if __name__ == "__main__":
    main()
