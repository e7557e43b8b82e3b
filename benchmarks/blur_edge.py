"""What the Gaussian blur's border rule does to fitted runs' metrics: ours (reflect without repeating the
edge, ``d c b | a b c d | c b a``: scipy's mode ``mirror``) against ``scipy.ndimage.gaussian_filter``'s
default ``reflect`` (edge repeated, ``c b a | a b c d | d c b``), which the official PatchCore and RLR code
blur with. Only the maps' border band (4σ = 16 px at 256 px) can differ.

    .venv/bin/python benchmarks/blur_edge.py RUN [RUN ...]

Each run is scored on its categories' test splits (features from the cache, data from the paths it was
fitted on) twice, once per rule; prints a Markdown table of the three-category means and their differences.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import gaussian_filter1d

from reconad import pipeline, scoring
from reconad.data.sources import load_sources
from reconad.features.cache import FeatureCache
from reconad.features.extractor import FeatureExtractor
from reconad.metrics import METRIC_KEYS
from reconad.runs import load_run
from reconad.runtime import keep_freed_memory

OURS = scoring.blur_matrix


def edge_repeated_blur_matrix(n: int, sigma: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """:func:`reconad.scoring.blur_matrix` as scipy's own ``reflect`` blur gives it: its column ``j`` is the
    blurred unit vector ``e_j`` (radius 4σ, as ours)."""
    blurred = gaussian_filter1d(np.eye(n), sigma, axis=0, mode="reflect", truncate=4.0)
    return torch.from_numpy(blurred).to(dtype)


def means(path: Path, blur_matrix) -> dict[str, float]:
    """The run's metrics averaged over its categories, its maps blurred with ``blur_matrix``."""
    scoring.blur_matrix = blur_matrix
    scoring.map_operator.cache_clear()
    run = load_run(path)
    extractor = FeatureExtractor.from_config(run.config["features"])
    data = load_sources(sorted({c["source"] for c in run.categories.values()}), list(run.categories))
    results = pipeline.evaluate(run, data, extractor, cache=FeatureCache(extractor.key(), None))
    return {k: float(np.mean([r.metrics[k] for r in results.values()])) for k in METRIC_KEYS}


def main() -> None:
    keep_freed_memory()  # as the CLI does (reconad.runtime)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", type=Path, nargs="+")
    args = ap.parse_args()
    print("| run | border | " + " | ".join(METRIC_KEYS) + " |\n|---|---|" + "---:|" * len(METRIC_KEYS))
    for path in args.runs:
        ours, scipy_reflect = means(path, OURS), means(path, edge_repeated_blur_matrix)
        for name, m in (("ours (mirror)", ours), ("scipy reflect", scipy_reflect)):
            print(f"| {path} | {name} | " + " | ".join(f"{m[k]:.4f}" for k in METRIC_KEYS) + " |")
        diff = " | ".join(f"{scipy_reflect[k] - ours[k]:+.4f}" for k in METRIC_KEYS)
        print(f"| {path} | reflect − ours | {diff} |", flush=True)


if __name__ == "__main__":
    main()
