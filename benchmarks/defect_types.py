"""Where a category's pixel metrics are won and lost: the test split broken down by defect type.

    .venv/bin/python benchmarks/defect_types.py RUN [RUN ...] [--category magnetic_tile]

For runs made by ``reconad fit`` / ``reconad bench`` (any model). For each defect type of a category, two
figures per run: pixel AUROC on the good test images plus that type's images (how well the type is found),
and the pooled pixel AUROC of every test image *except* that type's (what the category's figure would be
without it). Also each type's share of the category's defect pixels. A diagnostic of test results already
reported: nothing here chooses a model or a setting. Prints markdown tables. (`reconad test --by-defect`
gives the first figure, with the other metrics, for any run.)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from shortcut_index import Extractors, run_extractor

from reconad.data.sources import load_sources
from reconad.metrics import by_defect_type, pixel_auroc
from reconad.pipeline import extract, score_features
from reconad.runs import load_run
from reconad.runtime import keep_freed_memory


def breakdown(path: Path, extractors: Extractors, only: str | None) -> dict[str, dict[str, dict]]:
    """Per category → per defect type: ``share`` of defect pixels, ``alone`` and ``without`` pixel AUROC
    (the pooled category figure under the key ``"all"``)."""
    run = load_run(path)
    extractor, cache = run_extractor(run, extractors)
    out: dict[str, dict[str, dict]] = {}
    for name, info in run.categories.items():
        if only and name != only:
            continue
        cat = next(c for c in load_sources([info["source"]]) if c.name == name)
        test = extract(cat.test, extractor, cache=cache, with_masks=True)
        assert test.masks is not None
        model, scoring = run.model_for(name), run.config["scoring"]
        maps, scores = score_features(model, test.features, extractor.image_size, scoring)
        maps_np, masks = maps.numpy(), test.masks
        labels = np.array([s.label for s in cat.test])
        defects = np.array([s.defect for s in cat.test])
        alone = by_defect_type(labels, scores.numpy(), masks, maps_np, defects)
        rows = {"all": {"share": 1.0, "alone": pixel_auroc(masks, maps_np), "without": None}}
        for d, metrics in alone.items():
            this = defects == d
            rows[d] = {
                "share": float(masks[this].sum() / masks.sum()),
                "alone": metrics["pixel_auroc"],
                "without": pixel_auroc(masks[~this], maps_np[~this]),
            }
        out[name] = rows
    return out


def main() -> None:
    keep_freed_memory()  # as the CLI does (reconad.runtime)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", type=Path, nargs="+")
    ap.add_argument("--category", help="only this category (default: every category of each run)")
    args = ap.parse_args()
    extractors: Extractors = {}
    results = {str(p): breakdown(p, extractors, args.category) for p in args.runs}
    for cat in dict.fromkeys(c for r in results.values() for c in r):
        types = list(next(r[cat] for r in results.values() if cat in r))
        shares = next(r[cat] for r in results.values() if cat in r)
        print(f"\n{cat}: pixel AUROC on the good images + one defect type (its share of defect pixels)")
        print("| run | " + " | ".join(f"{t} ({shares[t]['share']:.0%})" for t in types) + " |")
        print("|---|" + "---:|" * len(types))
        for run, r in results.items():
            if cat in r:
                print(f"| {run} | " + " | ".join(f"{r[cat][t]['alone']:.4f}" for t in types) + " |")
        print(f"\n{cat}: pooled pixel AUROC of every test image except one defect type's")
        print("| run | " + " | ".join(f"without {t}" for t in types[1:]) + " |")
        print("|---|" + "---:|" * (len(types) - 1))
        for run, r in results.items():
            if cat in r:
                print(f"| {run} | " + " | ".join(f"{r[cat][t]['without']:.4f}" for t in types[1:]) + " |")


if __name__ == "__main__":
    main()
