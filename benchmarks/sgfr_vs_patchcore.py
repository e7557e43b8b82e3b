"""SGFR vs PatchCore on the same cached features: accuracy, bank size, fit and predict cost, sampling sweep.

    .venv/bin/python benchmarks/sgfr_vs_patchcore.py --out runs/sgfr_bench [--threads 2] [--no-sweep]

Per category (bottle, tire, magnetic_tile by default): PatchCore (default: 10 % greedy coreset, k = 1)
and SGFR (defaults) fitted on every good training image, scored on the test split (maps: bilinear +
Gaussian σ = 4, image score = max). Reported: the five metrics, the stored bank (atoms, and bytes of the
state dict), fit seconds, and predict cost of the model alone (cached features in, patch scores out) and
with the backbone's forward added (measured in the same run). The sweep refits both at 1, 2, 5, 10 % of
the training patches, and SGFR with random and greedy-coreset atoms at its default ratio (the sampling
comparison). Hyper-parameters are the models' defaults throughout; nothing is chosen on test labels.
Writes ``OUT/results.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch

from reconad.data.imageio import load_resized
from reconad.data.sources import load_sources
from reconad.features.cache import FeatureCache
from reconad.features.extractor import FeatureExtractor
from reconad.metrics import METRIC_KEYS, evaluate
from reconad.models.patchcore import PatchCore
from reconad.models.sgfr import SGFR
from reconad.pipeline import extract
from reconad.runtime import keep_freed_memory
from reconad.scoring import anomaly_maps, image_scores

DATA = [
    "mvtec:../shared/data/mvtec_ad",
    "mvtec3d:../shared/data/mvtec_3d",
    "mtd:../shared/data/magnetic_tile",
]
SWEEP = (0.01, 0.02, 0.05, 0.1)


def load_features(specs: list[str], cache_dir: Path | None) -> tuple[dict[str, dict[str, Any]], float]:
    """Per category: train/test features, labels, masks; and the backbone's seconds per image."""
    extractor = FeatureExtractor()
    cache = FeatureCache(extractor.key(), cache_dir)
    out: dict[str, dict[str, Any]] = {}
    for cat in load_sources(specs):
        train = extract(cat.train, extractor, cache=cache).features
        test = extract(cat.test, extractor, cache=cache, with_masks=True)
        labels = np.array([s.label for s in cat.test])
        out[cat.name] = {"train": train, "test": test.features, "labels": labels, "masks": test.masks}
        out[cat.name]["samples"] = cat.test[:16]
        print(
            f"{cat.name}: {len(train)} train, {len(labels)} test ({int(labels.sum())} anomalous)", flush=True
        )
    first = next(iter(out.values()))["samples"]
    images = torch.from_numpy(np.stack([load_resized(s, extractor.image_size)[0] for s in first]))
    extractor(images[:2])  # warm-up
    start = time.perf_counter()
    extractor(images)
    return out, (time.perf_counter() - start) / len(images)


def measure(model: Any, d: dict[str, Any], backbone_s: float) -> dict[str, Any]:
    """Fit on the train features, score the test split; metrics, bank size and timings."""
    start = time.perf_counter()
    model.fit(d["train"])
    fit_s = time.perf_counter() - start
    start = time.perf_counter()
    patch = torch.cat([model.predict(d["test"][i : i + 32]) for i in range(0, len(d["test"]), 32)])
    predict_s = (time.perf_counter() - start) / len(patch)
    maps = anomaly_maps(patch.float(), d["masks"].shape[-1], sigma=4.0)
    metrics = evaluate(d["labels"], image_scores(maps).numpy(), d["masks"], maps.numpy())
    state = model.state_dict()
    return {
        **{k: metrics[k] for k in METRIC_KEYS},
        "bank_atoms": int(model.bank_.shape[0]),
        "bank_bytes": int(sum(t.numel() * t.element_size() for t in state.values())),
        "train_patches": int(d["train"].shape[0] * d["train"].shape[2] * d["train"].shape[3]),
        "fit_seconds": fit_s,
        "model_ms_per_image": 1000 * predict_s,
        "images_per_second_model": 1.0 / predict_s,
        "images_per_second_with_backbone": 1.0 / (predict_s + backbone_s),
        "config": model.get_config(),
    }


def report(name: str, r: dict[str, Any]) -> None:
    vals = ", ".join(f"{k} {r[k]:.4f}" for k in METRIC_KEYS if r[k] is not None)
    print(
        f"  {name}: {vals}; {r['bank_atoms']} atoms, {r['bank_bytes'] / 2**20:.2f} MiB, "
        f"fit {r['fit_seconds']:.1f} s, {r['model_ms_per_image']:.1f} ms/image",
        flush=True,
    )


def markdown(results: dict[str, Any]) -> str:
    keys = list(METRIC_KEYS)
    lines = [
        f"Backbone forward: {results['backbone_ms_per_image']:.1f} ms/image; threads: {results['threads']}.",
        "",
        "| category | model | "
        + " | ".join(keys)
        + " | atoms | MiB | fit s | model ms/img | img/s with backbone |",
        "|---|---|" + "---|" * (len(keys) + 5),
    ]
    for cat, runs in results["categories"].items():
        for name, r in runs.items():
            vals = " | ".join("—" if r[k] is None else f"{r[k]:.4f}" for k in keys)
            lines.append(
                f"| {cat} | {name} | {vals} | {r['bank_atoms']} | {r['bank_bytes'] / 2**20:.2f} | "
                f"{r['fit_seconds']:.1f} | {r['model_ms_per_image']:.1f} | "
                f"{r['images_per_second_with_backbone']:.1f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    keep_freed_memory()  # as the CLI does (reconad.runtime)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data", nargs="+", default=DATA, help="FORMAT:PATH sources (default: the three)")
    ap.add_argument("--cache", type=Path, default=None, help="feature cache folder (default: reconad's)")
    ap.add_argument("--threads", type=int, default=None, help="torch and FAISS threads (default: as set up)")
    ap.add_argument("--no-sweep", action="store_true", help="only the two default models")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
        faiss.omp_set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    data, backbone_s = load_features(args.data, args.cache)
    results: dict[str, Any] = {
        "backbone_ms_per_image": 1000 * backbone_s,
        "threads": torch.get_num_threads(),
        "categories": {},
    }
    default_ratio = SGFR().sampling_ratio
    for cat, d in data.items():
        print(cat, flush=True)
        runs: dict[str, Any] = {}
        plan: list[tuple[str, Any]] = [("patchcore", PatchCore()), ("sgfr", SGFR())]
        if not args.no_sweep:
            plan += [(f"sgfr@{r:g}", SGFR(sampling_ratio=r)) for r in SWEEP if r != default_ratio]
            plan += [(f"patchcore@{r:g}", PatchCore(coreset_ratio=r)) for r in SWEEP if r != 0.1]
            plan += [(f"sgfr[{s}]", SGFR(sampling=s)) for s in ("random", "coreset")]
        for name, model in plan:
            runs[name] = measure(model, d, backbone_s)
            report(name, runs[name])
            results["categories"][cat] = runs
            (args.out / "results.json").write_text(json.dumps(results, indent=1))
            (args.out / "results.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
