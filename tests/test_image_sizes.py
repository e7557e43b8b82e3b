"""Any aspect (docs/images.md): ``--image-size WxH`` and ``--image-size N --keep-aspect`` are parsed once to
``(h, w)``; resizing (the library's and the export's torch-free twin) gives the same pixels on h ≠ w; every
model fits and scores h ≠ w grids; the exported graph takes ``[N, H, W, 3]`` with the library's maps and
scores; ``reconad predict`` says once when an image's aspect strays from the run's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_clean_error, invoke
from PIL import Image
from test_export import PARAMS, assert_parity, assert_script_scores_as_predict, read_scores

from reconad import pipeline
from reconad.data import load_sources, read_image, resize_images
from reconad.data.imageio import scan_images, training_aspect
from reconad.errors import ReconadError
from reconad.features.extractor import FeatureExtractor
from reconad.image_runtime import AspectWatch, aspect_note, resize_image, size_hw, stored_size
from reconad.options import FitOptions, aspect_size, check_image_size
from reconad.runs import load_run, save_run

WIDE = "128x64"  # the 2:1 parts below, at half their width and height
HW = (64, 128)


# --- the size, parsed once --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("given", "hw"), [(256, (256, 256)), ("256", (256, 256)), ("512x256", (256, 512)), ((96, 64), (96, 64))]
)
def test_an_image_size_is_read_as_height_width(given, hw):
    assert check_image_size(given) == hw
    assert size_hw(stored_size(hw)) == hw
    assert FitOptions(image_size=given).image_size == hw


def test_a_square_size_is_stored_as_an_int_and_a_non_square_one_as_wxh():
    assert stored_size((256, 256)) == 256 and stored_size((256, 512)) == "512x256"


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        ({"image_size": "512by256"}, "--image-size: image size '512by256': expected N or WxH"),
        ({"image_size": "4096x256"}, "--image-size must be an integer from 32 to 2048, got 4096"),
        ({"image_size": "512x256", "keep_aspect": True}, "--keep-aspect takes --image-size N"),
    ],
)
def test_bad_sizes_are_one_line_errors_naming_the_flag(flags, words):
    with pytest.raises(ReconadError, match=words.replace("(", r"\(")):
        FitOptions.from_flags({"layers": "2,3", **flags})


@pytest.mark.parametrize(
    ("aspect", "hw"),
    [(1.0, (256, 256)), (2.0, (128, 256)), (1.9, (128, 256)), (0.5, (256, 128)), (8.0, (32, 256))],
)
def test_keep_aspect_sets_the_shorter_side_from_the_aspect_rounded_to_the_stride(aspect, hw):
    assert aspect_size(256, aspect, 16) == hw


def test_keep_aspect_refuses_a_side_below_the_smallest_size():
    with pytest.raises(ReconadError, match="--keep-aspect: the training images' aspect 16 gives 256x16"):
        aspect_size(256, 16.0, 16)


def test_the_training_aspect_is_the_median_width_over_height(wide_parts):
    train = load_sources([f"mvtec:{wide_parts}"])[0].train
    assert training_aspect(train) == 2.0


# --- resizing and the aspect note ---------------------------------------------------------------------------
@pytest.mark.parametrize("hw", [(64, 128), (128, 64), (40, 40)])
def test_the_torch_free_resize_matches_the_library_on_any_aspect(hw):
    image = np.random.default_rng(0).integers(0, 256, (90, 70, 3), dtype=np.uint8)
    ours = resize_image(image, hw)
    assert ours.shape == (*hw, 3)
    np.testing.assert_array_equal(ours, resize_images([image], hw)[0])


def test_the_aspect_note_comes_past_ten_percent_and_once():
    assert aspect_note("a.png", (100, 209), (100, 200)) is None  # 4.5 % wider
    assert aspect_note("a.png", (100, 185), (100, 200)) is None  # 8 % narrower
    assert aspect_note("a.png", (100, 180), (100, 200)) is not None  # 11 % (2 / 1.8)
    assert "a.png is 100x100 (aspect 1.00), the run's size 200x100" in aspect_note(
        "a.png", (100, 100), (100, 200)
    )
    said: list[str] = []
    watch = AspectWatch((64, 128), said.append)
    for name, hw in [("ok.png", (60, 120)), ("square.png", (64, 64)), ("tall.png", (128, 64))]:
        watch(name, hw)
    assert len(said) == 1 and said[0].startswith("square.png is 64x64")


# --- fitted on 2:1 images -----------------------------------------------------------------------------------
def _stretched(src: Path, dst: Path) -> None:
    """``src`` resized to twice its width (masks: nearest)."""
    with Image.open(src) as img:
        kind = Image.Resampling.NEAREST if "_mask" in src.name else Image.Resampling.BILINEAR
        img.resize((img.width * 2, img.height), kind).save(dst)


@pytest.fixture(scope="module")
def wide_parts(parts: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """conftest's parts stretched to 2:1 (128×64 px), MVTec layout."""
    root = tmp_path_factory.mktemp("wide") / parts.name
    shutil.copytree(parts, root)
    for path in root.rglob("*.png"):
        _stretched(path, path)
    return root


@pytest.fixture(scope="module")
def wide_extractor(extractor) -> FeatureExtractor:
    """conftest's backbone at 128 × 64 (the session's extractor is left at its size)."""
    wide = FeatureExtractor(image_size=WIDE)
    assert wide.image_hw == HW
    return wide


@pytest.mark.parametrize(
    "model",
    [
        "patchcore",
        *(pytest.param(m, marks=pytest.mark.slow) for m in ("sgfr", "rlr", "rlr-selfref", "uniad")),
    ],
)
def test_every_model_fits_and_exports_a_non_square_run(model, wide_parts, wide_extractor, tmp_path):
    params = {"coreset_ratio": 0.05} if model == "patchcore" else PARAMS[model]
    data = load_sources([f"mvtec:{wide_parts}"])
    run = pipeline.fit(model, data, wide_extractor, params=params, holdout=0.2)
    assert run.config["features"]["image_size"] == WIDE
    results = pipeline.evaluate(run, data, wide_extractor)
    assert results[data[0].name].maps.shape[1:] == HW
    save_run(run, tmp_path / "run")
    result = invoke("export", tmp_path / "run", "--out", tmp_path / "export")
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "export" / "manifest.json").read_text())
    assert manifest["image_size"] == WIDE and manifest["input"]["shape"] == ["N", *HW, 3]
    images = resize_images([read_image(p) for p in scan_images(wide_parts / "test")], HW)
    assert_parity(tmp_path / "run", tmp_path / "export", images)


@pytest.fixture(scope="module")
def kept_run(wide_parts: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """``reconad fit patchcore --image-size 128 --keep-aspect`` on the 2:1 parts: (run folder, its stderr)."""
    out = tmp_path_factory.mktemp("kept") / "run"
    args = ["--image-size", 128, "--keep-aspect", "--param", "coreset_ratio=0.05", "--holdout", 0.2]
    result = invoke("fit", "patchcore", "--data", f"mvtec:{wide_parts}", "--out", out, *args)
    assert result.exit_code == 0, result.output
    return out, result.stderr


def test_keep_aspect_fits_at_the_training_images_aspect(kept_run):
    run_dir, stderr = kept_run
    assert load_run(run_dir).config["features"]["image_size"] == WIDE
    assert "--keep-aspect: fitting at 128x64 px" in " ".join(stderr.split())
    assert invoke("test", run_dir).exit_code == 0


def test_predict_says_once_when_images_stray_from_the_runs_aspect(kept_run, wide_parts, parts, tmp_path):
    run_dir, _ = kept_run
    folder = tmp_path / "in"
    shutil.copytree(wide_parts / "test" / "good", folder / "wide")
    shutil.copytree(parts / "test" / "good", folder / "square")
    result = invoke("predict", run_dir, folder, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    notes = [line for line in result.stderr.splitlines() if "aspect" in line]
    assert len(notes) == 1 and "the run's size 128x64" in " ".join(result.stderr.split())
    rows = read_scores(tmp_path / "out" / "scores.csv")
    assert len(rows) == 2 * len(list((parts / "test" / "good").iterdir()))
    overlay = np.asarray(Image.open(tmp_path / "out" / rows[0]["overlay"]))
    assert overlay.shape[:2] == read_image(Path(rows[0]["path"])).shape[:2]
    alone = invoke("predict", run_dir, folder / "wide", "--out", tmp_path / "wide")
    assert alone.exit_code == 0 and "aspect" not in alone.stderr


def test_the_exported_predict_script_resizes_to_the_runs_size(kept_run, wide_parts, tmp_path):
    run_dir, _ = kept_run
    assert invoke("export", run_dir, "--out", tmp_path / "export").exit_code == 0
    assert_script_scores_as_predict(run_dir, tmp_path / "export", wide_parts / "test", tmp_path)


def test_a_unified_model_refuses_a_side_its_levels_do_not_divide(parts, tmp_path):
    out = tmp_path / "run"
    result = invoke("fit", "rlr", "--data", f"mvtec:{parts}", "--out", out, "--image-size", "136x64")
    assert_clean_error(result, "image size 136x64 is not a multiple of 16", "e.g. 128 or 144 for 136")


def test_serve_says_once_per_process_when_uploads_stray_from_the_runs_aspect(kept_run, parts):
    from reconad.serve.predictor import Predictor, Upload

    said: list[str] = []
    predictor = Predictor(kept_run[0], warn=said.append)
    square = [Upload(p.name, p.read_bytes()) for p in sorted((parts / "test" / "good").iterdir())[:2]]
    for _ in range(2):
        assert len(predictor.predict(square)) == 2
    assert len(said) == 1 and "the run's size 128x64" in said[0]


def test_the_grid_is_the_backbones_on_sides_that_are_not_multiples_of_the_stride():
    """Per-patch models take any side: the extractor's grids are the ones its backbone gives (rounded up)."""
    import torch

    odd = FeatureExtractor(image_size=(100, 76))
    features = odd(torch.zeros(1, 100, 76, 3, dtype=torch.uint8))
    assert tuple(features.shape[-2:]) == odd.level_hw[0]


def test_the_report_and_the_overlays_draw_a_non_square_run(wide_parts, wide_extractor, tmp_path):
    from reconad.report.html import write_report
    from reconad.report.overlay import write_overlays

    data = load_sources([f"mvtec:{wide_parts}"])
    run = pipeline.fit("patchcore", data, wide_extractor, params={"coreset_ratio": 0.1}, warn=print)
    results = pipeline.evaluate(run, data, wide_extractor)
    doc = pipeline.results_json(run, results)
    assert next(iter(results.values())).maps.shape[-2:] == HW
    pictures = list(write_overlays(tmp_path / "overlays", run.config, results).glob("*.png"))
    assert pictures and all(Image.open(p).size == (HW[1], HW[0]) for p in pictures)
    assert (write_report(tmp_path / "report", run.config, results, doc)).is_file()


def test_measuring_the_training_aspect_keeps_to_max_pixels(wide_parts):
    data = load_sources([f"mvtec:{wide_parts}"])
    assert training_aspect(data[0].train, max_pixels=128 * 64) == pytest.approx(2.0)
    with pytest.raises(ReconadError, match="--max-pixels"):
        training_aspect(data[0].train, max_pixels=128 * 64 - 1)
