"""RLR vs UniAD-style vs RLR without LCA vs RLR without MLKA: one unified model each over every category.

    .venv/bin/python benchmarks/rlr_vs_uniad.py --out runs/rlr_bench [--epochs 12] [--models rlr,uniad]

``--models`` may also name ``patchcore`` and ``sgfr``: the per-category references, one model per category
with its default parameters, fitted on the same features (no training options apply to them).

Per model: the five metrics per category and their mean, train seconds, predict images/s (the model alone, on
cached features: no backbone, no map smoothing), and the *shortcut index* per category = mean reconstruction
error inside the defect masks ÷ mean error on defect-free pixels of the test images (patch error maps
upsampled bilinearly to the mask size, no smoothing; higher = anomalies are reconstructed worse = less
identity shortcut). Hyper-parameters are the models' defaults (the CPU recipe) unless a flag overrides them;
the same values go to every model. Writes ``OUT/results.json`` and ``OUT/results.md``; checkpoints go to
``OUT/checkpoints/MODEL`` and ``--resume`` continues an interrupted run from them.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from reconad.data.sources import load_sources
from reconad.features.cache import FeatureCache
from reconad.features.extractor import FeatureExtractor
from reconad.metrics import METRIC_KEYS, evaluate, mean_metrics
from reconad.models.base import create_model, model_class
from reconad.pipeline import extract
from reconad.runtime import keep_freed_memory
from reconad.scoring import anomaly_maps, image_scores

DATA = [
    "mvtec:../shared/data/mvtec_ad",
    "mvtec3d:../shared/data/mvtec_3d",
    "mtd:../shared/data/magnetic_tile",
]
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "rlr": ("rlr", {}),
    "uniad": ("uniad", {}),
    "rlr_no_lca": ("rlr", {"use_lca": False}),
    "rlr_no_mlka": ("rlr", {"use_mlka": False}),
    "patchcore": ("patchcore", {}),  # per-category references on the same features, default parameters
    "sgfr": ("sgfr", {}),
}


def shortcut_index(patch_scores: torch.Tensor, masks: np.ndarray) -> float | None:
    """Mean error inside defect masks ÷ mean error on defect-free pixels (errors upsampled to mask size)."""
    m = torch.from_numpy(masks)
    if not m.any():
        return None
    up = F.interpolate(patch_scores[:, None].float(), size=m.shape[-2:], mode="bilinear")[:, 0]
    return float(up[m].mean() / up[~m].mean())


def load_features(specs: list[str], cache_dir: Path | None) -> dict[str, dict[str, Any]]:
    """Per category: train features, test features, labels and masks (features cached on disk)."""
    extractor = FeatureExtractor()
    cache = FeatureCache(extractor.key(), cache_dir)
    out = {}
    for cat in load_sources(specs):
        train = extract(cat.train, extractor, cache=cache).features
        test = extract(cat.test, extractor, cache=cache, with_masks=True)
        labels = np.array([s.label for s in cat.test])
        out[cat.name] = {"train": train, "test": test.features, "labels": labels, "masks": test.masks}
        print(
            f"{cat.name}: {len(train)} train, {len(labels)} test ({int(labels.sum())} anomalous)", flush=True
        )
    return out


def run_variant(
    variant: str, data: dict[str, dict[str, Any]], params: dict[str, Any], ckpt: Path, resume: bool
) -> dict[str, Any]:
    """Train one unified model on every category's good images (a reference model: one per category), then
    score each category's test split."""
    name, flags = VARIANTS[variant]
    extractor_ctx = {"level_channels": (40, 112), "level_grids": (32, 16)}
    t0 = time.perf_counter()
    if not model_class(name).unified:
        models = {
            c: create_model(name, **extractor_ctx, seed=params["seed"]).fit(d["train"])
            for c, d in data.items()
        }
    else:
        model = create_model(name, **extractor_ctx, **params, **flags)
        train = torch.cat([d["train"] for d in data.values()])
        cats = [c for c, d in data.items() for _ in range(len(d["train"]))]

        def progress(epoch: int, total: int, loss: float) -> None:
            print(
                f"  {variant} epoch {epoch}/{total} loss {loss:.4f} ({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )

        model.fit(train, cats, checkpoint_dir=ckpt, resume=resume, progress=progress)
        models = dict.fromkeys(data, model)
    train_s = time.perf_counter() - t0
    per_cat: dict[str, dict[str, Any]] = {}
    predict_s, n_pred = 0.0, 0
    for cat, d in data.items():
        t1 = time.perf_counter()
        patch = torch.cat([models[cat].predict(d["test"][i : i + 32]) for i in range(0, len(d["test"]), 32)])
        predict_s += time.perf_counter() - t1
        n_pred += len(patch)
        maps = anomaly_maps(patch, d["masks"].shape[-1], sigma=4.0)
        metrics = evaluate(d["labels"], image_scores(maps).numpy(), d["masks"], maps.numpy())
        metrics["shortcut_index"] = shortcut_index(patch, d["masks"])
        per_cat[cat] = metrics
        print(f"  {variant} {cat}: " + ", ".join(f"{k} {metrics[k]:.3f}" for k in METRIC_KEYS), flush=True)
    mean = mean_metrics(per_cat)
    shortcut = [m["shortcut_index"] for m in per_cat.values() if m["shortcut_index"] is not None]
    mean["shortcut_index"] = float(np.mean(shortcut)) if shortcut else None
    model = next(iter(models.values()))  # the unified model, or one reference (all share the config)
    return {
        "model": name,
        "config": model.get_config(),
        "categories": per_cat,
        "mean": mean,
        "train_seconds": train_s,
        "epochs": getattr(model, "epochs", None),
        "final_loss": model.loss_history_[-1] if getattr(model, "loss_history_", None) else None,
        "predict_images_per_second": n_pred / predict_s,
    }


def markdown(results: dict[str, dict[str, Any]]) -> str:
    keys = [*METRIC_KEYS, "shortcut_index"]
    head = "| model | category | " + " | ".join(keys) + " |\n|---|---|" + "---|" * len(keys) + "\n"
    rows = []
    for variant, r in results.items():
        for cat, m in [*r["categories"].items(), ("**mean**", r["mean"])]:
            vals = " | ".join("—" if m.get(k) is None else f"{m[k]:.3f}" for k in keys)
            rows.append(f"| {variant} | {cat} | {vals} |")
    speed = "\n".join(
        f"- {v}: {r['epochs'] or 'no'} epochs, train {r['train_seconds']:.0f} s, predict "
        f"{r['predict_images_per_second']:.1f} images/s (model only)"
        + (f", final loss {r['final_loss']:.4f}" if r["final_loss"] is not None else "")
        for v, r in results.items()
    )
    return head + "\n".join(rows) + "\n\n" + speed + "\n"


def main() -> None:
    keep_freed_memory()  # as the CLI does (reconad.runtime)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data", nargs="+", default=DATA, help="FORMAT:PATH sources (default: the three)")
    ap.add_argument("--models", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    ap.add_argument("--epochs", type=int, default=None, help="training epochs (default: the model default)")
    ap.add_argument("--widths", type=int, nargs="+", default=None, help="token width per level")
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--heads", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--lr-schedule", default=None, choices=["cosine", "constant"])
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--jitter-scale", type=float, default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", type=Path, default=None, help="feature cache folder (default: reconad's)")
    ap.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints")
    args = ap.parse_args()
    params = {
        k: v
        for k, v in {
            "epochs": args.epochs,
            "widths": args.widths,
            "layers": args.layers,
            "heads": args.heads,
            "lr": args.lr,
            "lr_schedule": args.lr_schedule,
            "batch_size": args.batch_size,
            "jitter_scale": args.jitter_scale,
        }.items()
        if v is not None
    }
    params |= {"device": args.device, "seed": args.seed}
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    data = load_features(args.data, args.cache)
    path = args.out / "results.json"
    results = json.loads(path.read_text()) if args.resume and path.exists() else {}
    for variant in args.models.split(","):
        if variant not in VARIANTS:
            raise SystemExit(f"unknown model {variant!r}; choose from {', '.join(VARIANTS)}")
        if variant in results:
            continue
        print(f"{variant}: training", flush=True)
        results[variant] = run_variant(variant, data, params, args.out / "checkpoints" / variant, args.resume)
        path.write_text(json.dumps(results, indent=1))
        (args.out / "results.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
