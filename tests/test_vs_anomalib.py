"""reconad's metrics against anomalib's metric classes, and anomalib's PatchCore on reconad's backbone.

Needs the ``compare`` extra (anomalib); skipped without it, so the library's own suite never needs anomalib.
The bottle check also needs the shared data (``../shared/data``) and skips without it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("anomalib")
sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
from anomalib_peer import anomalib_metrics, patchcore  # noqa: E402

from reconad import pipeline  # noqa: E402
from reconad.data import load_sources  # noqa: E402
from reconad.features.extractor import FeatureExtractor  # noqa: E402
from reconad.metrics import evaluate  # noqa: E402

MVTEC = Path(__file__).parents[2] / "shared" / "data" / "mvtec_ad"
TOLERANCE = 1e-3


def assert_agree(labels: np.ndarray, scores: np.ndarray, masks: np.ndarray, maps: np.ndarray) -> None:
    ours = evaluate(labels, scores, masks, maps)
    theirs = anomalib_metrics(labels, scores, masks, maps)
    assert set(theirs) == {"image_auroc", "pixel_auroc", "pixel_aupro", "image_f1_max"}
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(value, abs=TOLERANCE), key


def test_metrics_agree_on_synthetic_maps() -> None:
    """Blob defects, noisy maps that partly find them, ties in the scores: the same four values."""
    rng = np.random.default_rng(0)
    n, size = 24, 48
    labels = np.array([0] * 10 + [1] * 14)
    masks = np.zeros((n, size, size), dtype=bool)
    yy, xx = np.mgrid[:size, :size]
    for i in np.flatnonzero(labels):
        for _ in range(rng.integers(1, 3)):  # one or two regions per defective image
            cy, cx, r = rng.integers(8, 40), rng.integers(8, 40), rng.integers(2, 7)
            masks[i] |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
    maps = rng.normal(size=(n, size, size)) + 1.5 * masks * rng.random((n, 1, 1))
    maps = np.round(maps, 1).astype(np.float32)  # coarse values: many ties
    scores = maps.max(axis=(1, 2)) + rng.normal(scale=0.3, size=n)
    assert_agree(labels, scores, masks, maps)


def test_anomalib_patchcore_sees_reconads_features() -> None:
    """The wheel's weights, the same levels and normalisation: identical backbone levels on one image."""
    extractor = FeatureExtractor(image_size=64)
    model = patchcore(extractor.backbone, extractor.layers, 64, coreset_ratio=0.1)
    image = torch.randint(0, 256, (1, 64, 64, 3), dtype=torch.uint8)
    net = extractor.net  # normalisation on the 0-255 scale, then the backbone's levels
    ours = extractor.model((image.permute(0, 3, 1, 2).float() - net.mean) / net.std)
    x = model.pre_processor.transform(image.permute(0, 3, 1, 2).float() / 255)
    theirs = model.model.feature_extractor(x)
    assert list(theirs) == list(extractor.layers)
    for a, b in zip(ours, theirs.values()):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)  # float rounding only


@pytest.mark.slow
@pytest.mark.skipif(not (MVTEC / "bottle").is_dir(), reason="needs ../shared/data/mvtec_ad/bottle")
def test_metrics_agree_on_a_bottle_run() -> None:
    """reconad PatchCore (1 % coreset) on MVTec AD bottle: its maps and scores, scored by both libraries."""
    data = load_sources([f"mvtec:{MVTEC}"], ["bottle"])
    extractor = FeatureExtractor()
    run = pipeline.fit("patchcore", data, extractor, params={"coreset_ratio": 0.01})
    result = pipeline.evaluate(run, data, extractor)["bottle"]
    assert_agree(result.labels, result.scores, result.masks, result.maps)
