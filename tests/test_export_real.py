"""Exported PatchCore and SGFR on MVTec AD bottle: the five metrics of the graphs equal the library's (exact
search) or stay within 0.001 of them (the default runs, whose library search is approximate). Skipped when
../shared/data is absent."""

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
from reconad.runs import save_run

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
@pytest.mark.parametrize(
    ("params", "tolerance"), [({"nprobe": 0}, 5e-5), ({}, 1e-3)], ids=["exact", "default"]
)
def test_bottle_metrics_of_the_export(tmp_path, bottle, extractor, model, params, tolerance):
    cache = FeatureCache(extractor.key())
    run = pipeline.fit(model, bottle, extractor, params=params, cache=cache)
    save_run(run, tmp_path / "run")
    export_run(tmp_path / "run", tmp_path / "export")
    library = pipeline.evaluate(run, bottle, extractor, cache=cache)["bottle"].metrics
    exported = export_metrics(tmp_path / "export", bottle[0])
    for key in METRIC_KEYS:  # 5e-5: equal to 4 decimals
        assert abs(exported[key] - library[key]) <= tolerance, (key, exported[key], library[key])
