"""Tiles at native resolution (docs/images.md, *Tiles*): the grid covers every pixel with its last tile flush
with the border; stitching gives back a map cut into tiles exactly (a constant, a blob across tile borders);
a tiled fit scores each good image without any of its tiles' atoms, and test, predict and the feature cache
work on the canvas; untiled runs keep their features config."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import invoke
from PIL import Image
from test_export import assert_parity, assert_script_scores_as_predict, read_scores

from reconad import pipeline
from reconad.data import read_image
from reconad.data.imageio import scan_images
from reconad.errors import ReconadError
from reconad.features.extractor import FeatureExtractor
from reconad.features.tiles import TileGrid, canvas_hw, tile_starts
from reconad.options import FitOptions
from reconad.runs import load_run
from reconad.scoring import conv_blur, gaussian_blur

CANVAS = (96, 160)  # (h, w) of the parts below
TILE_ARGS = ["--tile", "64", "--tile-overlap", "16", "--param", "coreset_ratio=0.05"]


# --- the grid ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("n", "size", "overlap", "starts"), [
    (160, 64, 16, [0, 48, 96]),
    (96, 64, 16, [0, 32]),
    (64, 64, 16, [0]),
    (130, 64, 0, [0, 64, 66]),
])  # fmt: skip
def test_tiles_step_by_size_minus_overlap_and_the_last_is_flush(n, size, overlap, starts):
    assert tile_starts(n, size, overlap) == starts


@pytest.mark.parametrize("canvas", [(96, 160), (64, 64), (200, 77), (1000, 333)])
def test_the_grid_covers_every_pixel(canvas):
    grid = TileGrid(canvas, 64, 24)
    cover = grid.cover()
    assert cover.min() >= 1 and len(grid) == len(grid.rows) * len(grid.cols)
    assert all(y + 64 <= canvas[0] and x + 64 <= canvas[1] for y, x in grid.positions)


def test_a_side_smaller_than_the_tile_scales_the_canvas_up_keeping_the_aspect():
    assert canvas_hw((1000, 2000), 256, 0.5) == (500, 1000)
    assert canvas_hw((100, 300), 64, 0.5) == (64, 192)


# --- stitching ----------------------------------------------------------------------------------------------
def test_stitching_a_constant_map_is_exact():
    grid = TileGrid(CANVAS, 64, 16)
    tiles = torch.full((2 * len(grid), 64, 64), 0.37)
    assert torch.equal(grid.stitch(tiles), torch.full((2, *CANVAS), 0.37))


def test_stitching_gives_back_a_blob_across_tile_borders():
    grid = TileGrid(CANVAS, 64, 16)
    y, x = torch.meshgrid(torch.arange(96.0), torch.arange(160.0), indexing="ij")
    blob = torch.exp(-((y - 50) ** 2 + (x - 56) ** 2) / 200)  # centred where three tiles overlap
    cut = grid.cut(blob[None, :, :, None])[..., 0]
    assert cut.shape == (len(grid), 64, 64)
    torch.testing.assert_close(grid.stitch(cut), blob[None], rtol=0, atol=1e-7)


def test_the_overlaps_are_averaged():
    grid = TileGrid((64, 96), 64, 32)  # two tiles sharing 32 columns
    stitched = grid.stitch(torch.stack([torch.zeros(64, 64), torch.ones(64, 64)]))[0]
    assert stitched[:, :32].eq(0).all() and stitched[:, 32:64].eq(0.5).all() and stitched[:, 64:].eq(1).all()


def test_the_convolution_blur_equals_the_matrix_blur():
    maps = torch.rand(2, 96, 160)
    torch.testing.assert_close(conv_blur(maps, 4.0), gaussian_blur(maps, 4.0), rtol=0, atol=1e-5)


# --- options ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("flags", "words"), [
    ({"tile_overlap": 8}, "--tile-overlap and --scale go with --tile S"),
    ({"tile": 64, "tile_overlap": 32}, "--tile-overlap must be"),
    ({"tile": 64, "keep_aspect": True}, "leave out --keep-aspect"),
    ({"tile": 64, "scale": 0.0}, "--scale must be"),
])  # fmt: skip
def test_bad_tile_flags_are_one_line_errors(flags, words):
    with pytest.raises(ReconadError, match=words):
        FitOptions(**flags)


def test_the_default_overlap_is_an_eighth_of_the_tile():
    assert FitOptions(tile=256).tiling() == {"size": 256, "overlap": 32, "scale": 1.0}
    assert FitOptions().tiling() is None


# --- a tiled run --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def long_parts(parts: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """conftest's parts stretched to 160 × 96 px (MVTec layout): 6 tiles of 64 px, overlap 16."""
    root = tmp_path_factory.mktemp("long") / parts.name
    shutil.copytree(parts, root)
    for path in root.rglob("*.png"):
        with Image.open(path) as img:
            how = Image.NEAREST if "ground_truth" in str(path) else Image.BILINEAR
            img.resize(CANVAS[::-1], how).save(path)
    return root


@pytest.fixture(scope="module")
def tiled_run(long_parts: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiled") / "run"
    result = invoke("fit", "patchcore", "--data", f"mvtec:{long_parts}", "--out", out, *TILE_ARGS)
    assert result.exit_code == 0, result.output
    assert "--tile 64: fitting on 6 tiles (2×3, overlap 16 px) of a 160x96 canvas" in result.output
    return out


def test_a_tiled_run_stores_its_tiling_and_canvas(tiled_run):
    features = json.loads((tiled_run / "run.json").read_text())["features"]
    assert features["tile"] == {"size": 64, "overlap": 16, "scale": 1.0}
    assert features["image_size"] == "160x96"
    operating = load_run(tiled_run).categories["synthetic_part"]["operating"]
    assert operating["n"] == 12  # one out-of-sample score per good image, not per tile


def test_an_untiled_run_keeps_its_features_config(extractor):
    assert "tile" not in extractor.config() and extractor.tiles is None


def test_tiled_features_stack_the_tiles_and_bound_the_backbone_batch():
    ext = FeatureExtractor(tile={"size": 64, "overlap": 16, "scale": 1.0}, image_size=CANVAS)
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, *CANVAS, 3), dtype=np.uint8))
    feats = ext(images)
    assert feats.shape == (2, ext.channels, 6 * 8, 8) and ext.level_hw[0] == (48, 8)
    one_tile = ext.patches(images[:1, 32:96, 48:112])[0]  # the second row's second tile
    torch.testing.assert_close(feats[0, :, 4 * 8 : 5 * 8], one_tile, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ext.net(images), feats, rtol=1e-4, atol=1e-4)  # all tiles at once


def test_a_good_image_is_scored_without_the_atoms_of_any_of_its_tiles():
    """Each image's tiles alike, images unlike: leaving out only the tile being scored would find its
    twin tiles of the same image at distance 0."""
    from reconad.models.bank.patchcore import PatchCore

    grid = TileGrid(CANVAS, 64, 16)
    tile = torch.randn(10, 3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    feats = tile.expand(10, 3, 6, 8, 8).reshape(10, 3, 6 * 8, 8)  # 10 images of 6 identical tiles each
    model = PatchCore(coreset_ratio=1.0, nprobe=0).fit(feats)
    scores, _ = pipeline.left_out_scores(
        model, feats, np.arange(10), CANVAS, {"sigma": 4.0, "reduce": "max"}, tiles=grid
    )
    assert scores.shape == (10,) and scores.min() > 0.5


def test_a_tiled_run_tests_and_predicts(tiled_run, long_parts, tmp_path):
    result = invoke("test", tiled_run, "--json", tmp_path / "test.json")
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "test.json").read_text())["categories"]["synthetic_part"]
    assert doc["image_auroc"] > 0.7
    result = invoke("predict", tiled_run, long_parts / "test", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    with Image.open(next((tmp_path / "out").glob("*.png"))) as overlay:
        assert overlay.size == CANVAS[::-1]


def test_a_unified_model_refuses_tiles(long_parts, tmp_path):
    result = invoke("fit", "rlr", "--data", f"mvtec:{long_parts}", "--out", tmp_path / "r", "--tile", "64")
    assert result.exit_code == 2 and "--tile: rlr learns each grid position" in result.output


def test_a_tiled_run_exports_one_graph_that_tiles_and_stitches(tiled_run, long_parts, tmp_path):
    result = invoke("export", tiled_run, "--out", tmp_path / "export")
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "export" / "manifest.json").read_text())
    assert manifest["input"]["shape"] == ["N", *CANVAS, 3]
    images = np.stack([read_image(p) for p in scan_images(long_parts / "test")])
    assert_parity(tiled_run, tmp_path / "export", images)
    assert_script_scores_as_predict(tiled_run, tmp_path / "export", long_parts / "test", tmp_path)


def test_serve_scores_an_upload_with_a_tiled_run_as_predict_does(tiled_run, long_parts, tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from reconad.serve.app import create_app
    from reconad.serve.predictor import Predictor

    path = sorted((long_parts / "test").rglob("*.png"))[0]
    client = TestClient(create_app(Predictor(tiled_run), max_upload_bytes=10**7))
    response = client.post("/v1/predict", files=[("file", ("x.png", path.read_bytes(), "image/png"))])
    assert response.status_code == 200, response.text
    assert invoke("predict", tiled_run, path, "--out", tmp_path / "p").exit_code == 0
    row = read_scores(tmp_path / "p" / "scores.csv")[0]
    assert response.json()["results"][0]["score"] == pytest.approx(float(row["score"]), rel=1e-5)
