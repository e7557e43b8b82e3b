"""How many of the exact top-K candidate atoms does SGFR's IVF search find? No labels: good images only.

    .venv/bin/python benchmarks/sgfr_recall.py [--data mvtec:../shared/data/mvtec_ad ...]

Per category, SGFR (defaults, at a 2 % and a 10 % bank) is fitted on the first 90 % of the good training
images; every 7th patch of the other 10 % is searched for its ``n_candidates`` (16) nearest atoms by |cos|,
exactly and with the fitted IVF index at ``nprobe`` 8 (the default), 16 and 32. Reported: the share of the
exact candidates found (top-K recall).
"""

from __future__ import annotations

import argparse

from sgfr_defaults import DATA

from reconad.data.sources import load_sources
from reconad.features.cache import FeatureCache
from reconad.features.extractor import FeatureExtractor
from reconad.models.knn import NearestNeighbors
from reconad.models.sgfr import SGFR
from reconad.pipeline import extract
from reconad.runtime import keep_freed_memory


def main() -> None:
    keep_freed_memory()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", nargs="+", default=DATA)
    args = ap.parse_args()
    extractor = FeatureExtractor()
    cache = FeatureCache(extractor.key())
    print("| category | bank | atoms | IVF lists | recall, nprobe 8 | 16 | 32 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for cat in load_sources(args.data):
        train = extract(cat.train, extractor, cache=cache).features
        cut = int(0.9 * len(train))
        queries = train[cut:].permute(0, 2, 3, 1).reshape(-1, train.shape[1])[::7]
        for ratio in (0.02, 0.1):
            model = SGFR(sampling_ratio=ratio).fit(train[:cut])
            k, bank, centroids = model.n_candidates, model.bank_, model.centroids_
            _, exact = NearestNeighbors(bank, None, 0, model.metric).search(queries, k)
            recalls = []
            for nprobe in (8, 16, 32):
                _, found = NearestNeighbors(bank, centroids, nprobe, model.metric).search(queries, k)
                recalls.append((found.unsqueeze(2) == exact.unsqueeze(1)).any(dim=2).float().mean().item())
            print(
                f"| {cat.name} | {ratio:.0%} | {len(bank):,} | {len(centroids)} | "
                + " | ".join(f"{r:.3f}" for r in recalls)
                + " |",
                flush=True,
            )


if __name__ == "__main__":
    main()
