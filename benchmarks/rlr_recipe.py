"""Choose the unified models' training recipe without test labels: the synthetic validation set of
``sgfr_defaults.py`` (training split only), one unified model per candidate recipe.

    .venv/bin/python benchmarks/rlr_recipe.py --out runs/rlr_recipe [--model rlr] [--candidates A,B]

Per category a seeded 10 % of the good *training* images is held out, kept clean and corrupted twice with
known masks (CutPaste from another training image, an elliptic brightness blotch). One unified model per
candidate is trained on the other 90 % of every category at once, with the candidate's optimiser settings
and everything else at the defaults, then scored on each category's validation set. The test splits are
never read. The candidate with the best mean of pixel AUROC and AUPRO over the categories is the recipe;
the table is written to ``OUT/results.md`` (and ``OUT/results.json``, whose rows a later invocation into
the same ``OUT`` keeps, adding only the candidates it has not measured).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from sgfr_defaults import DATA, KEYS, foreign_images, validation_set

from reconad.data.sources import load_sources
from reconad.features.cache import FeatureCache
from reconad.features.extractor import FeatureExtractor
from reconad.metrics import evaluate
from reconad.models.base import create_model
from reconad.pipeline import DEFAULT_SCORING, score_features
from reconad.runtime import keep_freed_memory

#: Candidate optimiser settings: the session-3 recipe and a faster-converging alternative.
CANDIDATES: dict[str, dict[str, Any]] = {
    "lr 1e-4 constant": {"lr": 1e-4, "lr_schedule": "constant"},
    "lr 1e-3 cosine": {"lr": 1e-3, "lr_schedule": "cosine"},
    "lr 3e-4 cosine": {"lr": 3e-4, "lr_schedule": "cosine"},
    "lr 3e-3 cosine": {"lr": 3e-3, "lr_schedule": "cosine"},
    # The default recipe without MLKA (session 9): for benchmarks/leakage.py, not a recipe candidate.
    "lr 1e-3 cosine no-mlka": {"lr": 1e-3, "lr_schedule": "cosine", "use_mlka": False},
}


def unified_validation(seed: int, foreign: bool = False) -> tuple[dict[str, dict[str, Any]], torch.Tensor]:
    """Per category the validation set of ``sgfr_defaults.validation_set`` (``foreign``: with its third,
    foreign-texture corruption), and the training features of every category joined (what one unified model
    is trained on; the same with or without ``foreign``)."""
    extractor = FeatureExtractor()
    cache = FeatureCache(extractor.key())
    sources = load_sources(DATA)
    textures = foreign_images(sources, extractor.image_size, 8, seed) if foreign else {}
    sets = {c.name: validation_set(c, extractor, cache, seed, textures.get(c.name)) for c in sources}
    return sets, torch.cat([d["train"] for d in sets.values()])


def main() -> None:
    keep_freed_memory()  # as the CLI does (reconad.runtime)
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", default="rlr")
    parser.add_argument("--candidates", default="lr 1e-4 constant,lr 1e-3 cosine")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, help="override the default epochs (a quick smoke run)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    sets, train = unified_validation(args.seed)
    print(
        f"{len(train)} training images; validation: "
        + ", ".join(f"{c} {len(d['val'])}" for c, d in sets.items())
    )

    saved = args.out / "results.json"
    results: dict[str, Any] = json.loads(saved.read_text()) if saved.exists() else {}
    for name in args.candidates.split(","):
        if name in results:  # measured by an earlier invocation into the same OUT
            continue
        params = CANDIDATES[name] | ({"epochs": args.epochs} if args.epochs else {})
        model = create_model(args.model, level_channels=(40, 112), level_grids=(32, 16), **params)
        start = time.perf_counter()
        model.fit(
            train,
            checkpoint_dir=args.out / "checkpoints" / name.replace(" ", "_"),
            resume=True,
            progress=lambda e, n, loss, name=name: print(
                f"  {name} epoch {e}/{n} loss {loss:.4f}", flush=True
            ),
        )
        row: dict[str, Any] = {
            "train_seconds": time.perf_counter() - start,
            "final_loss": model.loss_history_[-1],
        }
        for cat, d in sets.items():
            maps, scores = score_features(model, d["val"], d["masks"].shape[-1], DEFAULT_SCORING)
            m = evaluate(d["labels"], scores.numpy(), d["masks"], maps.numpy())
            row[cat] = {k: m[k] for k in KEYS}
        row["criterion"] = sum(row[c]["pixel_auroc"] + row[c]["pixel_aupro"] for c in sets) / (2 * len(sets))
        results[name] = row
        print(
            f"{name}: criterion {row['criterion']:.4f} " + json.dumps({c: row[c] for c in sets}), flush=True
        )
        saved.write_text(json.dumps(results, indent=1))

    cats = list(sets)
    lines = [
        f"| {args.model} recipe | "
        + " | ".join(f"{c} px AUROC / AUPRO" for c in cats)
        + " | criterion | final loss | train s |",
        "|---|" + "---:|" * (len(cats) + 3),
    ]
    for name, row in results.items():
        cells = [f"{row[c]['pixel_auroc']:.4f} / {row[c]['pixel_aupro']:.4f}" for c in cats]
        lines.append(
            f"| {name} | "
            + " | ".join(cells)
            + f" | {row['criterion']:.4f} | {row['final_loss']:.3f} | {row['train_seconds']:.0f} |"
        )
    best = max(results, key=lambda k: results[k]["criterion"])
    lines.append(f"\nBest on the validation criterion: **{best}**.")
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
