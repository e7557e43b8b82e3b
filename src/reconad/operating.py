"""The operating point: the image-score threshold a line runs at, and the verdict rates it gives.

The threshold comes from *out-of-sample* scores of good images (scores of good images a model never saw:
each scored without its own atoms by the per-category banks, held back for the unified ones) by the
conformal rule: with ``n`` such scores, the ``⌈(n + 1)(1 − r)⌉``-th smallest. A new good image,
exchangeable with those, then scores above it with probability at most ``r``: ``r`` is the *false-reject
rate* the line asks for. Where ``n`` is too small for ``r`` (``⌈(n + 1)(1 − r)⌉ > n``), the largest score
is used, which bounds the rate by ``1 / (n + 1)`` — the smallest rate the data can support.

An image is anomalous when its score is *above* the threshold. A *false reject* is a good image called
anomalous; an *escape* is a defective image called normal.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reconad.errors import ReconadError
from reconad.params import check_value
from reconad.runfolder import choose_category, read_config, write_config

#: The false-reject rate a fit targets unless told otherwise: the rate today's rule (the maximum of a 20-image
#: hold-out) stood for nominally (1/21), now met with every good image's score rather than one maximum.
DEFAULT_FALSE_REJECT = 0.05


def check_rate(rate: float, what: str = "--false-reject") -> float:
    """A false-reject rate: a number in (0, 1)."""
    return check_value(what, rate, float, low=0, high=1, low_inclusive=False, high_inclusive=False)


def supported_rate(n: int) -> float:
    """The smallest false-reject rate ``n`` out-of-sample good scores can promise: ``1 / (n + 1)``."""
    return 1.0 / (n + 1)


@dataclass(frozen=True)
class OperatingPoint:
    """A threshold and how it was set: ``rule`` (``conformal``, ``value`` or ``labelled``), the false-reject
    rate asked for (``target``) and the bound the rule gives (``bound``: the target, or the supported rate
    where the scores are too few; None for a value set by hand), from ``n`` good scores."""

    threshold: float
    rule: str
    target: float | None
    bound: float | None
    n: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def conformal_threshold(good_scores: Sequence[float] | np.ndarray, rate: float) -> OperatingPoint:
    """The conformal threshold of out-of-sample ``good_scores`` for the false-reject ``rate``."""
    check_rate(rate)
    s = np.sort(np.asarray(good_scores, dtype=np.float64).ravel())
    if s.size == 0:
        raise ReconadError("no good scores to set a threshold from")
    if not np.isfinite(s).all():
        raise ReconadError("a good image scored NaN or infinity: cannot set a threshold")
    n = int(s.size)
    k = math.ceil((n + 1) * (1 - rate) - 1e-9)  # the 1e-9: (n+1)(1-r) of exact products, not their rounding
    bound = rate if k <= n else supported_rate(n)
    return OperatingPoint(float(s[min(k, n) - 1]), "conformal", rate, bound, n)


def rate_note(category: str, point: OperatingPoint) -> str | None:
    """One line when the scores could not support the rate asked for (None when they could)."""
    if point.target is None or point.bound is None or point.bound <= point.target:
        return None
    return (
        f"category {category}: {point.n} good images support a false-reject rate of {point.bound:.1%} at "
        f"best, not {point.target:.1%}: the threshold is their largest score (more good images lower it)"
    )


def verdict_rates(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, Any]:
    """False rejects (good images above ``threshold``) and escapes (defective ones at or below it), counted
    and as rates (None where there is no image of that kind)."""
    labels = np.asarray(labels).astype(bool)
    anomalous = np.asarray(scores, dtype=np.float64) > threshold
    n_good, n_bad = int((~labels).sum()), int(labels.sum())
    rejects, escapes = int((anomalous & ~labels).sum()), int((~anomalous & labels).sum())
    return {
        "threshold": float(threshold),
        "false_reject_rate": rejects / n_good if n_good else None,
        "escape_rate": escapes / n_bad if n_bad else None,
        "n_false_reject": rejects,
        "n_good": n_good,
        "n_escape": escapes,
        "n_defective": n_bad,
    }


def pooled_verdicts(per_category: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The verdict counts of several categories added up, and their rates (each category at its own
    threshold)."""
    keys = ("n_false_reject", "n_good", "n_escape", "n_defective")
    n = {k: sum(v[k] for v in per_category) for k in keys}
    return {
        "false_reject_rate": n["n_false_reject"] / n["n_good"] if n["n_good"] else None,
        "escape_rate": n["n_escape"] / n["n_defective"] if n["n_defective"] else None,
        **n,
    }


def stored_scores(category: dict[str, Any], run_dir: Path, instead: str = "") -> np.ndarray:
    """A category's stored out-of-sample good scores; one line saying to refit (or do ``instead``) where an
    older reconad kept none."""
    scores = category.get("operating", {}).get("scores")
    if not scores:
        raise ReconadError(
            f"{run_dir} keeps no out-of-sample good scores (fitted by an older reconad): refit it{instead}"
        )
    return np.asarray(scores, dtype=np.float64)


def target_rate(category: dict[str, Any]) -> float:
    """The false-reject rate a category's threshold targets (the default for a run that stored none)."""
    return category.get("operating", {}).get("target") or DEFAULT_FALSE_REJECT


@dataclass(frozen=True)
class Labelled:
    """A labelled folder's scores by the run: its good and its defective images, and where they came from."""

    good: np.ndarray
    defective: np.ndarray
    source: str


#: Scores a labelled folder for a run folder's category: ``(run_dir, category) -> Labelled``.
LabelledScorer = Callable[[Path, str], Labelled]


@dataclass
class ThresholdChange:
    """What :func:`set_threshold` did to a category: the old and new threshold, how the new one was set, and
    the verdicts it gives on the scores it was set from (good images, and defective ones where labelled)."""

    category: str
    old: float
    point: OperatingPoint
    scores_from: str
    verdicts: dict[str, Any]


def set_threshold(
    run_dir: Path,
    category: str | None,
    *,
    false_reject: float | None = None,
    value: float | None = None,
    labelled: LabelledScorer | None = None,
) -> ThresholdChange:
    """Re-set a category's threshold without refitting (``run.json`` replaced atomically; the weights only
    read, by ``labelled``): from the run's stored out-of-sample good scores at ``false_reject``, to a
    ``value``, or from the good images that ``labelled`` scores at ``false_reject`` or the run's target."""
    if (value is not None) + (labelled is not None) + (false_reject is not None and labelled is None) != 1:
        raise ReconadError("give one of --false-reject RATE, --value T or --labelled DIR")
    if false_reject is not None:
        check_rate(false_reject)
    if value is not None and not math.isfinite(value):
        raise ReconadError(f"--value must be a finite number, got {value}")
    config = read_config(run_dir)
    category = choose_category(config, category)
    cat = config["categories"][category]
    old, rate = float(cat["threshold"]), false_reject or target_rate(cat)
    bad = np.zeros(0)
    if labelled is not None:
        scored = labelled(run_dir, category)
        scores, bad, source = scored.good, scored.defective, scored.source
        point = conformal_threshold(scores, rate)
        point = OperatingPoint(point.threshold, "labelled", rate, point.bound, point.n)
    elif value is not None:
        scores = np.asarray(cat.get("operating", {}).get("scores", []), dtype=np.float64)
        source = cat.get("operating", {}).get("scores_from", "")
        point = OperatingPoint(float(value), "value", None, None, len(scores))
    else:
        scores = stored_scores(cat, run_dir, ", or use --value T or --labelled DIR")
        source = cat["operating"]["scores_from"]
        point = conformal_threshold(scores, rate)
    cat["threshold"] = point.threshold
    cat["operating"] = {**point.to_json(), "scores_from": source, "scores": scores.tolist()}
    write_config(run_dir, config)
    labels = np.r_[np.zeros(len(scores), dtype=bool), np.ones(len(bad), dtype=bool)]
    verdicts = verdict_rates(labels, np.r_[scores, bad], point.threshold)
    return ThresholdChange(category, old, point, source, verdicts)
