"""``reconad fit patchcore|sgfr --unified``: one bank for every category's good images, saved under the run's
unified key, each category still with its own threshold from out-of-sample scores (each good image scored by
the bank without its own atoms, every category pooled); test, predict, serve and export go through it as
through a unified trained model."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import invoke
from test_export import assert_parity, resized_test_images

from reconad import pipeline
from reconad.data import load_sources
from reconad.data.synthetic import make_parts
from reconad.runfolder import UNIFIED
from reconad.runs import load_run, save_run
from reconad.serve.predictor import Predictor, Upload

CATEGORIES = ("alpha", "beta")


@pytest.fixture(scope="module")
def two_categories(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two synthetic MVTec-layout categories under one folder (8 train, 2 good + 3 defective test, 64 px)."""
    root = tmp_path_factory.mktemp("two")
    for i, name in enumerate(CATEGORIES):
        make_parts(root, n_train=8, n_test_good=2, n_test_bad=3, size=64, seed=i, category=name)
    return root


@pytest.mark.parametrize("name", ["patchcore", "sgfr"])
def test_one_bank_of_every_category_with_a_threshold_each(two_categories, extractor, tmp_path, name):
    data = load_sources([f"mvtec:{two_categories}"])
    params = {"coreset_ratio": 1.0, "nprobe": 0} if name == "patchcore" else {"sampling_ratio": 1.0}
    run = pipeline.fit(name, data, extractor, params=params, unified=True, warn=lambda _: None)
    assert list(run.models) == [UNIFIED] and run.config["unified"] is True
    h, w = extractor.level_hw[0]
    assert len(run.models[UNIFIED].bank_) == 2 * 8 * h * w  # every patch of both categories
    for c in CATEGORIES:
        cat = run.categories[c]
        assert cat["n_train"] == 8 and len(cat["operating"]["scores"]) == 8
        assert cat["operating"]["scores_from"] == "each image left out of the bank"
        assert cat["threshold"] >= max(cat["operating"]["scores"]) - 1e-6  # 8 images: the largest one
    assert run.categories["alpha"]["threshold"] != run.categories["beta"]["threshold"]
    save_run(run, tmp_path / "run")
    loaded = load_run(tmp_path / "run")
    feats = extractor(torch.from_numpy(resized_test_images(two_categories / "beta")))
    for c in CATEGORIES:
        expected = run.model_for(c).predict(feats)
        torch.testing.assert_close(loaded.model_for(c).predict(feats), expected)


def test_the_pooled_bank_scores_each_image_without_its_own_atoms(two_categories, extractor):
    """With a full bank and k = 1, an image's distance to a bank holding it would be 0 everywhere."""
    data = load_sources([f"mvtec:{two_categories}"])
    params = {"coreset_ratio": 1.0, "nprobe": 0}
    run = pipeline.fit("patchcore", data, extractor, params=params, unified=True, warn=lambda _: None)
    for c in CATEGORIES:
        assert min(run.categories[c]["operating"]["scores"]) > 0


def test_cli_fit_test_predict_serve_and_export(two_categories, tmp_path):
    run_dir, out = tmp_path / "run", tmp_path / "export"
    fitted = invoke(
        "fit", "patchcore", "-d", f"mvtec:{two_categories}", "--out", run_dir, "--unified", "--image-size",
        "64", "-p", "coreset_ratio=0.2",
    )  # fmt: skip
    assert fitted.exit_code == 0, fitted.output
    assert json.loads((run_dir / "run.json").read_text())["weights"] == {
        UNIFIED: "weights/unified.safetensors"
    }
    tested = invoke("test", run_dir, "--json", tmp_path / "results.json")
    assert tested.exit_code == 0, tested.output
    results = json.loads((tmp_path / "results.json").read_text())
    assert sorted(results["categories"]) == list(CATEGORIES)
    predicted = invoke(
        "predict", run_dir, two_categories / "beta" / "test" / "good", "-c", "beta", "--out", tmp_path / "p"
    )
    assert predicted.exit_code == 0, predicted.output
    with open(tmp_path / "p" / "scores.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 2
    image = (two_categories / "alpha" / "test" / "good" / "000.png").read_bytes()
    served = Predictor(run_dir).predict([Upload("000.png", image)], category="alpha")
    assert served[0]["threshold"] == load_run(run_dir).categories["alpha"]["threshold"]
    exported = invoke("export", run_dir, "--out", out)
    assert exported.exit_code == 0, exported.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["unified"] and {e["graph"] for e in manifest["categories"].values()} == {"unified.onnx"}
    assert_parity(run_dir, out, resized_test_images(two_categories / "alpha"))
    added = invoke("add", run_dir, two_categories / "alpha" / "test" / "good", "-c", "alpha")
    assert added.exit_code == 2 and "one model for every category" in added.output
    assert np.isfinite(served[0]["score"])


def test_bench_unified_keeps_one_bank_and_a_threshold_per_category(two_categories, tmp_path):
    out = tmp_path / "bench"
    result = invoke(
        "bench", "--model", "patchcore", "-d", f"mvtec:{two_categories}", "--out", out, "--unified",
        "--image-size", "64", "-p", "patchcore.coreset_ratio=0.2",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    run = json.loads((out / "runs" / "patchcore" / "run.json").read_text())
    assert run["unified"] and run["weights"] == {UNIFIED: "weights/unified.safetensors"}
    doc = json.loads((out / "results.json").read_text())
    assert doc["meta"]["arguments"]["unified"] is True
    assert sorted(doc["models"]["patchcore"]["categories"]) == list(CATEGORIES)
