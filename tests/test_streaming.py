"""``reconad test`` and ``predict`` stream: features are extracted, scored and written one batch at a time,
with the same results as scoring all the extracted features at once."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from conftest import CountingExtractor, good_images, invoke

from reconad import pipeline
from reconad.data import load_sources
from reconad.runs import load_run


def test_features_are_extracted_one_batch_at_a_time(parts, extractor):
    samples = load_sources([f"mvtec:{parts}"])[0].train
    counting = CountingExtractor(extractor)
    stream = pipeline.stream_features(samples, counting, batch_size=4)
    first, _ = next(stream)
    assert counting.calls == 4  # one batch, not the whole list
    rest = [f for f, _ in stream]
    assert counting.calls == len(samples) == 1 + len(rest)
    every = pipeline.extract(samples, extractor, batch_size=4).features
    assert torch.equal(torch.stack([first, *rest]), every)


def test_streamed_test_scores_exactly_like_extracted_features(parts, extractor, fitted_run, monkeypatch):
    monkeypatch.setattr(pipeline, "SCORE_BATCH", 4)  # several scoring batches, the last one short
    run = load_run(fitted_run)
    category = load_sources([f"mvtec:{parts}"])[0]
    streamed = pipeline.evaluate(run, [category], extractor)[category.name]
    ext = pipeline.extract(category.test, extractor, with_masks=True)
    held = pipeline.evaluate_features(run, category.name, category.test, ext)
    assert np.array_equal(streamed.maps, held.maps) and np.array_equal(streamed.scores, held.scores)
    assert np.array_equal(streamed.masks, held.masks) and streamed.masks.any()
    assert streamed.metrics == held.metrics


def test_predict_over_many_batches_writes_every_row_in_order(tmp_path, fitted_run):
    paths = good_images(tmp_path / "new", 37)  # two full batches of 16 and a short one
    out = tmp_path / "pred"
    result = invoke("predict", fitted_run, tmp_path / "new", "--out", out)
    assert result.exit_code == 0, result.output
    assert "images/s" in result.stdout
    with open(out / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["path"] for r in rows] == [str(p) for p in paths]
    assert all((out / r["overlay"]).is_file() for r in rows)


def test_interrupted_predict_leaves_no_scores_file(tmp_path, fitted_run, monkeypatch):
    real = pipeline.score_images

    def failing(*args, **kwargs):
        for i, scored in enumerate(real(*args, **kwargs)):
            if i == 20:
                raise KeyboardInterrupt
            yield scored

    monkeypatch.setattr(pipeline, "score_images", failing)
    good_images(tmp_path / "new", 37)
    out = tmp_path / "pred"
    result = invoke("predict", fitted_run, tmp_path / "new", "--out", out)
    assert result.exit_code == 130, result.output
    assert not (out / "scores.csv").exists()
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary left behind


@pytest.mark.parametrize(
    ("speed", "unit", "shown"), [(41.23, "images", "41.2 images/s"), (0.08, "epochs", "12.5 s/epoch")]
)
def test_progress_rate_column(speed, unit, shown):
    from rich.progress import Progress

    from reconad.cli import RateColumn

    bars = Progress()
    task = bars.add_task("x", total=10, unit=unit)
    bars.tasks[task].finished_speed = speed
    assert RateColumn().render(bars.tasks[task]).plain == shown
