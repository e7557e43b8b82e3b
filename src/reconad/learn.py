"""Learning from confirmed good parts: ``reconad add`` grows a fitted per-category run without refitting.

The new images are scored by the run as it is (a model that never saw them: out-of-sample good scores that
join the stored ones), their patches then join the bank where it does not already cover them (the model's
``extend``), and the threshold is set again by the run's own rule and rate (:mod:`reconad.operating`). An
image already added (the same bytes) changes nothing. The run folder is replaced atomically.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from reconad.data.imageio import collect_images
from reconad.data.sample import Sample
from reconad.errors import ReconadError
from reconad.features.cache import file_digest
from reconad.features.extractor import FeatureExtractor
from reconad.operating import OperatingPoint, conformal_threshold, stored_scores, target_rate
from reconad.pipeline import extract, score_features
from reconad.progress import Progress, no_progress
from reconad.runfolder import UNIFIED
from reconad.runs import load_run, save_run


@dataclass
class AddSummary:
    """What :func:`add_good_images` did to a category."""

    category: str
    n_given: int
    n_added: int  # images neither trained on nor added before
    atoms_before: int
    atoms_after: int
    old_threshold: float
    point: OperatingPoint
    seconds: float


def add_good_images(
    run_dir: Path,
    inputs: Sequence[Path],
    category: str | None = None,
    device: str = "cpu",
    progress: Progress = no_progress,
) -> AddSummary:
    """Add the good images ``inputs`` name (files, folders scanned) to the run at ``run_dir`` (its
    ``category``, or its only one); see the module's docstring."""
    start = time.perf_counter()
    run = load_run(run_dir)
    category = run.category(category)
    if UNIFIED in run.models:
        raise ReconadError(
            f"{run.config['model']} keeps one model for every category: its images cannot join one "
            "category's; refit it with the new images among the good ones (reconad fit … --force)"
        )
    cat = run.categories[category]
    stored_scores(cat, run_dir)
    paths = collect_images(inputs)
    added = list(cat.get("added", []))
    known = {*added, *cat.get("trained_on", [])}  # a training image is no out-of-sample score
    fresh: dict[str, Path] = {}
    for path in paths:
        digest = file_digest(path)
        if digest not in known and digest not in fresh:
            fresh[digest] = path
    model = run.models[category]
    before, old = len(model.bank_), float(cat["threshold"])
    if not fresh:
        point = OperatingPoint(old, **{k: cat["operating"][k] for k in ("rule", "target", "bound", "n")})
        return AddSummary(category, len(paths), 0, before, before, old, point, time.perf_counter() - start)
    extractor = FeatureExtractor.from_config(run.config["features"], device)
    samples = [Sample(p, 0, category) for p in fresh.values()]
    feats = extract(samples, extractor, progress=progress, description=f"{category}: added").features
    _, scores = score_features(model, feats, extractor.image_hw, run.config["scoring"], tiles=extractor.tiles)
    model.extend(feats)
    operating = cat["operating"]
    every = [*operating["scores"], *scores.tolist()]
    if operating["rule"] == "value":  # a threshold set by hand stays
        point = OperatingPoint(old, "value", None, None, len(every))
    else:
        point = conformal_threshold(every, target_rate(cat))
        point = OperatingPoint(point.threshold, operating["rule"], point.target, point.bound, point.n)
    source = operating["scores_from"].split(" + ")[0]
    cat.update(
        threshold=point.threshold,
        n_train=cat["n_train"] + len(fresh),
        added=[*added, *fresh],
        operating={
            **point.to_json(),
            "scores_from": f"{source} + {len(added) + len(fresh)} added",
            "scores": every,
        },
    )
    save_run(run, run_dir)
    seconds = time.perf_counter() - start
    return AddSummary(category, len(paths), len(fresh), before, len(model.bank_), old, point, seconds)
