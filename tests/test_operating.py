"""The operating point: the conformal threshold, verdict rates, and `reconad threshold`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from reconad.errors import ReconadError
from reconad.operating import conformal_threshold, pooled_verdicts, rate_note, supported_rate, verdict_rates


@pytest.mark.parametrize("rate", [0.01, 0.05, 0.2])
def test_the_conformal_rate_holds_on_fresh_draws(rate):
    """Calibrated on n good scores, a fresh good score exceeds the threshold with probability ≤ rate (and
    not far below it: the rule is tight), averaged over many calibrations."""
    rng = np.random.default_rng(0)
    n, trials = 200, 4000
    exceed = []
    for _ in range(trials):
        calib, fresh = rng.gamma(2.0, size=n), rng.gamma(2.0, size=50)
        exceed.append(np.mean(fresh > conformal_threshold(calib, rate).threshold))
    mean = float(np.mean(exceed))
    assert rate - 0.01 <= mean <= rate + 0.002, mean


def test_the_rule_picks_the_order_statistic():
    scores = np.arange(1.0, 20.0)  # 19 scores: (19 + 1) * 0.95 = 19 -> the 19th smallest, the largest
    point = conformal_threshold(scores[::-1], 0.05)
    assert point.threshold == 19.0 and point.bound == 0.05 and point.n == 19
    assert conformal_threshold(scores, 0.10).threshold == 18.0  # ceil(20 * 0.9) = 18
    assert rate_note("a", point) is None


def test_too_few_scores_use_the_largest_and_say_which_rate_they_support():
    point = conformal_threshold([1.0, 3.0, 2.0], 0.05)
    assert point.threshold == 3.0 and point.bound == supported_rate(3) == 0.25
    note = rate_note("bottle", point)
    assert "bottle" in note and "25.0%" in note and "5.0%" in note and "\n" not in note


def test_bad_inputs_are_refused():
    with pytest.raises(ReconadError, match="--false-reject"):
        conformal_threshold([1.0], 0.0)
    with pytest.raises(ReconadError, match="no good scores"):
        conformal_threshold([], 0.05)
    with pytest.raises(ReconadError, match="NaN"):
        conformal_threshold([1.0, float("nan")], 0.05)


def test_verdict_rates_count_false_rejects_and_escapes():
    labels = np.array([0, 0, 0, 0, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.9, 0.5, 0.5, 0.7, 0.3])
    v = verdict_rates(labels, scores, 0.5)  # anomalous: above 0.5
    assert (v["n_false_reject"], v["n_good"], v["n_escape"], v["n_defective"]) == (1, 4, 2, 3)
    assert v["false_reject_rate"] == 0.25 and v["escape_rate"] == pytest.approx(2 / 3)
    none = verdict_rates(np.zeros(2), np.zeros(2), 1.0)
    assert none["escape_rate"] is None and none["false_reject_rate"] == 0.0
    pooled = pooled_verdicts([v, none])
    assert pooled["n_good"] == 6 and pooled["false_reject_rate"] == pytest.approx(1 / 6)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, parts):
    """A patchcore run on the shared synthetic parts (tests/conftest.py)."""
    from reconad import pipeline
    from reconad.options import FitOptions

    out = tmp_path_factory.mktemp("op") / "run"
    options = FitOptions(image_size=64, no_cache=True)
    pipeline.fit_folder("patchcore", {"coreset_ratio": "0.1"}, [f"mvtec:{parts}"], None, out, options)
    return out


def test_fit_keeps_every_good_images_out_of_sample_score(small_run, parts):
    cat = next(iter(json.loads((small_run / "run.json").read_text())["categories"].values()))
    op = cat["operating"]
    n_train = len(list((parts / "train" / "good").glob("*.png")))
    assert cat["n_train"] == n_train == len(op["scores"]) == op["n"]
    assert (
        op["rule"] == "conformal"
        and op["target"] == 0.05
        and op["scores_from"] == "each image left out of the bank"
    )
    assert cat["threshold"] == conformal_threshold(op["scores"], 0.05).threshold


def test_threshold_modes(small_run, tmp_path, parts):
    import shutil

    from conftest import invoke

    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    config = lambda: next(iter(json.loads((run / "run.json").read_text())["categories"].values()))  # noqa: E731
    scores = config()["operating"]["scores"]
    result = invoke("threshold", run, "--false-reject", "0.2")
    assert result.exit_code == 0, result.output
    assert config()["threshold"] == conformal_threshold(scores, 0.2).threshold and "→" in result.stdout
    result = invoke("threshold", run, "--value", "123.5")
    assert (
        result.exit_code == 0 and config()["threshold"] == 123.5 and config()["operating"]["rule"] == "value"
    )
    assert f"0/{len(scores)} good rejected" in result.stdout
    labelled = tmp_path / "labelled"
    shutil.copytree(parts / "test" / "good", labelled / "good")
    for kind in (parts / "test").iterdir():
        if kind.name != "good":
            shutil.copytree(kind, labelled / "defective" / kind.name)
    result = invoke("threshold", run, "--labelled", labelled, "--false-reject", "0.1")
    assert result.exit_code == 0, result.output
    op = config()["operating"]
    assert op["rule"] == "labelled" and op["n"] == len(list((labelled / "good").iterdir()))
    assert "defective passed" in result.stdout
    bad_modes = (
        ["--value", "1", "--false-reject", "0.1"],
        [],
        ["--labelled", tmp_path / "nothing"],
        ["--value", "nan"],
        ["--value", "inf"],
        ["--labelled", labelled, "--false-reject", "1.5"],
    )
    for bad in bad_modes:
        before = (run / "run.json").read_text()
        result = invoke("threshold", run, *bad)
        assert result.exit_code == 2 and (run / "run.json").read_text() == before, result.output


def test_threshold_from_stored_scores_reads_run_json_without_torch(small_run, tmp_path):
    """`reconad threshold --false-reject` and `--value` import no torch (no features computed): a fresh
    process re-sets the threshold with torch unimportable."""
    import shutil
    import subprocess
    import sys

    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    code = (
        "import sys; sys.modules['torch'] = None; from reconad.cli import app; "
        f"app(['threshold', {str(run)!r}, '--false-reject', '0.2'])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    scores = next(iter(json.loads((run / "run.json").read_text())["categories"].values()))["operating"]
    assert scores["target"] == 0.2 and "→" in done.stdout


def test_fit_leaves_the_callers_model_unfitted(parts, extractor):
    """A model built once (:func:`reconad.pipeline.new_model`) can fit several runs: fit works on copies."""
    from reconad import pipeline
    from reconad.data import load_sources

    data = load_sources([f"mvtec:{parts}"])
    model = pipeline.new_model("patchcore", {"coreset_ratio": 0.05}, extractor)
    first = pipeline.fit(model, data, extractor)
    assert not hasattr(model, "bank_")
    second = pipeline.fit(model, data, extractor)
    assert first.models["synthetic_part"] is not second.models["synthetic_part"]
