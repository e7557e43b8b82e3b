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

from reconad import pipeline
from reconad.data.sources import load_sources
from reconad.metrics import pixel_auroc
from reconad.runs import load_run
from reconad.runtime import keep_freed_memory


def breakdown(path: Path, extractors: Extractors, only: str | None) -> dict[str, dict[str, dict]]:
    """Per category → per defect type: ``share`` of defect pixels, ``alone`` and ``without`` pixel AUROC
    (the pooled category figure under the key ``"all"``)."""
    run = load_run(path)
    extractor, cache = run_extractor(run, extractors)
    names = [only] if only else list(run.categories)
    sources = sorted({run.categories[n]["source"] for n in names})
    results = pipeline.evaluate(run, load_sources(sources, names), extractor, cache=cache)
    doc = pipeline.results_json(run, results, by_defect=True)
    out: dict[str, dict[str, dict]] = {}
    for name, r in results.items():
        metrics = doc["categories"][name]
        defects = np.array([s.defect for s in r.samples])
        rows = {"all": {"share": 1.0, "alone": metrics["pixel_auroc"], "without": None}}
        for d, typed in metrics["defect_types"].items():
            this = defects == d
            rows[d] = {
                "share": float(r.masks[this].sum() / r.masks.sum()),
                "alone": typed["pixel_auroc"],
                "without": pixel_auroc(r.masks[~this], r.maps[~this]),
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
