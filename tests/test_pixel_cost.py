"""benchmarks/pixel_cost.py: a configuration is a name and its fit flags; the generated high-resolution set is
reused while its arguments stay the same; the table shows each row's input size, metrics and costs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
from pixel_cost import COLUMNS, hires_source, markdown, parse_config  # noqa: E402


def test_a_config_is_a_name_and_fit_flags():
    assert parse_config("native=--image-size 1024 --keep-aspect") == (
        "native",
        ["--image-size", "1024", "--keep-aspect"],
    )
    assert parse_config("tiles=--tile 256 --tile-overlap 32")[1] == ["--tile", "256", "--tile-overlap", "32"]
    assert parse_config("default=") == ("default", [])
    for bad in ("--image-size 512", "=--image-size 512", "a/b=--image-size 512"):
        with pytest.raises(argparse.ArgumentTypeError, match="NAME="):
            parse_config(bad)


def test_hires_set_generated_once_per_arguments(tmp_path):
    spec = hires_source(tmp_path, 128, [2, 1, 3], [2, 4])
    assert spec == f"mvtec:{tmp_path}"
    image = tmp_path / "hires_square" / "train" / "good" / "000.png"
    first = image.stat().st_mtime_ns
    hires_source(tmp_path, 128, [2, 1, 3], [2, 4])
    assert image.stat().st_mtime_ns == first  # reused
    hires_source(tmp_path, 128, [1, 1, 3], [2, 4])
    assert not (
        tmp_path / "hires_square" / "train" / "good" / "001.png"
    ).exists()  # regenerated: 1 train image


def test_table_row():
    meta = {
        "command": "python benchmarks/pixel_cost.py ...",
        "date": "2026-12-07",
        "commit": "abc1234",
        "reconad_version": "0.1.0",
        "machine": {"cpu_count": 2, "platform": "Linux"},
    }
    verdicts = {"n_false_reject": 1, "n_good": 10, "n_escape": 5, "n_defective": 20}
    row = {
        "category": "hires_long",
        "config": "native",
        "input_hw": [336, 1024],
        "pixels": 344064,
        "model": "sgfr",
        "image_auroc": 0.91234,
        "pixel_auroc": None,
        "pixel_aupro": 0.5,
        "verdicts": verdicts,
        "fit_seconds": 12.34,
        "fit_peak_rss_mib": 2048.4,
        "predict_images_per_second": None,
        "predict_peak_rss_mib": 1000.0,
    }
    lines = markdown([row], meta).splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| category"))
    assert lines[header] == "| " + " | ".join(COLUMNS) + " |"
    cells = [c.strip() for c in lines[header + 2].strip("|").split("|")]
    assert cells == [
        "hires_long",
        "native",
        "1024×336",
        "344,064",
        "sgfr",
        "0.9123",
        "—",
        "0.5000",
        "1/10 (10.0%) · 5/20 (25.0%)",
        "12.3",
        "—",
        "2,048 / 1,000",
    ]
