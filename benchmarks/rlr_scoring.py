"""Choose how the unified models turn a reconstruction into a score, without test labels.

    .venv/bin/python benchmarks/rlr_scoring.py --checkpoint runs/s8-rlr-val/checkpoints/lr_1e-3_cosine \
        --out runs/s8-rlr-scoring

Uses the training-only synthetic validation set of ``sgfr_defaults.py`` (``--foreign``: with its third,
foreign-texture corruption) and the unified model that
``rlr_recipe.py`` trains on the other 90 % of the training images (``--checkpoint``: its checkpoint
directory; the model is trained there first when the directory is empty). The model is fixed; only the
score computed from (features, reconstruction) changes:

* ``mse+cos std`` — the default: per level, channel-mean squared error + (1 − cosine) on standardised
  features, upsampled to the finest grid and averaged over the levels;
* ``mse std`` / ``1-cos std`` — each half of it alone;
* ``mse+cos raw`` — the same formula on the extractor's raw (unstandardised) features, as the paper scores;
* ``l2 raw`` — ‖x̂ − x‖ in the extractor's joined feature space (every level's channels, raw units): the
  distance PatchCore and SGFR measure, applied to the reconstruction error;
* ``mse+cos std, level 2`` / ``level 3`` — the default score from one level alone instead of the mean of
  both (``--only`` picks variants).

The rule, fixed before the run: the best mean of pixel AUROC and AUPRO over the categories wins, and it
replaces the default only if it beats it by at least 0.1 pt (the spread seen between near-equal
configurations on this validation set). Written to ``OUT/results.md`` and ``OUT/results.json``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from rlr_recipe import CANDIDATES, unified_validation
from sgfr_defaults import KEYS, validation_metrics
from torch import Tensor

from reconad.models.base import create_model
from reconad.models.reconstruction import ReconstructionModel
from reconad.pipeline import DEFAULT_SCORING
from reconad.runtime import keep_freed_memory
from reconad.scoring import anomaly_maps, image_scores

Level = tuple[Tensor, Tensor, Tensor]  # standardised x, reconstruction, per-channel std; each [B, N, C]


def _mse(x: Tensor, rec: Tensor) -> Tensor:
    return (rec - x).pow(2).mean(dim=-1)


def _one_minus_cos(x: Tensor, rec: Tensor) -> Tensor:
    return 1 - F.cosine_similarity(rec, x, dim=-1, eps=1e-6)


def _per_level(fn: Callable[[Tensor, Tensor, Tensor], Tensor]) -> Callable[[list[Level]], list[Tensor]]:
    return lambda levels: [fn(x, rec, std) for x, rec, std in levels]


#: name → (per-level maps from the level tensors, how the upsampled level maps are combined)
VARIANTS: dict[str, tuple[Callable[[list[Level]], list[Tensor]], str]] = {
    "mse+cos std": (_per_level(lambda x, r, s: _mse(x, r) + _one_minus_cos(x, r)), "mean"),
    "mse std": (_per_level(lambda x, r, s: _mse(x, r)), "mean"),
    "1-cos std": (_per_level(lambda x, r, s: _one_minus_cos(x, r)), "mean"),
    "mse+cos raw": (_per_level(lambda x, r, s: _mse(x * s, r * s) + _one_minus_cos(x * s, r * s)), "mean"),
    "l2 raw": (_per_level(lambda x, r, s: ((r - x) * s).pow(2).sum(dim=-1)), "sqrt-sum"),
    # One level alone (session 10): the finest (stage 2, 32×32) or the coarsest (stage 3, 16×16).
    "mse+cos std, level 2": (_per_level(lambda x, r, s: _mse(x, r) + _one_minus_cos(x, r)), "level 0"),
    "mse+cos std, level 3": (_per_level(lambda x, r, s: _mse(x, r) + _one_minus_cos(x, r)), "level 1"),
}


@torch.inference_mode()
def patch_scores(model: ReconstructionModel, features: Tensor, variant: str) -> Tensor:
    """``[N, h, w]`` patch scores of ``features`` under one scoring ``variant``."""
    per_level, combine = VARIANTS[variant]
    assert model.nets_ is not None and model.level_hw_ is not None
    hw = tuple(features.shape[-2:])
    levels: list[Level] = []
    for net, x in zip(model.nets_, model.split_levels(features), strict=True):
        x = net.standardise(x)
        levels.append((x, net(x), net.feature_std))
    maps = []
    for err, lhw in zip(per_level(levels), model.level_hw_, strict=True):
        err = err.view(-1, 1, *lhw)
        maps.append(err if tuple(lhw) == hw else F.interpolate(err, size=hw, mode="bilinear"))
    stacked = torch.cat(maps, dim=1)
    if combine.startswith("level "):
        return stacked[:, int(combine.split()[1])]
    return stacked.mean(dim=1) if combine == "mean" else stacked.sum(dim=1).sqrt()


def main() -> None:
    keep_freed_memory()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", default="rlr")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--foreign", action="store_true", help="add the foreign-texture corruption")
    parser.add_argument("--only", nargs="*", default=None, help="variant names to score (default: all)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    sets, train = unified_validation(args.seed, args.foreign)
    model = create_model(
        args.model, level_channels=(40, 112), level_grids=(32, 16), **CANDIDATES["lr 1e-3 cosine"]
    )
    model.fit(train, checkpoint_dir=args.checkpoint, resume=True)  # loads it when already trained
    assert isinstance(model, ReconstructionModel) and model.nets_ is not None
    model.nets_.eval()

    results: dict[str, dict] = {}
    for variant in VARIANTS:
        if args.only and variant not in args.only and variant != "mse+cos std":
            continue  # the default is always scored: the rule compares against it
        row: dict = {}
        for cat, d in sets.items():
            size = d["masks"].shape[-1]
            maps = torch.cat(
                [
                    anomaly_maps(
                        patch_scores(model, d["val"][i : i + 32], variant).float(),
                        size,
                        DEFAULT_SCORING["sigma"],
                    )
                    for i in range(0, len(d["val"]), 32)
                ]
            )
            row[cat] = validation_metrics(d, image_scores(maps, DEFAULT_SCORING["reduce"]), maps)
        row["criterion"] = sum(row[c]["pixel_auroc"] + row[c]["pixel_aupro"] for c in sets) / (2 * len(sets))
        results[variant] = row
        print(
            f"{variant}: criterion {row['criterion']:.4f} " + json.dumps({c: row[c] for c in sets}),
            flush=True,
        )
    (args.out / "results.json").write_text(json.dumps(results, indent=1))

    cats = list(sets)
    lines = [
        "| score | " + " | ".join(f"{c} px AUROC / AUPRO / img AUROC" for c in cats) + " | criterion |",
        "|---|" + "---:|" * (len(cats) + 1),
    ]
    for name, row in results.items():
        cells = [" / ".join(f"{row[c][k]:.4f}" for k in KEYS[1:] + KEYS[:1]) for c in cats]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {row['criterion']:.4f} |")
    best = max(results, key=lambda k: results[k]["criterion"])
    keep = results[best]["criterion"] < results["mse+cos std"]["criterion"] + 0.001
    lines.append(f"\nBest: **{best}**; " + ("the default stays." if keep else "it replaces the default."))
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
