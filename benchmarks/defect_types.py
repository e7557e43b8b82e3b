"""Where a category's pooled pixel AUROC is lost: the test split without one defect type at a time.

    python benchmarks/defect_types.py RUN [RUN ...] [--category magnetic_tile]

For runs made by ``reconad fit`` / ``reconad bench`` (any model). Per defect type of a category: its share of
the category's defect pixels, and per run the pooled pixel AUROC of every test image *except* that type's
(what the category's figure would be without it). ``reconad test RUN --by-defect`` gives the other view,
each type's metrics on the good test images plus that type's. A diagnostic of test results: nothing here
chooses a model or a setting. Prints one markdown table per category.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from shortcut_index import Extractors, run_extractor

from reconad import pipeline
from reconad.data.sources import load_sources
from reconad.metrics import UndefinedMetric, pixel_auroc
from reconad.runs import load_run
from reconad.runtime import keep_freed_memory


def without(masks: np.ndarray, maps: np.ndarray) -> float | None:
    """Pixel AUROC, or ``None`` when no defect pixel is left (a category with one defect type)."""
    try:
        return pixel_auroc(masks, maps)
    except UndefinedMetric:
        return None


def breakdown(path: Path, extractors: Extractors, only: str | None) -> dict[str, dict[str, dict]]:
    """Per category → per defect type: ``share`` of the defect pixels and pixel AUROC ``without`` it (the
    pooled category figure under the key ``"all"``)."""
    run = load_run(path)
    extractor, cache = run_extractor(run, extractors)
    names = [only] if only else list(run.categories)
    sources = sorted({run.categories[n]["source"] for n in names})
    results = pipeline.evaluate(run, load_sources(sources, names), extractor, cache=cache)
    out = {}
    for name, r in results.items():
        defects = np.array([s.defect for s in r.samples])
        rows = {"all": {"share": 1.0, "without": r.metrics["pixel_auroc"]}}
        for d in dict.fromkeys(defects[r.labels == 1]):
            this = defects == d
            rows[str(d)] = {
                "share": float(r.masks[this].sum() / r.masks.sum()),
                "without": without(r.masks[~this], r.maps[~this]),
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
        rows = next(r[cat] for r in results.values() if cat in r)
        types = [t for t in rows if t != "all"]
        print(f"\n{cat}: pooled pixel AUROC of every test image, and without one defect type's images")
        print("| run | all | " + " | ".join(f"without {t} ({rows[t]['share']:.0%})" for t in types) + " |")
        print("|---|---:|" + "---:|" * len(types))
        for run, r in results.items():
            if cat in r:
                print(
                    f"| {run} | " + " | ".join(f"{r[cat][t]['without']:.4f}" for t in ["all", *types]) + " |"
                )


if __name__ == "__main__":
    main()
