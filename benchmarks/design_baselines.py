"""The two simple baselines of ../shared/DESIGN.md on our features, beside PatchCore and SGFR.

    .venv/bin/python benchmarks/design_baselines.py mvtec3d:../shared/data/mvtec_3d [mtd:... ...]

Per category, every good training image fitted, the test split scored (the same maps and metrics as
``reconad test``): a kNN distance (k = 1) to a seeded random 10 % of the training patches, and the residual
of a ridge reconstruction from the 10 nearest of those atoms (λ = 1e-3 × the atoms' mean squared norm);
then PatchCore and SGFR at their defaults. A diagnostic of how much reconstruction (mimicking) helps or
hurts on each data set; it chooses nothing.
"""

from __future__ import annotations

import argparse

import faiss
import numpy as np
import torch

from reconad.data.sources import load_sources
from reconad.features.cache import FeatureCache
from reconad.features.extractor import FeatureExtractor
from reconad.metrics import evaluate
from reconad.models.patchcore import PatchCore
from reconad.models.sgfr import SGFR
from reconad.pipeline import extract
from reconad.runtime import keep_freed_memory
from reconad.scoring import anomaly_maps, image_scores


def simple_baselines(train: torch.Tensor, test: torch.Tensor, seed: int = 0) -> dict[str, torch.Tensor]:
    """``[N, h, w]`` patch scores of the kNN and ridge baselines (random 10 % bank)."""
    c, (h, w) = train.shape[1], test.shape[-2:]
    x = train.permute(0, 2, 3, 1).reshape(-1, c).numpy().astype(np.float32)
    bank = x[np.random.default_rng(seed).choice(len(x), len(x) // 10, replace=False)]
    y = test.permute(0, 2, 3, 1).reshape(-1, c).numpy().astype(np.float32)
    index = faiss.IndexFlatL2(c)
    index.add(bank)
    dist, nearest = index.search(y, 10)
    atoms, yt = torch.from_numpy(bank[nearest]), torch.from_numpy(y)  # [M, 10, C], [M, C]
    gram = atoms @ atoms.transpose(1, 2) + 1e-3 * float((bank**2).sum(1).mean()) * torch.eye(10)
    codes = torch.linalg.solve(gram, atoms @ yt.unsqueeze(-1))
    ridge = (yt - (atoms.transpose(1, 2) @ codes).squeeze(-1)).norm(dim=1)
    knn = torch.from_numpy(np.sqrt(np.maximum(dist[:, 0], 0)))
    return {"kNN, random 10 %": knn.view(-1, h, w), "ridge from 10 NN": ridge.view(-1, h, w)}


def main() -> None:
    keep_freed_memory()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", nargs="+", help="FORMAT:PATH sources")
    args = ap.parse_args()
    extractor = FeatureExtractor()
    cache = FeatureCache(extractor.key())
    print("| category | method | image AUROC | pixel AUROC | AUPRO |\n|---|---|---:|---:|---:|")
    for cat in load_sources(args.data):
        train = extract(cat.train, extractor, cache=cache).features
        test = extract(cat.test, extractor, cache=cache, with_masks=True)
        labels = np.array([s.label for s in cat.test])
        patch = simple_baselines(train, test.features)
        for name, model in (("PatchCore", PatchCore()), ("SGFR", SGFR())):
            model.fit(train)
            batches = [model.predict(test.features[i : i + 32]) for i in range(0, len(labels), 32)]
            patch[name] = torch.cat(batches)
        for name, scores in patch.items():
            maps = anomaly_maps(scores.float(), extractor.image_size, 4.0)
            m = evaluate(labels, image_scores(maps).numpy(), test.masks, maps.numpy())
            print(
                f"| {cat.name} | {name} | {m['image_auroc']:.4f} | {m['pixel_auroc']:.4f} | "
                f"{m['pixel_aupro']:.4f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
