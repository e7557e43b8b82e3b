import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.ndimage import label as nd_label
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score, roc_curve

from reconad.errors import ReconadError
from reconad.metrics import (
    METRIC_KEYS,
    by_defect_type,
    evaluate,
    image_auroc,
    image_f1_max,
    mean_metrics,
    pixel_ap,
    pixel_aupro,
    pixel_auroc,
    pro_curve,
    roc_curve_points,
)


def random_case(seed: int, n: int = 6, size: int = 16, levels: int = 12):
    """Masks with a few rectangles on half the images; coarse integer maps (many ties) that favour defects."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), bool)
    for i in range(n // 2):
        for _ in range(2):
            r, c = rng.integers(0, size - 3, 2)
            h, w = rng.integers(1, 5, 2)
            masks[i, r : r + h, c : c + w] = True
    maps = rng.integers(0, levels, (n, size, size)) + 4 * masks * rng.random((n, size, size))
    maps = np.round(maps).astype(np.float32)
    labels = masks.reshape(n, -1).any(1).astype(int)
    scores = maps.reshape(n, -1).max(1)
    return labels, scores, masks, maps


def reference_aupro(masks, maps, limit):
    """Slow, direct PRO curve: one pass per distinct threshold, scipy labelling, exact piecewise integral."""
    eight = np.ones((3, 3), int)
    regions = []
    for m, a in zip(masks, maps, strict=True):
        lab, k = nd_label(m, structure=eight)
        regions += [a[lab == j] for j in range(1, k + 1)]
    neg = maps[~masks]
    points = [(0.0, 0.0)]
    for t in np.unique(maps)[::-1]:
        points.append(((neg >= t).mean(), np.mean([(r >= t).mean() for r in regions])))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:], strict=True):
        if x0 >= limit or x1 == x0:
            continue
        x_end = min(x1, limit)
        y_end = y0 + (y1 - y0) * (x_end - x0) / (x1 - x0)
        area += (x_end - x0) * (y0 + y_end) / 2
    return area / limit


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_sklearn_and_reference(seed):
    labels, scores, masks, maps = random_case(seed)
    assert image_auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    best_f1 = max(f1_score(labels, scores >= t) for t in np.unique(scores))
    assert image_f1_max(labels, scores) == pytest.approx(best_f1, abs=1e-12)
    fpr, tpr = roc_curve_points(labels, scores)
    ref_fpr, ref_tpr, _ = roc_curve(labels, scores)
    np.testing.assert_allclose(fpr, ref_fpr)
    np.testing.assert_allclose(tpr, ref_tpr)
    assert pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)
    assert pixel_ap(masks, maps) == pytest.approx(
        average_precision_score(masks.ravel(), maps.ravel()), abs=1e-12
    )
    for limit in (0.3, 0.05, 1.0):
        assert pixel_aupro(masks, maps, limit) == pytest.approx(
            reference_aupro(masks, maps, limit), abs=1e-12
        )


def test_aupro_hand_computed():
    # Image A: region R1 = {(0,0), (0,1)}, scores 9 and 3; negatives 8, 1, 0, 3.
    # Image B: region R2 = {(1,2)}, score 9; negatives 5, 0, 0, 0, 0.   9 negatives, 2 regions in all.
    # Thresholds, from the top:  t=9: FPR 0,   PRO = (1/2 + 1)/2 = 0.75
    #   t=8: FPR 1/9, PRO 0.75;  t=5: FPR 2/9, PRO 0.75;  t=3 (R1's 2nd pixel tied with a negative):
    #   FPR 3/9, PRO 1.  At FPR 0.3 = 2.7/9 the last segment gives PRO 0.75 + 0.25 * 0.7 = 0.925.
    # Area = 0.75 * 2/9 + (0.7/9) * (0.75 + 0.925)/2 = 2.08625/9;  AUPRO = area / 0.3 = 2.08625/2.7.
    masks = np.array([[[1, 1, 0], [0, 0, 0]], [[0, 0, 0], [0, 0, 1]]], bool)
    maps = np.array([[[9, 3, 8], [1, 0, 3]], [[5, 0, 0], [0, 0, 9]]], float)
    assert pixel_aupro(masks, maps) == pytest.approx(2.08625 / 2.7, abs=1e-12)
    fpr, pro = pro_curve(masks, maps)
    assert fpr[-1] == pytest.approx(0.3) and pro[-1] == pytest.approx(0.925)
    np.testing.assert_allclose(fpr[:2], [0.0, 0.0])
    np.testing.assert_allclose(pro[:2], [0.0, 0.75])


def test_regions_are_8_connected():
    # (0,1) touches (1,2) only diagonally: one region of 3 pixels (4-connectivity would give 2 regions).
    masks = np.array([[[1, 1, 0], [0, 0, 1]]], bool)
    maps = np.array([[[2, 2, 0], [0, 1, 5]]], float)
    _, pro = pro_curve(masks, maps)
    assert pro[1] == pytest.approx(1 / 3)  # 4-connectivity would give mean(0, 1) = 0.5


def test_perfect_maps_score_one_everywhere():
    labels, _, masks, _ = random_case(3)
    maps = masks.astype(np.float32)
    scores = labels.astype(float)
    result = evaluate(labels, scores, masks, maps)
    assert set(result) == {*METRIC_KEYS, "n_test"}
    for key in METRIC_KEYS:
        assert result[key] == pytest.approx(1.0)
    assert result["n_test"] == len(labels) and isinstance(result["n_test"], int)


def test_undefined_metrics_are_none_with_notes():
    labels, scores, masks, maps = random_case(4)
    good = labels == 0
    only_good = evaluate(labels[good], scores[good], masks[good], maps[good])
    assert all(only_good[k] is None for k in METRIC_KEYS)
    notes = " ".join(only_good["notes"])
    assert "only good images" in notes and "no defect pixels" in notes

    only_bad = evaluate(labels[~good], scores[~good], masks[~good], maps[~good])
    assert only_bad["image_auroc"] is None and only_bad["image_f1_max"] == pytest.approx(1.0)
    assert only_bad["pixel_auroc"] is not None
    assert any("only anomalous images" in n for n in only_bad["notes"])

    no_masks = evaluate(labels, scores, None, None)
    assert no_masks["image_auroc"] is not None and no_masks["pixel_aupro"] is None
    assert any("no ground-truth masks" in n for n in no_masks["notes"])

    # Every pixel a defect: no negatives, so pixel AUROC / AUPRO are undefined, AP is 1.
    full = np.ones_like(masks[:2])
    r = evaluate(np.array([1, 0]), scores[:2], full, maps[:2])
    assert r["pixel_auroc"] is None and r["pixel_aupro"] is None and r["pixel_ap"] == pytest.approx(1.0)


def test_bad_inputs_raise_reconad_error():
    labels, scores, masks, maps = random_case(5)
    with pytest.raises(ReconadError, match="differ in length"):
        image_auroc(labels[:-1], scores)
    with pytest.raises(ReconadError, match="0 \\(good\\) or 1"):
        image_auroc(labels * 2, scores)
    with pytest.raises(ReconadError, match=r"\[N, H, W\]"):
        pixel_auroc(masks[:, :-1], maps)
    bad = maps.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ReconadError, match="NaN"):
        evaluate(labels, scores, masks, bad)
    with pytest.raises(ReconadError, match="fpr_limit"):
        pixel_aupro(masks, maps, fpr_limit=0.0)


def test_mean_metrics_ignores_none():
    per = {
        "a": {
            "image_auroc": 0.8,
            "pixel_auroc": None,
            "pixel_aupro": 0.5,
            "image_f1_max": 1.0,
            "pixel_ap": None,
        },
        "b": {
            "image_auroc": 0.6,
            "pixel_auroc": None,
            "pixel_aupro": 0.7,
            "image_f1_max": 0.5,
            "pixel_ap": 0.2,
        },
    }
    assert mean_metrics(per) == pytest.approx(
        {"image_auroc": 0.7, "pixel_auroc": None, "pixel_aupro": 0.6, "image_f1_max": 0.75, "pixel_ap": 0.2}
    )


# ---------------------------------------------------------------- properties

small_cases = st.integers(0, 10_000).map(lambda seed: random_case(seed, n=4, size=10, levels=6))


@settings(max_examples=40, deadline=None)
@given(small_cases)
def test_auroc_of_negated_scores_is_complement(case):
    labels, scores, masks, maps = case
    assert image_auroc(labels, -scores) == pytest.approx(1 - image_auroc(labels, scores), abs=1e-12)
    assert pixel_auroc(masks, -maps) == pytest.approx(1 - pixel_auroc(masks, maps), abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(small_cases, st.sampled_from([0.01, 0.1, 0.3, 1.0]))
def test_aupro_in_unit_interval(case, limit):
    _, _, masks, maps = case
    assert 0.0 <= pixel_aupro(masks, maps, limit) <= 1.0
    assert 0.0 <= pixel_aupro(masks, -maps, limit) <= 1.0


@settings(max_examples=30, deadline=None)
@given(small_cases, st.sampled_from([np.exp, lambda x: x**3 + 2 * x, lambda x: 10 * x - 7]))
def test_all_metrics_invariant_to_increasing_transforms(case, transform):
    labels, scores, masks, maps = case  # integer-valued, so transforms keep distinct values distinct
    before = evaluate(labels, scores, masks, maps)
    after = evaluate(labels, transform(scores.astype(float)), masks, transform(maps.astype(float)))
    assert after == pytest.approx(before, abs=1e-12)


def test_by_defect_type_scores_each_type_against_the_good_images():
    rng = np.random.default_rng(0)
    defects = ["good"] * 4 + ["scratch"] * 3 + ["blob"] * 3
    labels = np.array([d != "good" for d in defects], dtype=int)
    masks = np.zeros((10, 8, 8), dtype=bool)
    masks[4:, 2:5, 2:5] = True
    maps = rng.random((10, 8, 8))
    maps[4:7][masks[4:7]] += 2.0  # scratches are found, blobs are noise
    scores = maps.reshape(10, -1).max(axis=1)
    out = by_defect_type(labels, scores, masks, maps, defects)
    assert list(out) == ["blob", "scratch"]  # every defect type, sorted; never "good"
    assert out["scratch"]["pixel_auroc"] == 1.0 and out["scratch"]["n_test"] == 7
    assert out["blob"]["pixel_auroc"] < 0.8
    keep = np.r_[0:4, 7:10]  # the good images and the blobs, as evaluate() would score them
    assert out["blob"] == evaluate(labels[keep], scores[keep], masks[keep], maps[keep])
    no_pixels = by_defect_type(labels, scores, None, None, defects)
    assert no_pixels["scratch"]["pixel_auroc"] is None and no_pixels["scratch"]["image_auroc"] == 1.0
    with pytest.raises(ReconadError, match="defect names"):
        by_defect_type(labels, scores, masks, maps, defects[:-1])
