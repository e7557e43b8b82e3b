"""``reconad test`` and ``predict`` stream: features are extracted, scored and written one batch at a time,
with the same results as scoring all the extracted features at once."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from conftest import CountingExtractor, good_images, invoke, write_bad

from reconad import inference, pipeline
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


def test_predict_error_rows_stay_in_input_order_across_batches(tmp_path, fitted_run):
    """Unreadable files first, at a batch's edge and last: each gets its row (error, no score) where it
    was in the input, among the scored rows of three batches."""
    good = good_images(tmp_path / "new", 34)
    bad = [write_bad("text_as_png", tmp_path / "bad" / str(i)) for i in range(3)]
    inputs = [bad[0], *good[:15], bad[1], *good[15:], bad[2]]
    out = tmp_path / "pred"
    result = invoke("predict", fitted_run, *inputs, "--out", out)
    assert result.exit_code == 1, result.output
    with open(out / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["path", "score", "is_anomalous", "overlay", "error"]
    assert [r["path"] for r in rows] == list(map(str, inputs))
    assert [bool(r["error"]) for r in rows] == [p in bad for p in inputs]
    assert all(bool(r["score"]) == bool(r["overlay"]) == (not r["error"]) for r in rows)


def test_interrupted_predict_leaves_no_scores_file(tmp_path, fitted_run, monkeypatch):
    real = inference.score_images

    def failing(*args, **kwargs):
        for i, scored in enumerate(real(*args, **kwargs)):
            if i == 20:
                raise KeyboardInterrupt
            yield scored

    monkeypatch.setattr(inference, "score_images", failing)
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

    from reconad.progress import RateColumn

    bars = Progress()
    task = bars.add_task("x", total=10, unit=unit)
    bars.tasks[task].finished_speed = speed
    assert RateColumn().render(bars.tasks[task]).plain == shown


def progress_lines_with_fake_clock():
    """A ``ProgressLines`` writing to a string, its log, and the list whose first item is the clock's time."""
    from io import StringIO

    from rich.console import Console

    from reconad.progress import ProgressLines

    log = StringIO()
    now = [0.0]
    return ProgressLines(Console(file=log, width=200), every=60.0, clock=lambda: now[0]), log, now


def test_progress_lines_in_a_log_start_tenths_and_end():
    """Without a terminal: a line at the start, at each tenth (not every update), and one at the end."""
    lines, log, now = progress_lines_with_fake_clock()
    for done in range(0, 101):
        now[0] = done * 0.5  # 2 images/s
        lines("features", done, 100)
    now[0] = 200.0
    lines("features", 100, 100)  # a repeated final update prints nothing more
    shown = log.getvalue().splitlines()
    assert len(shown) == 11 and shown[0] == "features: 0/100 images"
    assert shown[5] == "features: 50/100 images, 2.0 images/s, 0:00:25 left"
    assert shown[-1] == "features: 100/100 images, 2.0 images/s, 0:00:50 in all"


def test_progress_lines_after_a_quiet_minute_and_slow_units():
    lines, log, now = progress_lines_with_fake_clock()
    lines("fit rlr", 0, 1000, unit="epochs")
    now[0] = 90.0
    lines("fit rlr", 1, 1000, info="loss 0.5", unit="epochs")  # no new tenth, but 90 s since the last line
    now[0] = 100.0
    lines("fit rlr", 2, 1000, unit="epochs")  # 10 s later, same tenth: nothing
    shown = log.getvalue().splitlines()
    assert shown[1] == "fit rlr: 1/1000 epochs, 90.0 s/epoch, 1 day, 0:58:30 left, loss 0.5"
    assert len(shown) == 2
