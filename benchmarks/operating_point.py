"""Decisions measured as decisions: false rejects and escapes on the test images at the fitted threshold.

For each model and category: the run's conformal threshold at each ``--rates`` (out-of-sample good scores:
each good image scored without its own atoms for per-category models, held back for unified ones); the
rule reconad used before (the maximum score of a seeded 10 % hold-out, the model fitted on the other 90 %);
and, for reference only, the threshold chosen *on the test images* for the same rate (never used to decide
anything). Per-category models also get ``reconad add``: the good test images split in two seeded halves,
one half added, the other half's false rejects and the defective images' escapes before and after, and the
seconds of the add against the fit. ``--thresholds-only``: neither the former rule nor the add.

    python benchmarks/operating_point.py --data mvtec:../shared/data/mvtec_ad --data \\
        mvtec3d:../shared/data/mvtec_3d --data mtd:../shared/data/magnetic_tile --model patchcore \\
        --model sgfr --out op-bench
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from reconad import pipeline
from reconad.data import load_sources
from reconad.features.cache import FeatureCache
from reconad.features.extractor import FeatureExtractor
from reconad.learn import add_good_images
from reconad.operating import conformal_threshold, verdict_rates
from reconad.runfolder import UNIFIED
from reconad.runs import Run, load_run, save_run
from reconad.runtime import keep_freed_memory


def reference_threshold(labels: np.ndarray, scores: np.ndarray, rate: float) -> float:
    """The threshold chosen on the test images themselves: the lowest that rejects at most ``rate`` of the
    good test images."""
    good = np.sort(scores[labels == 0])
    return float(good[min(len(good), math.ceil(len(good) * (1 - rate))) - 1])


def old_rule(
    name: str, params: dict, data: list, extractor: FeatureExtractor, cache: FeatureCache, seed: int
):
    """Per category, the threshold of the rule before: the maximum score of a seeded 10 % hold-out, scored
    by the model fitted on the other 90 % (for unified models: the maximum of the run's held-back scores)."""
    feats = pipeline.training_features(data, extractor, None, cache, 0.1, seed)
    model = pipeline.new_model(name, params, extractor, seed)
    if model.unified:
        return None
    fitted = pipeline.fit_models(model, {c.name: feats[c.name][0].features for c in data})
    return {
        c.name: float(
            pipeline.score_features(
                fitted[c.name], feats[c.name][1].features, extractor.image_hw, pipeline.DEFAULT_SCORING
            )[1].max()
        )
        for c in data
    }


def add_half(run_dir: Path, c: Any, extractor: FeatureExtractor, seed: int) -> dict[str, Any]:
    """``reconad add`` with one seeded half of the good test images; verdicts on the other half and on the
    defective images, before and after."""
    good = [s for s in c.test if s.label == 0]
    order = np.random.default_rng(seed).permutation(len(good))
    added, kept = [good[i] for i in order[: len(good) // 2]], [good[i] for i in order[len(good) // 2 :]]
    rest = kept + [s for s in c.test if s.label == 1]

    def verdicts() -> dict[str, Any]:
        run = load_run(run_dir)
        r = pipeline.evaluate(run, [type(c)(c.name, c.train, rest, c.source)], extractor)[c.name]
        return verdict_rates(r.labels, r.scores, r.threshold)

    before = verdicts()
    start = time.perf_counter()
    summary = add_good_images(run_dir, [s.path for s in added], c.name)
    seconds = time.perf_counter() - start
    return {
        "before": before,
        "after": verdicts(),
        "add_seconds": seconds,
        "atoms": [summary.atoms_before, summary.atoms_after],
        "n_added": summary.n_added,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", action="append", required=True)
    parser.add_argument("--category", action="append")
    parser.add_argument("--model", action="append", required=True)
    parser.add_argument("--param", action="append", default=[], help="MODEL.key=value")
    parser.add_argument("--rates", type=float, nargs="+", default=[0.05, 0.01])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--thresholds-only", action="store_true", help="no former rule, no reconad add")
    args = parser.parse_args()
    keep_freed_memory()
    from reconad.bench import per_model
    from reconad.params import parse_params

    params = per_model(parse_params(args.param))
    data = load_sources(args.data, args.category, seed=args.seed)
    extractor = FeatureExtractor()
    cache = FeatureCache(extractor.key())
    args.out.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {}
    for name in args.model:
        run = pipeline.fit(name, data, extractor, params=params.get(name, {}), cache=cache, seed=args.seed)
        results = pipeline.evaluate(run, data, extractor, cache=cache)
        old = (
            None
            if args.thresholds_only
            else old_rule(name, params.get(name, {}), data, extractor, cache, args.seed)
        )
        rows = {}
        for c in data:
            r, op = results[c.name], run.categories[c.name]["operating"]
            row: dict[str, Any] = {"fit_seconds": run.config["fit_seconds"], "n_scores": op["n"]}
            for rate in args.rates:
                point = conformal_threshold(op["scores"], rate)
                ref = reference_threshold(r.labels, r.scores, rate)
                row[str(rate)] = {
                    "ours": verdict_rates(r.labels, r.scores, point.threshold) | {"bound": point.bound},
                    "reference": verdict_rates(r.labels, r.scores, ref),
                }
            if old or UNIFIED in run.models:  # unified: the maximum of the held-back scores
                held = old[c.name] if old else max(op["scores"])
                row["old_rule"] = verdict_rates(r.labels, r.scores, held)
            if UNIFIED not in run.models and not args.thresholds_only:
                single = Run(
                    {**run.config, "categories": {c.name: run.categories[c.name]}},
                    {c.name: run.models[c.name]},
                )
                folder = args.out / "runs" / f"{name}-{c.name}"
                shutil.rmtree(folder, ignore_errors=True)
                save_run(single, folder)
                row["add"] = add_half(folder, c, extractor, args.seed)
            rows[c.name] = row
            print(name, c.name, json.dumps(row, indent=None)[:400], flush=True)
        doc[name] = rows
        (args.out / "results.json").write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
