"""Does a defect change a unified model's errors *away* from it? Training-only validation set, no test labels.

    .venv/bin/python benchmarks/leakage.py --checkpoint rlr=runs/s8-rlr-val/checkpoints/lr_1e-3_cosine \
        --checkpoint uniad=runs/s8-uniad-val/checkpoints/lr_1e-3_cosine \
        --checkpoint rlr_no_mlka=runs/s9-rlr-nomlka-val/checkpoints/lr_1e-3_cosine_no-mlka

Every corrupted copy in ``sgfr_defaults.py``'s validation set (with ``--foreign``'s third corruption) has
its clean twin (``twins`` in that set). Per model and category, on the patch grid: the defect's patches (the
mask max-pooled to the grid) and the far patches (outside the mask grown by ``--margin`` patches, beyond the
largest attention window). Reported: the mean error on the defect ÷ the mean error of the twin there (how
much the defect is *not* reconstructed), and the mean change of the error on the far patches ÷ the twin's
mean error there (how much the defect raises other positions' errors). The backbone's own receptive field
already carries a defect beyond its mask, so the relative change of the far patches' *features* is shown
too: it is the same for every model, and the models differ only by what their attention adds. A diagnostic;
it chooses nothing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rlr_recipe import CANDIDATES, unified_validation

from reconad.models.base import create_model
from reconad.runtime import keep_freed_memory

#: name → (model, ``rlr_recipe.CANDIDATES`` entry it was trained with)
VARIANTS = {
    "rlr": ("rlr", "lr 1e-3 cosine"),
    "uniad": ("uniad", "lr 1e-3 cosine"),
    "rlr_no_mlka": ("rlr", "lr 1e-3 cosine no-mlka"),
}


def main() -> None:
    keep_freed_memory()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--checkpoint", action="append", required=True, help=f"NAME=DIR, NAME one of {', '.join(VARIANTS)}"
    )
    ap.add_argument("--margin", type=int, default=4, help="patches between the defect and the far patches")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    sets, train = unified_validation(args.seed, foreign=True)
    parts = {}  # per category, what does not depend on the model
    for cat, d in sets.items():
        bad = np.flatnonzero(d["labels"] == 1)
        twin = d["twins"][bad]
        masks = torch.from_numpy(d["masks"][bad]).float().unsqueeze(1)
        grid = d["val"].shape[-1]
        defect = F.adaptive_max_pool2d(masks, grid)[:, 0] > 0
        far = F.max_pool2d(defect.float().unsqueeze(1), 2 * args.margin + 1, 1, args.margin)[:, 0] == 0
        f = d["val"].permute(0, 2, 3, 1).double()
        moved = (f[bad] - f[twin]).norm(dim=-1)[far].mean() / f[bad].norm(dim=-1)[far].mean()
        parts[cat] = bad, twin, defect, far, moved.item()
    print("| model | category | defect ÷ twin | far change ÷ twin | far feature change |")
    print("|---|---|---:|---:|---:|")
    for spec in args.checkpoint:
        name, directory = spec.split("=", 1)
        kind, recipe = VARIANTS[name]
        model = create_model(kind, level_channels=(40, 112), level_grids=(32, 16), **CANDIDATES[recipe])
        model.fit(train, checkpoint_dir=Path(directory), resume=True)  # loads the trained model
        for cat, d in sets.items():
            bad, twin, defect, far, moved = parts[cat]
            err = torch.cat(
                [model.predict(d["val"][i : i + 32]) for i in range(0, len(d["val"]), 32)]
            ).double()
            e, e_twin = err[bad], err[twin]
            inside = (e[defect].mean() / e_twin[defect].mean()).item()
            leak = ((e - e_twin)[far].mean() / e_twin[far].mean()).item()
            print(f"| {name} | {cat} | {inside:.3f} | {leak:+.4f} | {moved:.4f} |", flush=True)


if __name__ == "__main__":
    main()
