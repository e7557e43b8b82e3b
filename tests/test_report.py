"""The HTML report: tables, figures that exist, worst cases first, atomic rewrites, a browser render."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from reconad import pipeline
from reconad.data import load_sources
from reconad.data.sample import Sample
from reconad.errors import ReconadError
from reconad.metrics import METRIC_KEYS
from reconad.report.html import (
    ASSETS_PREFIX,
    GALLERY_DEFECTIVE,
    GALLERY_GOOD,
    METRIC_NAMES,
    best_labels,
    gallery_indices,
    write_report,
)
from reconad.report.plots import histogram_png, pro_png, roc_png
from reconad.runs import load_run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def tested(fitted_run: Path, parts: Path, extractor) -> dict[str, Any]:
    """``reconad test`` of the shared tiny PatchCore run: (run, its config, results, doc)."""
    run = load_run(fitted_run)
    results = pipeline.evaluate(run, load_sources([f"mvtec:{parts}"]), extractor)
    return {"run": run, "config": run.config, "results": results, "doc": pipeline.results_json(run, results)}


def _write(tested: dict[str, Any], folder: Path) -> Path:
    return write_report(folder, tested["config"], tested["results"], tested["doc"])


def test_report_has_the_tables_and_every_image_it_shows_exists(
    tested: dict[str, Any], tmp_path: Path
) -> None:
    page = _write(tested, tmp_path / "report")
    assert page == tmp_path / "report" / "report.html"
    text = page.read_text()
    assert "<script" not in text and "http" not in text  # nothing to fetch, nothing to run
    for key in METRIC_KEYS:
        assert f"<th>{METRIC_NAMES[key]}</th>" in text
    m = tested["doc"]["categories"]["synthetic_part"]
    assert f"{m['image_auroc']:.4f}" in text and f"{m['pixel_aupro']:.4f}" in text
    sources = re.findall(r'<img src="([^"]+)"', text)
    assert all((page.parent / s).is_file() for s in sources)
    assert any(s.endswith("_roc.png") for s in sources) and any(s.endswith("_pro.png") for s in sources)
    assert any(s.endswith("_hist.png") for s in sources)
    gallery = [s for s in sources if re.search(r"_\d{4}\.png$", s)]
    assert len(gallery) == GALLERY_DEFECTIVE + GALLERY_GOOD  # 6 defective + 4 good test images: capped
    strip = Image.open(page.parent / gallery[0])
    assert strip.width > 3 * strip.height  # four panels side by side


def test_report_shows_defect_types_only_when_asked(tested: dict[str, Any], tmp_path: Path) -> None:
    assert "each defect type" not in _write(tested, tmp_path / "plain").read_text()
    doc = pipeline.results_json(tested["run"], tested["results"], by_defect=True)
    text = write_report(tmp_path / "typed", tested["config"], tested["results"], doc).read_text()
    assert "each defect type with the good images" in text
    for kind, m in doc["categories"]["synthetic_part"]["defect_types"].items():
        assert f"<td>{kind}</td>" in text and f"{m['pixel_auroc']:.4f}" in text


def test_rewriting_replaces_the_figures_and_keeps_other_files(tested: dict[str, Any], tmp_path: Path) -> None:
    folder = tmp_path / "report"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    _write(tested, folder)
    first = [p.name for p in folder.glob(f"{ASSETS_PREFIX}*")]
    _write(tested, folder)
    second = [p.name for p in folder.glob(f"{ASSETS_PREFIX}*")]
    assert len(first) == len(second) == 1 and first != second
    assert sorted(p.name for p in folder.iterdir()) == sorted(["notes.txt", "report.html", *second])
    assert second[0] in (folder / "report.html").read_text()


def test_a_file_in_the_way_is_an_error(tested: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / "report").write_text("not a folder")
    with pytest.raises(ReconadError):
        _write(tested, tmp_path / "report")


def _result(labels: list[int], scores: list[float], threshold: float) -> pipeline.CategoryResult:
    n = len(labels)
    samples = [Sample(Path(f"{i}.png"), label, "c") for i, label in enumerate(labels)]
    empty = np.zeros((n, 4, 4))
    return pipeline.CategoryResult(
        {}, samples, np.array(labels), np.array(scores), empty.astype(bool), empty, threshold, 0.0
    )


def test_gallery_shows_misses_and_false_alarms_first() -> None:
    labels = [1, 1, 1, 0, 0, 0, 1]
    scores = [0.9, 0.2, 0.6, 0.1, 0.7, 0.3, 0.45]
    chosen = gallery_indices(_result(labels, scores, threshold=0.5))
    # margins: defective score - 0.5, good 0.5 - score; most wrong first
    assert chosen[:3] == [1, 4, 6]
    assert sorted(chosen) == list(range(7))  # fewer than the cap: all shown


def test_gallery_is_capped_and_keeps_both_kinds() -> None:
    rng = np.random.default_rng(0)
    labels = [1] * 30 + [0] * 30
    chosen = gallery_indices(_result(labels, rng.random(60).tolist(), threshold=0.5))
    kinds = [labels[i] for i in chosen]
    assert kinds.count(1) == GALLERY_DEFECTIVE and kinds.count(0) == GALLERY_GOOD
    only_good = gallery_indices(_result([0] * 20, rng.random(20).tolist(), threshold=0.5))
    assert len(only_good) == GALLERY_DEFECTIVE + GALLERY_GOOD


def test_best_labels_ties_and_undefined() -> None:
    assert best_labels({"a": 0.91, "b": 0.95, "c": None}) == {"b"}
    assert best_labels({"a": 0.912341, "b": 0.912338}) == {"a", "b"}  # equal at 4 decimals
    assert best_labels({"a": None}) == set()


def _png(data: bytes) -> Image.Image:
    assert data.startswith(b"\x89PNG")
    return Image.open(io.BytesIO(data))


def test_plots_are_pngs_even_for_one_class() -> None:
    x = np.linspace(0, 1, 11)
    assert _png(roc_png({"m": (x, x**0.5, 0.8)}, "roc")).width > 100
    assert _png(pro_png({"m": (x * 0.3, x, None)}, 0.3, "pro")).width > 100
    assert _png(histogram_png(np.array([1.0, 1.0]), np.array([0, 0]), 1.0, "h")).width > 100


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_report_renders_in_a_headless_browser(tested: dict[str, Any], tmp_path: Path) -> None:
    page = _write(tested, tmp_path / "report")
    shot = tmp_path / "shot.png"
    cmd = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={shot}",
        "--window-size=1280,2000",
        page.resolve().as_uri(),
    ]
    subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    assert shot.is_file(), "chromium wrote no screenshot"
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (2000, 1280)
    assert pixels.std() > 20 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200  # text, plots, images
    # the heat maps' saturated colours are there (jet: strong blue or red pixels), so images loaded
    r, g, b = (pixels[..., i].astype(int) for i in range(3))
    assert ((b - r > 120) | (r - b > 120)).sum() > 1000
