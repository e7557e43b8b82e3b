"""Exported PatchCore and SGFR on MVTec AD bottle, default runs (an IVF search): the five metrics of the
graphs equal (to 4 decimals) those of the library. Skipped without ../shared/data."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconad import pipeline
from reconad.data import load_sources
from reconad.export.verify import export_metrics
from reconad.export.writer import export_run
from reconad.features.cache import FeatureCache
from reconad.features.extractor import FeatureExtractor
from reconad.metrics import METRIC_KEYS
from reconad.runs import load_run, save_run

DATA = Path(__file__).parents[2] / "shared" / "data"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (DATA / "mvtec_ad" / "bottle").is_dir(), reason=f"real data not found at {DATA}"),
]


@pytest.fixture(scope="module")
def bottle():
    return load_sources([f"mvtec:{DATA / 'mvtec_ad'}"], ["bottle"])


@pytest.fixture(scope="module")
def extractor() -> FeatureExtractor:
    return FeatureExtractor()  # the defaults: Lite0, 256 px


@pytest.mark.parametrize("model", ["patchcore", "sgfr"])
def test_bottle_metrics_of_the_export(tmp_path, bottle, extractor, model):
    cache = FeatureCache(extractor.key())
    run = pipeline.fit(model, bottle, extractor, cache=cache)
    save_run(run, tmp_path / "run")
    assert all(len(m.centroids_) > 0 for m in run.models.values()), "a default bottle run searches IVF lists"
    searched = export_run(tmp_path / "run", tmp_path / "export")["categories"]["bottle"]["search"]
    assert searched["kind"] == "ivf" and searched["nprobe"] < searched["lists"]
    library = pipeline.evaluate(load_run(tmp_path / "run"), bottle, extractor, cache=cache)
    exported = export_metrics(tmp_path / "export", bottle[0])
    for key in METRIC_KEYS:  # 5e-5: equal to 4 decimals
        got, want = exported[key], library["bottle"].metrics[key]
        assert abs(got - want) <= 5e-5, (key, got, want)
