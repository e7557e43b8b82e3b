"""One decoding from fit to everywhere: the range of >8-bit data measured on the good training images (or
``--bit-depth``) and ``--max-pixels`` are stored in ``run.json`` and applied alike by predict, serve and an
export's predict.py."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
from conftest import FIT_ARGS, assert_clean_error, invoke
from PIL import Image

from reconad.image_runtime import read_pixels

LOW, SPAN = 200, 3000  # 12-bit data that fills 200 … 3200 of its 16-bit container


@pytest.fixture(scope="module")
def deep_parts(parts: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """:func:`parts` with every image (not the masks) as a 16-bit colour PNG of 12-bit data."""
    root = tmp_path_factory.mktemp("deep") / parts.name
    shutil.copytree(parts, root)
    for path in [*root.glob("train/*/*.png"), *root.glob("test/*/*.png")]:
        eight = np.asarray(Image.open(path).convert("RGB")).astype(np.float64)
        path.write_bytes(imagecodecs.png_encode(np.round(LOW + eight * SPAN / 255).astype(np.uint16)))
    return root


@pytest.fixture(scope="module")
def deep_run(deep_parts: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("deep-run") / "run"
    result = invoke("fit", "patchcore", "--data", f"mvtec:{deep_parts}", "--out", out, *FIT_ARGS)
    assert result.exit_code == 0, result.output
    return out


def _scores(csv_file: Path) -> dict[str, float]:
    with open(csv_file, newline="") as f:
        return {Path(r["path"]).name: float(r["score"]) for r in csv.DictReader(f)}


def _default_decoding_scores(run_dir: Path, paths: list[Path]) -> list[float]:
    from reconad import inference
    from reconad.features.extractor import FeatureExtractor
    from reconad.image_runtime import DECODING
    from reconad.runs import load_run

    run = load_run(run_dir)
    extractor = FeatureExtractor.from_config(run.config["features"]).with_decoding(DECODING)
    return [s.score for s in inference.score_images(run, extractor, paths, next(iter(run.categories)))]


def test_measured_range_stored_in_the_run(deep_parts: Path, deep_run: Path):
    train = [read_pixels(p) for p in deep_parts.glob("train/good/*.png")]
    config = json.loads((deep_run / "run.json").read_text())
    decoding = config["features"]["decoding"]
    assert decoding["levels"] == [min(int(a.min()) for a in train), max(int(a.max()) for a in train)]
    assert decoding["levels_from"] == f"measured on {len(train)} good training images"


def test_predict_serve_and_export_apply_the_stored_range(deep_parts: Path, deep_run: Path, tmp_path: Path):
    from reconad.serve.predictor import Predictor, Upload

    images = sorted(deep_parts.glob("test/*/*.png"))
    flat = tmp_path / "images"  # one folder: names unique for the comparison
    flat.mkdir()
    for p in images:
        shutil.copyfile(p, flat / f"{p.parent.name}_{p.name}")
    assert invoke("predict", deep_run, flat, "--out", tmp_path / "pred").exit_code == 0
    library = _scores(tmp_path / "pred" / "scores.csv")
    assert _default_decoding_scores(deep_run, sorted(flat.iterdir())) != pytest.approx(
        [library[n] for n in sorted(library)], rel=0.05
    )  # the stored range was applied: the container's range (nearly black images) scores otherwise

    served = Predictor(deep_run).predict([Upload(p.name, p.read_bytes()) for p in sorted(flat.iterdir())])
    np.testing.assert_allclose([r["score"] for r in served], [library[n] for n in sorted(library)], rtol=1e-4)

    assert invoke("export", deep_run, "--out", tmp_path / "export").exit_code == 0
    manifest = json.loads((tmp_path / "export" / "manifest.json").read_text())
    assert (
        manifest["features"]["decoding"]
        == json.loads((deep_run / "run.json").read_text())["features"]["decoding"]
    )
    script = [
        sys.executable,
        str(tmp_path / "export" / "predict.py"),
        str(flat),
        "--out",
        str(tmp_path / "x"),
    ]
    done = subprocess.run(script, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    exported = _scores(tmp_path / "x" / "scores.csv")
    assert exported.keys() == library.keys()
    np.testing.assert_allclose([exported[n] for n in library], list(library.values()), rtol=1e-4)


def test_bit_depth_flag_sets_the_levels(deep_parts: Path, tmp_path: Path):
    out = tmp_path / "run"
    result = invoke(
        "fit", "patchcore", "--data", f"mvtec:{deep_parts}", "--out", out, "--bit-depth", "12", *FIT_ARGS
    )
    assert result.exit_code == 0, result.output
    decoding = json.loads((out / "run.json").read_text())["features"]["decoding"]
    assert decoding["levels"] == [0, 4095] and decoding["levels_from"] == "--bit-depth 12"


def test_bad_bit_depth_and_small_max_pixels_refused_in_one_line(deep_parts: Path, tmp_path: Path):
    data = ["--data", f"mvtec:{deep_parts}"]
    result = invoke("fit", "patchcore", *data, "--out", tmp_path / "a", "--bit-depth", "9", *FIT_ARGS)
    assert_clean_error(result, "--bit-depth", "8, 10, 12, 14, 16")
    result = invoke("fit", "patchcore", *data, "--out", tmp_path / "b", "--max-pixels", "4095", *FIT_ARGS)
    assert_clean_error(result, "--max-pixels", "4,096 pixels exceeds the limit of 4,095")


def test_eight_bit_runs_keep_their_features_config(fitted_run: Path):
    assert "decoding" not in json.loads((fitted_run / "run.json").read_text())["features"]
