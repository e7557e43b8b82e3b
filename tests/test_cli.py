"""The CLI on bad input: one clear line naming the culprit, exit code 2, no traceback, nothing half-written.
And on good input: the ``test --json`` schema of the README, ``predict`` skipping bad files, the demo."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    FIT_ARGS,
    SIZE,
    UNREADABLE,
    assert_clean_error,
    assert_nothing_written,
    good_images,
    invoke,
    write_bad,
)
from PIL import Image
from typer.testing import CliRunner

from reconad.cli import app
from reconad.errors import ReconadError
from reconad.runs import load_run

runner = CliRunner()


@pytest.fixture
def parts_copy(parts: Path, tmp_path: Path) -> Path:
    """A writable copy of the synthetic category (its images are already in the feature cache)."""
    return Path(shutil.copytree(parts, tmp_path / "data" / parts.name))


def fit(data: str, out: Path, *extra: object):
    return invoke("fit", "patchcore", "--data", data, "--out", out, *FIT_ARGS, *extra)


# --- fit: bad input -----------------------------------------------------------------------------------------


def test_fit_missing_path(tmp_path):
    out = tmp_path / "run"
    assert_clean_error(fit(f"mvtec:{tmp_path / 'nowhere'}", out), "nowhere")
    assert_nothing_written(out)


@pytest.mark.parametrize(
    ("spec", "words"),
    [("jpeg:somewhere", ["unknown data format 'jpeg'", "mvtec"]), ("somewhere", ["not FORMAT:PATH"])],
)
def test_fit_bad_source_spec(tmp_path, spec, words):
    out = tmp_path / "run"
    assert_clean_error(fit(spec, out), *words)
    assert_nothing_written(out)


def test_fit_unknown_model(tmp_path, parts):
    out = tmp_path / "run"
    result = invoke("fit", "nosuchmodel", "--data", f"mvtec:{parts}", "--out", out)
    assert_clean_error(result, "unknown model 'nosuchmodel'", "patchcore")
    assert_nothing_written(out)


@pytest.mark.parametrize(
    ("option", "words"),
    [
        (["--holdout", "0"], ["--holdout must be a number in (0, 1)", "got 0.0"]),
        (["--holdout", "1.5"], ["--holdout must be a number in (0, 1)"]),
        (["--image-size", "0"], ["--image-size must be an integer from 32 to 2048", "got 0"]),
        (["--image-size", "99999"], ["--image-size must be an integer from 32 to 2048", "got 99999"]),
        (["--seed", "-1"], ["--seed must be an integer from 0 to 2147483647", "got -1"]),
        (["--layers", "2,x"], ["--layers '2,x'"]),
        (["--layers", "3,2"], ["--layers must be backbone levels in increasing order"]),
        (["--layers", "-1"], ["--layers must be a list of integers >= 0"]),
        (["--param", "coreset_ratio=abc"], ["patchcore: coreset_ratio must be a number in (0, 1]", "'abc'"]),
        (["--layers", "9"], ["no feature levels (9,)"]),
        (["--param", "coreset_ratio"], ["--param 'coreset_ratio': expected key=value"]),
        (["--backbone", "nosuchnet"], ["unknown backbone 'nosuchnet'"]),
        (["--weights", "/nonexistent/w.safetensors"], ["weights file not found: /nonexistent/w.safetensors"]),
        (["--device", "gpu9"], ["--device 'gpu9'"]),
        (["--category", "nope"], ["category 'nope' not found", "synthetic_part"]),
    ],
)
def test_fit_bad_option(tmp_path, parts, option, words):
    out = tmp_path / "run"
    assert_clean_error(fit(f"mvtec:{parts}", out, *option), *words)
    assert_nothing_written(out)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present")
def test_fit_on_cuda_without_a_gpu(tmp_path, parts):
    out = tmp_path / "run"
    assert_clean_error(fit(f"mvtec:{parts}", out, "--device", "cuda"), "no CUDA GPU", "--device cpu")
    assert_nothing_written(out)


def test_fit_folder_without_images(tmp_path):
    (tmp_path / "part" / "good").mkdir(parents=True)
    (tmp_path / "part" / "good" / "readme.txt").write_text("no pictures here")
    out = tmp_path / "run"
    assert_clean_error(fit(f"folder:{tmp_path / 'part'}", out), "no images", str(tmp_path / "part" / "good"))
    assert_nothing_written(out)


def test_fit_empty_train_folder(tmp_path, parts_copy):
    shutil.rmtree(parts_copy / "train" / "good")
    (parts_copy / "train" / "good").mkdir()
    out = tmp_path / "run"
    assert_clean_error(fit(f"mvtec:{parts_copy}", out), "no images", "train/good")
    assert_nothing_written(out)


@pytest.mark.parametrize("kind", sorted(UNREADABLE))
def test_fit_unreadable_train_image(tmp_path, parts_copy, kind):
    bad = write_bad(kind, parts_copy / "train" / "good")
    out = tmp_path / "run"
    assert_clean_error(fit(f"mvtec:{parts_copy}", out), f"cannot read image {bad}")
    assert_nothing_written(out)


def test_fit_refuses_to_overwrite_a_folder_that_is_not_a_run(tmp_path, parts):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.txt").write_text("do not delete")
    assert_clean_error(fit(f"mvtec:{parts}", out), "not a reconad run", str(out))
    assert (out / "thesis.txt").read_text() == "do not delete"


def test_fit_refuses_to_replace_a_run_without_force(tmp_path, parts, copy_run, monkeypatch):
    """A second fit into a run folder is refused before any work (no backbone, no data read) unless --force;
    with it, the run is replaced."""
    import reconad.pipeline

    out = copy_run()
    before = sorted((p.relative_to(out), p.read_bytes()) for p in out.rglob("*") if p.is_file())

    def no_work(*args, **kwargs):
        raise AssertionError("work began before the --out check")

    with monkeypatch.context() as m:
        for name in ("FeatureExtractor", "load_sources"):
            m.setattr(reconad.pipeline, name, no_work)
        line = assert_clean_error(
            fit(f"mvtec:{parts}", out, "--seed", 1), str(out), "already holds a reconad run"
        )
    assert line.endswith("pass --force to replace it, or choose another --out")
    assert sorted((p.relative_to(out), p.read_bytes()) for p in out.rglob("*") if p.is_file()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no temporaries beside it
    result = fit(f"mvtec:{parts}", out, "--seed", 1, "--force")
    assert result.exit_code == 0, result.output
    assert load_run(out).config["seed"] == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["run"]


@pytest.mark.parametrize(
    ("command", "words"),
    [
        (["fit", "patchcore", "--data", "mvtec:{parts}", "--out", "{file}/run"], ["{file} is not a folder"]),
        (["predict", "{run}", "{parts}/test/good", "--out", "{file}"], ["{file} exists and is not a folder"]),
        (["test", "{run}", "--json", "{dir}"], ["{dir} exists and is a folder"]),
        (["test", "{run}", "--json", "{file}/m.json"], ["{file} is not a folder"]),
        (["test", "{run}", "--report", "{file}"], ["{file} exists and is not a folder"]),
    ],
    ids=["fit-out-under-a-file", "predict-out-is-a-file", "json-is-a-folder", "json-under-a-file", "report"],
)
def test_output_path_in_the_way(tmp_path, parts, fitted_run, command, words):
    """An output path that cannot be written is refused before any work (exit 2), and nothing is touched."""
    names = {"parts": parts, "run": fitted_run, "file": tmp_path / "a_file", "dir": tmp_path / "a_dir"}
    (tmp_path / "a_file").write_text("keep me")
    (tmp_path / "a_dir").mkdir()
    result = invoke(*(arg.format(**names) for arg in command))
    assert_clean_error(result, *(w.format(**names) for w in words))
    assert (tmp_path / "a_file").read_text() == "keep me" and not any((tmp_path / "a_dir").iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_dir", "a_file"]


def test_disk_full_while_saving_is_one_line(tmp_path, parts, monkeypatch):
    import reconad.runs

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(reconad.runs, "save_file", full)
    out = tmp_path / "run"
    assert_clean_error(fit(f"mvtec:{parts}", out), "No space left on device")
    assert_nothing_written(out)


def test_error_line_is_one_line_and_literal_for_odd_paths(tmp_path):
    """A long path is not wrapped, and brackets in it are printed, not read as rich markup."""
    odd = tmp_path / ("x" * 120) / "a[/b]" / "[bold]c"
    out = tmp_path / "run"
    line = assert_clean_error(fit(f"mvtec:{odd}", out), str(odd))
    assert line.endswith("<category>/test/<defect>")


def test_debug_shows_the_traceback(tmp_path):
    result = runner.invoke(
        app, ["--debug", "fit", "nosuchmodel", "--data", "mvtec:x", "--out", tmp_path / "r"]
    )
    assert isinstance(result.exception, ReconadError)  # propagates: Python prints the full traceback
    assert "unknown model" in str(result.exception)


def test_real_process_exit_code_and_stderr(tmp_path):
    """As a user sees it: exit status 2 and exactly one line on stderr, no traceback."""
    cmd = [
        sys.executable,
        "-m",
        "reconad.cli",
        "--quiet",
        "fit",
        "patchcore",
        "--data",
        f"mvtec:{tmp_path}/no",
    ]
    proc = subprocess.run([*cmd, "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"error: no MVTec AD layout at {tmp_path}/no: "
        "expected <category>/train/good and <category>/test/<defect>"
    ]
    assert_nothing_written(tmp_path / "run")


# --- test: bad input and undefined metrics ------------------------------------------------------------------


def test_test_a_run_from_another_folder(tmp_path, parts, copy_run, monkeypatch):
    """A run fitted on a relative data path stores it absolute, so ``reconad test RUN`` works from any
    folder; an older run that stored a relative path still reads it against the current folder."""
    monkeypatch.chdir(parts.parent)
    assert fit(f"mvtec:{parts.name}", tmp_path / "fitted").exit_code == 0
    assert load_run(tmp_path / "fitted").categories["synthetic_part"]["source"] == f"mvtec:{parts}"
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    result = invoke("test", tmp_path / "fitted", "--json", tmp_path / "m.json")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "m.json").read_text())["categories"]["synthetic_part"]["n_test"] == 10
    old = copy_run()
    config = json.loads((old / "run.json").read_text())
    config["categories"]["synthetic_part"]["source"] = f"mvtec:{parts.name}"
    (old / "run.json").write_text(json.dumps(config))
    monkeypatch.chdir(parts.parent)
    assert invoke("test", old).exit_code == 0


def test_test_missing_run(tmp_path):
    assert_clean_error(invoke("test", tmp_path / "nope"), "not a reconad run", "nope")


def test_test_mask_of_another_size(tmp_path, parts_copy, fitted_run):
    mask = sorted((parts_copy / "ground_truth" / "blob").iterdir())[0]
    Image.new("L", (40, 30)).save(mask)
    report = tmp_path / "m.json"
    result = invoke("test", fitted_run, "--data", f"mvtec:{parts_copy}", "--json", report)
    assert_clean_error(result, f"mask {mask}", "40×30", "64×64")
    assert_nothing_written(report)


def test_test_category_without_defective_images(tmp_path, parts_copy, fitted_run):
    for defect in ("scratch", "blob", "missing"):
        shutil.rmtree(parts_copy / "test" / defect)
    report = tmp_path / "m.json"
    result = invoke("test", fitted_run, "--data", f"mvtec:{parts_copy}", "--json", report)
    assert result.exit_code == 0, result.output
    assert "note" in result.stdout
    m = json.loads(report.read_text())["categories"]["synthetic_part"]
    assert m["n_test"] == 4
    for key in ("image_auroc", "pixel_auroc", "pixel_aupro", "image_f1_max", "pixel_ap"):
        assert m[key] is None
    assert m["notes"] and all(isinstance(n, str) and n for n in m["notes"])
    assert json.loads(report.read_text())["mean"]["image_auroc"] is None


def test_test_json_schema(tmp_path, fitted_run):
    """``reconad test RUN --json`` writes exactly the README's document."""
    report = tmp_path / "out" / "m.json"
    result = invoke("test", fitted_run, "--json", report)
    assert result.exit_code == 0, result.output
    doc = json.loads(report.read_text())
    assert set(doc) == {
        "model",
        "backbone",
        "image_size",
        "categories",
        "mean",
        "fit_seconds",
        "predict_images_per_second",
        "model_bytes",
        "verdicts",
    }
    metric_keys = {"image_auroc", "pixel_auroc", "pixel_aupro", "image_f1_max", "pixel_ap"}
    assert (doc["model"], doc["backbone"], doc["image_size"]) == ("patchcore", "tf_efficientnet_lite0", 64)
    assert list(doc["categories"]) == ["synthetic_part"]
    m = doc["categories"]["synthetic_part"]
    assert set(m) == metric_keys | {"n_test", "verdicts", "operating"}  # every metric defined here: no notes
    verdicts = m["verdicts"]
    assert verdicts == doc["verdicts"] | {"threshold": verdicts["threshold"]}  # one category: the pooled ones
    assert (verdicts["n_good"], verdicts["n_defective"]) == (4, 6)
    assert verdicts["false_reject_rate"] == verdicts["n_false_reject"] / 4
    assert m["operating"]["rule"] == "conformal" and "scores" not in m["operating"]
    assert m["n_test"] == 10 and isinstance(m["n_test"], int)
    assert set(doc["mean"]) == metric_keys
    for key in metric_keys:
        for value in (m[key], doc["mean"][key]):
            assert isinstance(value, float) and 0.0 <= value <= 1.0
        assert doc["mean"][key] == m[key]  # one category: its mean is itself
    assert isinstance(doc["fit_seconds"], float) and doc["fit_seconds"] > 0
    assert isinstance(doc["predict_images_per_second"], float) and doc["predict_images_per_second"] > 0
    weights = list((fitted_run / "weights").iterdir())
    assert doc["model_bytes"] == sum(p.stat().st_size for p in weights)
    assert m["image_auroc"] > 0.5  # and the numbers mean something: drawn defects are found


# --- predict -----------------------------------------------------------------------------------------------


def test_predict_skips_bad_files_and_scores_the_rest(tmp_path, fitted_run):
    folder = tmp_path / "new"
    good = good_images(folder, 3)
    bad = [write_bad("text_as_png", folder), write_bad("truncated_jpeg", folder)]
    out = tmp_path / "pred"
    result = invoke("predict", fitted_run, folder, "--out", out)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    skipped = [line for line in result.stderr.splitlines() if line.startswith("skipped ")]
    assert len(skipped) == 2
    assert all(any(str(b) in line for line in skipped) for b in bad)
    assert "2 of 5 images could not be read" in result.stderr
    with open(out / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["path"] for r in rows] == sorted(map(str, [*good, *bad]))  # every file, in input order
    for r in rows:
        if r["path"] in {str(b) for b in bad}:  # an error row: the one-line message, no score or overlay
            assert (r["score"], r["is_anomalous"], r["overlay"]) == ("", "", "")
            assert r["error"].startswith(f"cannot read image {r['path']}") and "\n" not in r["error"]
            assert f"skipped {r['error']}" in skipped
            continue
        assert float(r["score"]) >= 0 and r["is_anomalous"] in ("0", "1") and r["error"] == ""
        overlay = np.asarray(Image.open(out / r["overlay"]))
        assert overlay.shape == (48, 48, 3)  # drawn at the original image size
    overlays = [r["overlay"] for r in rows if r["overlay"]]
    assert sorted(p.name for p in out.iterdir()) == sorted([*overlays, "scores.csv"])
    umask = os.umask(0)
    os.umask(umask)
    assert {p.stat().st_mode & 0o777 for p in out.iterdir()} == {0o666 & ~umask}


def test_predict_refuses_to_replace_scores_without_force(tmp_path, fitted_run, monkeypatch):
    """``predict`` into a folder that holds a scores.csv is refused before the run is loaded unless --force;
    with it, the table is replaced."""
    import reconad.inference

    images = good_images(tmp_path / "new", 2)
    out = tmp_path / "pred"
    out.mkdir()
    (out / "scores.csv").write_text("path,score\nyesterday.png,1\n")
    (out / "notes.txt").write_text("keep")

    def no_work(*args, **kwargs):
        raise AssertionError("work began before the --out check")

    with monkeypatch.context() as m:
        m.setattr(reconad.inference, "load_run", no_work)
        line = assert_clean_error(
            invoke("predict", fitted_run, images[0], "--out", out), str(out / "scores.csv")
        )
    assert line.endswith("pass --force to replace it, or choose another --out")
    assert (out / "scores.csv").read_text() == "path,score\nyesterday.png,1\n"
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "scores.csv"]
    result = invoke("predict", fitted_run, *images, "--out", out, "--force")
    assert result.exit_code == 0, result.output
    with open(out / "scores.csv", newline="") as f:
        assert [r["path"] for r in csv.DictReader(f)] == list(map(str, images))
    assert (out / "notes.txt").read_text() == "keep"


def test_predict_missing_input(tmp_path, fitted_run):
    result = invoke("predict", fitted_run, tmp_path / "ghost.png", "--out", tmp_path / "pred")
    assert_clean_error(result, "no such file or folder", "ghost.png")
    assert_nothing_written(tmp_path / "pred")


def test_predict_non_utf8_names(tmp_path, fitted_run):
    """File names that are not valid UTF-8 are scored and written to scores.csv without a crash."""
    folder = tmp_path / "new"
    path = write_bad("non_utf8_name", folder)
    out = tmp_path / "pred"
    result = invoke("predict", fitted_run, folder, "--out", out)
    assert result.exit_code == 0, result.output
    raw = (out / "scores.csv").read_bytes()
    assert os.fsencode(path) in raw


# --- demo ---------------------------------------------------------------------------------------------------


def test_demo_small(tmp_path, monkeypatch):
    """The demo's whole path (generate, fit, test, metrics.json, overlays) on a shrunken synthetic set."""
    import reconad.data.synthetic as synthetic

    real = synthetic.make_parts

    def small(root, **kw):
        return real(root, n_train=10, n_test_good=2, n_test_bad=3, size=64, seed=0)

    monkeypatch.setattr(synthetic, "make_parts", small)
    out = tmp_path / "demo"
    result = invoke("demo", "--out", out)
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["model"] == "patchcore" and doc["categories"]["synthetic_part"]["n_test"] == 5
    assert load_run(out / "run-patchcore").categories["synthetic_part"]["n_train"] == 10  # every good image
    overlays = list((out / "overlays").glob("*.png"))
    assert overlays and all(np.asarray(Image.open(p)).shape == (256, 256, 3) for p in overlays)


@pytest.mark.slow
def test_demo_as_documented(tmp_path):
    """``reconad demo`` exactly as the README runs it (about a minute on 2 cores)."""
    proc = subprocess.run(
        [sys.executable, "-m", "reconad.cli", "--quiet", "demo", "--out", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert doc["categories"]["synthetic_part"]["image_auroc"] > 0.9


def test_test_by_defect_type(tmp_path, parts, fitted_run):
    report = tmp_path / "m.json"
    result = invoke("test", fitted_run, "--by-defect", "--json", report)
    assert result.exit_code == 0, result.output
    assert "each defect type with the good images" in result.stdout
    m = json.loads(report.read_text())["categories"]["synthetic_part"]
    counts = {d.name: len(list(d.iterdir())) for d in (parts / "test").iterdir()}
    assert set(m["defect_types"]) == set(counts) - {"good"}
    for defect, metrics in m["defect_types"].items():
        assert metrics["n_test"] == counts["good"] + counts[defect]
        assert 0.0 <= metrics["pixel_auroc"] <= 1.0
    plain = tmp_path / "plain.json"
    assert invoke("test", fitted_run, "--json", plain).exit_code == 0
    assert "defect_types" not in json.loads(plain.read_text())["categories"]["synthetic_part"]


# --- bench -------------------------------------------------------------------------------------------------


def test_bench_takes_fits_feature_options(tmp_path, parts):
    """``reconad bench`` accepts ``fit``'s feature options (backbone, weights, image size, layers,
    holdout) and records them; a bad one fails before any work, as in ``fit``."""
    out = tmp_path / "bench"
    result = invoke(
        "-q", "bench", "--model", "patchcore", "--data", f"mvtec:{parts}", "--out", out,
        "--param", "patchcore.coreset_ratio=0.05", "--image-size", SIZE, "--layers", "2,3", "--holdout", 0.2,
        "--backbone", "tf_efficientnet_lite0",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    args = json.loads((out / "results.json").read_text())["meta"]["arguments"]
    assert (args["image_size"], args["layers"], args["holdout"]) == (SIZE, [2, 3], 0.2)
    assert args["backbone"] == "tf_efficientnet_lite0" and args["weights"] is None
    bad = tmp_path / "bad"
    assert_clean_error(
        invoke("bench", "--model", "patchcore", "--data", f"mvtec:{parts}", "--out", bad, "--layers", "2,x"),
        "--layers '2,x'",
    )
    assert_nothing_written(bad)
