"""The shared patch features against official PatchCore's feature recipe (amazon-science/
patchcore-inspection): its patch aggregation and its centre crop, measured with PatchCore and SGFR on the
test splits.

    .venv/bin/python benchmarks/patchcore_features.py --data FORMAT:PATH [--data ...] \
        [--model patchcore] [--model sgfr] [--features ours|aggregation|crop ...] [--category C ...]

Every row fits the model per category as ``reconad fit`` does (seed 0, default parameters, 256 px); each
row's means over the categories are printed as soon as it is measured, every row per category at the end:

* **ours**: the library's features (each level's 3×3 average per channel, zero border counted, level 3
  upsampled to level 2's grid, concatenated: 152 values on EfficientNet-Lite0), scored on the whole image;
* **official aggregation**: each level's 3×3 patches unfolded (``C·9`` values, zero border), level 3's
  unfolded patches upsampled to level 2's grid, each level's vector adaptive-average-pooled to 1024, the
  levels' two vectors stacked and pooled to 1024;
* **ours, centre 224**: the maps of "ours", scored on the centre 224×224 of the 256 px image only (masks
  cropped alike; image score = the cropped map's maximum): the region the official evaluation sees;
* **official crop**: features of the centre 224×224 crop of the 256 px image (a 28×28 grid), maps at
  224 px, the same region scored.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reconad import metrics
from reconad.data.sources import load_sources
from reconad.features.cache import FeatureCache
from reconad.features.extractor import FeatureExtractor, PatchFeatures
from reconad.pipeline import extract, fit, score_features
from reconad.runtime import keep_freed_memory
from reconad.scoring import image_scores

SIZE, CROP, DIM = 256, 224, 1024
KEYS = ("image_auroc", "pixel_auroc", "pixel_aupro", "pixel_ap")
KINDS = ("ours", "aggregation", "crop")


class OfficialAggregation(nn.Module):
    """uint8 images → ``[N, DIM, h, w]`` features aggregated as official PatchCore's ``PatchMaker``,
    ``Preprocessing`` (``MeanMapper``) and ``Aggregator`` do, on ``net``'s backbone and normalisation."""

    def __init__(self, net: PatchFeatures, dim: int = DIM) -> None:
        super().__init__()
        self.net, self.dim = net, dim

    def forward(self, images: Tensor) -> Tensor:
        x = (images.permute(0, 3, 1, 2).float() - self.net.mean) / self.net.std
        levels = self.net.backbone(x)
        n, (h, w) = images.shape[0], levels[0].shape[-2:]
        pooled = []
        for level in levels:
            c = level.shape[1]
            # [n, C·9, h_l, w_l], channel-major (C, 3, 3) as the official patches are flattened
            patches = F.unfold(level, 3, padding=1).view(n, c * 9, *level.shape[-2:])
            if patches.shape[-2:] != (h, w):
                patches = F.interpolate(patches, size=(h, w), mode="bilinear", align_corners=False)
            flat = patches.permute(0, 2, 3, 1).reshape(n * h * w, 1, c * 9)
            pooled.append(F.adaptive_avg_pool1d(flat, self.dim))
        stacked = torch.cat(pooled, dim=2)  # [n·h·w, 1, levels·dim]: the Aggregator's reshape of the stack
        out = F.adaptive_avg_pool1d(stacked, self.dim)
        return out.view(n, h, w, self.dim).permute(0, 3, 1, 2).contiguous()


class CentreCrop(nn.Module):
    """Runs ``net`` on the centre ``crop``×``crop`` of each image."""

    def __init__(self, net: nn.Module, crop: int = CROP) -> None:
        super().__init__()
        self.net, self.crop = net, crop

    def forward(self, images: Tensor) -> Tensor:
        m = (images.shape[1] - self.crop) // 2
        return self.net(images[:, m : m + self.crop, m : m + self.crop])


def centre(a: Any, size: int = CROP) -> Any:
    """The centre ``size``×``size`` of ``[N, H, W]`` maps or masks."""
    m = (a.shape[-1] - size) // 2
    return a[..., m : m + size, m : m + size]


def variant(kind: str) -> tuple[FeatureExtractor, FeatureCache | None]:
    """The extractor of a feature variant (images still resized to 256 px) and its feature cache."""
    extractor = FeatureExtractor(image_size=SIZE)
    if kind == "ours":
        return extractor, FeatureCache(extractor.key(), None)
    extractor.net = OfficialAggregation(extractor.net) if kind == "aggregation" else CentreCrop(extractor.net)
    return extractor, None


def row_metrics(labels: np.ndarray, maps: Tensor, masks: np.ndarray) -> dict[str, float]:
    m = metrics.evaluate(labels, image_scores(maps).numpy(), masks, maps.numpy())
    return {k: m[k] for k in KEYS}


def variant_rows(model: str, kind: str, data: list) -> dict[str, dict[str, dict[str, float]]]:
    """Row label → category → metrics, for one model on one feature variant."""
    extractor, cache = variant(kind)
    run = fit(model, data, extractor, cache=cache, seed=0)
    rows: dict[str, dict[str, dict[str, float]]] = {}
    for cat in data:
        test = extract(cat.test, extractor, cache=cache, with_masks=True)
        labels = np.array([s.label for s in cat.test])
        size = CROP if kind == "crop" else SIZE
        maps, _ = score_features(run.model_for(cat.name), test.features, size, run.config["scoring"])
        if kind == "ours":
            rows.setdefault("ours", {})[cat.name] = row_metrics(labels, maps, test.masks)
            rows.setdefault("ours, centre 224", {})[cat.name] = row_metrics(
                labels, centre(maps), centre(test.masks)
            )
        elif kind == "aggregation":
            rows.setdefault("official aggregation", {})[cat.name] = row_metrics(labels, maps, test.masks)
        else:
            rows.setdefault("official crop", {})[cat.name] = row_metrics(labels, maps, centre(test.masks))
    return rows


def main() -> None:
    keep_freed_memory()  # as the CLI does (reconad.runtime)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", action="append", required=True, help="FORMAT:PATH; repeatable")
    ap.add_argument("--category", action="append", help="restrict to these categories; repeatable")
    ap.add_argument("--model", action="append", help="patchcore and / or sgfr (default: both)")
    ap.add_argument("--features", action="append", choices=KINDS, help="feature variants (default: all)")
    args = ap.parse_args()
    data = load_sources(args.data, args.category)
    print("| model | features | image AUROC | pixel AUROC | AUPRO | pixel AP |\n|---|---|" + "---:|" * 4)
    per_category = []
    for model in args.model or ("patchcore", "sgfr"):
        for kind in args.features or KINDS:
            for label, cats in variant_rows(model, kind, data).items():
                means = [np.mean([m[k] for m in cats.values()]) for k in KEYS]
                print(f"| {model} | {label} | " + " | ".join(f"{v:.4f}" for v in means) + " |", flush=True)
                per = "; ".join(f"{c} " + " / ".join(f"{m[k]:.4f}" for k in KEYS) for c, m in cats.items())
                per_category.append(f"- {model}, {label}: {per}")
    print("\nPer category (image AUROC / pixel AUROC / AUPRO / pixel AP):\n\n" + "\n".join(per_category))


if __name__ == "__main__":
    main()
