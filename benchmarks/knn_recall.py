"""How exact is PatchCore's IVF nearest-atom search, and how fast? No labels: held-back good images only.

    python benchmarks/knn_recall.py --data mvtec:PATH [mvtec3d:PATH ...] [--nprobe 1 2 4 8 16]

Per category: PatchCore's default 10 % coreset bank is built from the model part of the training images
(the same seeded hold-out as ``reconad fit``); the held-back good images' patches are searched exactly
(FAISS flat) and with IVF (``2√M`` cells, seeded k-means) probing ``nprobe`` cells. Reported: recall@1 (the
exact nearest atom found), the mean and 99.9th percentile of the relative error of the nearest distance,
and milliseconds per image (1,024 patches) of each search. PatchCore's default ``nprobe="auto"`` picks, at
fit time, the smallest power of two reaching recall@1 0.99 on training patches its coreset left out; this
table checks that choice on images the model never saw.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from reconad.data.sources import load_sources
from reconad.features.cache import FeatureCache
from reconad.features.extractor import FeatureExtractor
from reconad.models.bank.knn import NearestNeighbors, ivf_lists, train_centroids
from reconad.models.bank.patchcore import PatchCore
from reconad.pipeline import extract, split_holdout
from reconad.runtime import keep_freed_memory


def timed_search(index: NearestNeighbors, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    start = time.perf_counter()
    d, i = index.search(queries, 1)
    return d[:, 0].clamp_min(0).sqrt(), i[:, 0], time.perf_counter() - start


def main() -> None:
    keep_freed_memory()  # as the CLI does (reconad.runtime)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", nargs="+", required=True, help="FORMAT:PATH sources")
    ap.add_argument("--nprobe", nargs="+", type=int, default=[1, 2, 4, 8, 16])
    args = ap.parse_args()
    extractor = FeatureExtractor()
    cache = FeatureCache(extractor.key(), None)
    print("| category | atoms | cells | nprobe | recall@1 | mean rel. error | p99.9 rel. error | ms/image |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for cat in load_sources(args.data):
        fit_part, held = split_holdout(cat.train, 0.1, 0)
        bank = PatchCore().fit(extract(fit_part, extractor, cache=cache).features).bank_
        q = extract(held, extractor, cache=cache).features
        queries = q.permute(0, 2, 3, 1).reshape(-1, q.shape[1])
        exact_d, exact_i, exact_s = timed_search(NearestNeighbors(bank), queries)
        lists = ivf_lists(len(bank))
        centroids = train_centroids(bank, lists, 0)
        per_image = 1000 * 1024 / len(queries)
        print(f"| {cat.name} | {len(bank)} | — | exact | 1 | 0 | 0 | {exact_s * per_image:.1f} |")
        for nprobe in args.nprobe:
            d, i, s = timed_search(NearestNeighbors(bank, centroids, nprobe), queries)
            rel = ((d - exact_d) / exact_d.clamp_min(1e-6)).numpy()
            recall = float((i == exact_i).float().mean())
            print(
                f"| {cat.name} | {len(bank)} | {lists} | {nprobe} | {recall:.4f} "
                f"| {rel.mean():.2e} | {np.quantile(rel, 0.999):.2e} | {s * per_image:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
