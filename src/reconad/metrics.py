"""Detection and localization metrics: numpy in, floats out.

Image level (N scores, scikit-learn): AUROC, F1-max. Pixel level (N maps): AUROC, AP and AUPRO, all from one
sort of the pixel scores (:class:`PixelCurve`): with ~6.5 M pixels a scikit-learn call sorts them again for
each metric (≈2.5 s each on 2 cores); the shared curve gives the same values (tests check against
scikit-learn) in about a second for all three.

scikit-learn is imported where a metric needs it, not at the top: it adds ~80 MB to the resident size of
every process, and ``fit`` and ``predict`` compute no metric.

A metric that is undefined on the data given (one class only, no defect pixels) raises
:class:`UndefinedMetric`; :func:`evaluate` turns that into ``None`` plus a note.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from skimage.measure import label as label_components

from reconad.errors import ReconadError

METRIC_KEYS = ("image_auroc", "pixel_auroc", "pixel_aupro", "image_f1_max", "pixel_ap")
DEFAULT_FPR_LIMIT = 0.3


class UndefinedMetric(ReconadError):
    """The metric has no value on this data (e.g. a single class); the message says why."""


# ---------------------------------------------------------------- input checks


def _image_inputs(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).ravel()
    s = np.asarray(scores).ravel()
    if y.shape != s.shape:
        raise ReconadError(f"labels and scores differ in length: {y.size} vs {s.size}")
    if not np.isin(y, (0, 1)).all():
        raise ReconadError("labels must be 0 (good) or 1 (anomalous)")
    if np.isnan(s.astype(np.float64, copy=False)).any():
        raise ReconadError("image scores contain NaN")
    return y.astype(bool), s


def _both_classes(y: np.ndarray, what: str) -> None:
    if y.size == 0 or y.all() or not y.any():
        have = "no images" if y.size == 0 else ("only anomalous images" if y.all() else "only good images")
        raise UndefinedMetric(f"{what} undefined: the test set has {have}")


def _pixel_inputs(masks: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    m = np.asarray(masks)
    a = np.asarray(maps)
    if a.ndim != 3 or m.shape != a.shape:
        raise ReconadError(f"masks and maps must both be [N, H, W]; got {m.shape} and {a.shape}")
    if not np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float64)
    if np.isnan(a).any():
        raise ReconadError("anomaly maps contain NaN")
    return m.astype(bool, copy=False), a


def _unit(value: float) -> float:
    """A float clipped to [0, 1] (trapezoid sums can overshoot by rounding)."""
    return float(min(1.0, max(0.0, value)))


# ---------------------------------------------------------------- image level


def image_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of image scores (labels 1 = anomalous)."""
    y, s = _image_inputs(labels, scores)
    _both_classes(y, "image AUROC")
    from sklearn.metrics import roc_auc_score

    return _unit(roc_auc_score(y, s))


def roc_curve_points(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The image-level ROC curve ``(fpr, tpr)`` for plotting."""
    y, s = _image_inputs(labels, scores)
    _both_classes(y, "image ROC curve")
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(y, s)
    return fpr, tpr


def image_f1_max(labels: np.ndarray, scores: np.ndarray) -> float:
    """The best F1 score over all thresholds on the image scores."""
    y, s = _image_inputs(labels, scores)
    if not y.any():
        raise UndefinedMetric("image F1-max undefined: the test set has no anomalous images")
    from sklearn.metrics import precision_recall_curve

    precision, recall, _ = precision_recall_curve(y, s)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    return _unit(f1.max())


# ---------------------------------------------------------------- pixel level


@dataclass(frozen=True)
class PixelCurve:
    """Cumulative counts over the distinct pixel scores, highest threshold first, from ``(0, 0)``.

    At point ``j`` (threshold ``t_j``, pixels ``score >= t_j`` predicted anomalous): ``fp[j]`` negatives and
    ``tp[j]`` defect pixels are above threshold, and ``pro[j]`` is the mean over ground-truth regions of the
    fraction of each region above threshold. Tied scores enter together, as one step.
    """

    fp: np.ndarray
    tp: np.ndarray
    pro: np.ndarray | None
    n_neg: int
    n_pos: int
    n_regions: int

    @classmethod
    def build(cls, masks: np.ndarray, maps: np.ndarray, with_pro: bool = True) -> PixelCurve:
        """Sort once: all scores (values only), and apart the few defect-pixel scores with their region
        weights; counts at each distinct threshold come from ``searchsorted``, no loop over thresholds."""
        m, a = _pixel_inputs(masks, maps)
        flat = a.reshape(-1)
        pos = m.reshape(-1)
        n = flat.size
        ordered = np.sort(flat)  # ascending
        # First index of each run of equal scores; thresholds descend when read backwards.
        starts = np.flatnonzero(ordered[1:] != ordered[:-1]) + 1
        starts = np.concatenate(([0], starts))[::-1]
        thresholds = ordered[starts]
        del ordered
        n_above = n - starts  # pixels with score >= threshold

        pos_scores = flat[pos]
        order = np.argsort(pos_scores, kind="stable")
        pos_sorted = pos_scores[order]
        first_above = np.searchsorted(pos_sorted, thresholds, side="left")
        n_pos = int(pos_sorted.size)
        tp = n_pos - first_above
        fp = n_above
        fp -= tp  # in place: these arrays hold one entry per distinct score (up to one per pixel)

        pro = None
        n_regions = 0
        if with_pro:
            weights, n_regions = _region_weights(m)
            if n_regions:
                w = weights[order]
                # suffix[i] = sum of weights of defect pixels ranked i.. (score >= pos_sorted[i])
                suffix = np.concatenate((np.cumsum(w[::-1])[::-1], [0.0]))
                pro = np.concatenate(([0.0], suffix[first_above]))
        zero = np.zeros(1, dtype=np.int64)
        return cls(
            fp=np.concatenate((zero, fp)),
            tp=np.concatenate((zero, tp)),
            pro=pro,
            n_neg=int(n - n_pos),
            n_pos=n_pos,
            n_regions=n_regions,
        )

    def auroc(self) -> float:
        """Pixel AUROC (trapezoid under the ROC curve; ties as one diagonal step, as scikit-learn)."""
        if self.n_pos == 0 or self.n_neg == 0:
            have = "no defect pixels" if self.n_pos == 0 else "no defect-free pixels"
            raise UndefinedMetric(f"pixel AUROC undefined: the ground-truth masks have {have}")
        from sklearn.metrics import auc

        return _unit(auc(self.fp / self.n_neg, self.tp / self.n_pos))

    def average_precision(self) -> float:
        """Pixel AP: sum over thresholds of precision times the recall gained (scikit-learn's definition)."""
        if self.n_pos == 0:
            raise UndefinedMetric("pixel AP undefined: the ground-truth masks have no defect pixels")
        tp, fp = self.tp[1:], self.fp[1:]
        precision = tp / (tp + fp)
        recall_gain = np.diff(self.tp) / self.n_pos
        return _unit(np.sum(recall_gain * precision))

    def pro_curve(self, fpr_limit: float = DEFAULT_FPR_LIMIT) -> tuple[np.ndarray, np.ndarray]:
        """``(fpr, pro)`` from 0 up to ``fpr_limit``, the last point interpolated exactly at the limit."""
        if not 0.0 < fpr_limit <= 1.0:
            raise ReconadError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
        if self.pro is None or self.n_regions == 0:
            raise UndefinedMetric("pixel AUPRO undefined: the ground-truth masks have no defect regions")
        if self.n_neg == 0:
            raise UndefinedMetric("pixel AUPRO undefined: the ground-truth masks have no defect-free pixels")
        fpr = self.fp / self.n_neg
        end = int(np.searchsorted(fpr, fpr_limit, side="right"))  # fpr[:end] <= limit; fpr[-1] == 1
        x, y = fpr[:end], self.pro[:end]
        if x[-1] < fpr_limit:
            x0, x1, y0, y1 = fpr[end - 1], fpr[end], self.pro[end - 1], self.pro[end]
            y_lim = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
            x, y = np.append(x, fpr_limit), np.append(y, y_lim)
        return x, y

    def aupro(self, fpr_limit: float = DEFAULT_FPR_LIMIT) -> float:
        """Area under the PRO curve up to ``fpr_limit``, divided by ``fpr_limit``."""
        fpr, pro = self.pro_curve(fpr_limit)
        from sklearn.metrics import auc

        return _unit(auc(fpr, pro) / fpr_limit)


def _region_weights(masks: np.ndarray) -> tuple[np.ndarray, int]:
    """For each defect pixel (row-major over ``[N, H, W]``, as ``maps[masks]``): ``1 / (K * region size)``,
    with regions the 8-connected components of each image's mask and ``K`` their number over all images.
    A region's weights then sum to ``1 / K``, so the sum over pixels above a threshold is the mean PRO."""
    region_ids = []
    offset = 0
    for mask in masks:
        if not mask.any():
            continue
        lab, count = label_components(mask, connectivity=2, return_num=True)
        region_ids.append(lab[mask] + (offset - 1))  # 0-based, global
        offset += count
    if offset == 0:
        return np.zeros(0), 0
    ids = np.concatenate(region_ids)
    sizes = np.bincount(ids, minlength=offset)
    return 1.0 / (offset * sizes[ids]), offset


def pixel_auroc(masks: np.ndarray, maps: np.ndarray) -> float:
    """Pixel-level AUROC over all pixels of all images (good images contribute negatives)."""
    return PixelCurve.build(masks, maps, with_pro=False).auroc()


def pixel_ap(masks: np.ndarray, maps: np.ndarray) -> float:
    """Pixel-level average precision over all pixels of all images."""
    return PixelCurve.build(masks, maps, with_pro=False).average_precision()


def pro_curve(
    masks: np.ndarray, maps: np.ndarray, fpr_limit: float = DEFAULT_FPR_LIMIT
) -> tuple[np.ndarray, np.ndarray]:
    """The per-region-overlap curve ``(fpr, pro)`` up to ``fpr_limit`` (for plotting)."""
    return PixelCurve.build(masks, maps).pro_curve(fpr_limit)


def pixel_aupro(masks: np.ndarray, maps: np.ndarray, fpr_limit: float = DEFAULT_FPR_LIMIT) -> float:
    """Normalised area under the PRO curve up to ``fpr_limit`` (MVTec AD protocol), in [0, 1].

    For each threshold, PRO is the mean over ground-truth regions (8-connected components of each image's
    mask) of the fraction of the region's pixels scoring at or above it, and FPR the fraction of all
    defect-free pixels at or above it. PRO is integrated over FPR in ``[0, fpr_limit]`` by trapezoids.
    """
    return PixelCurve.build(masks, maps).aupro(fpr_limit)


# ---------------------------------------------------------------- summaries


def evaluate(
    labels: np.ndarray,
    scores: np.ndarray,
    masks: np.ndarray | None,
    maps: np.ndarray | None,
    fpr_limit: float = DEFAULT_FPR_LIMIT,
) -> dict:
    """All metrics of one test set: ``image_auroc, pixel_auroc, pixel_aupro, image_f1_max, pixel_ap`` (floats
    in [0, 1], or ``None`` where undefined), ``n_test``, and ``notes`` (why a value is ``None``) when any.

    ``masks`` (bool) and ``maps`` are ``[N, H, W]`` over all test images; ``None`` skips the pixel metrics.
    """
    y, s = _image_inputs(labels, scores)
    result: dict = dict.fromkeys(METRIC_KEYS)
    result["n_test"] = int(y.size)
    notes: list[str] = []

    def attempt(key: str, fn: Callable[..., float], *args: object) -> None:
        try:
            result[key] = fn(*args)
        except UndefinedMetric as err:
            notes.append(str(err))

    attempt("image_auroc", image_auroc, y, s)
    attempt("image_f1_max", image_f1_max, y, s)
    if masks is None or maps is None:
        notes.append("pixel metrics undefined: no ground-truth masks or no anomaly maps")
    else:
        if len(masks) != y.size or len(maps) != y.size:
            raise ReconadError(f"{y.size} labels but {len(masks)} masks and {len(maps)} maps")
        curve = PixelCurve.build(masks, maps)
        attempt("pixel_auroc", curve.auroc)
        attempt("pixel_ap", curve.average_precision)
        attempt("pixel_aupro", curve.aupro, fpr_limit)
    if notes:
        result["notes"] = list(dict.fromkeys(notes))
    return result


def by_defect_type(
    labels: np.ndarray,
    scores: np.ndarray,
    masks: np.ndarray | None,
    maps: np.ndarray | None,
    defects: Sequence[str],
    fpr_limit: float = DEFAULT_FPR_LIMIT,
) -> dict[str, dict]:
    """:func:`evaluate` once per defect type, on the good images plus that type's images (``defects``: one
    name per image, as the dataset names its defect folders; good images are those labelled 0)."""
    labels, scores, kinds = np.asarray(labels), np.asarray(scores), np.asarray(defects)
    good = labels == 0
    if kinds.shape != good.shape:
        raise ReconadError(f"{good.size} labels but {kinds.size} defect names")
    out = {}
    for kind in sorted(set(kinds[~good].tolist())):
        keep = good | (kinds == kind)
        out[kind] = evaluate(
            labels[keep],
            scores[keep],
            None if masks is None else masks[keep],
            None if maps is None else maps[keep],
            fpr_limit,
        )
    return out


def mean_metrics(per_category: dict[str, dict]) -> dict:
    """The mean of each of the five metrics over categories, ignoring ``None`` (``None`` if all are)."""
    out: dict = {}
    for key in METRIC_KEYS:
        values = [r[key] for r in per_category.values() if r.get(key) is not None]
        out[key] = float(np.mean(values)) if values else None
    return out
