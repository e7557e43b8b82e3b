"""Adapters on the shared real data (skipped when ../shared/data is absent)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from reconad.data import load_resized, load_sources, mtd, mvtec, mvtec3d, read_image, read_mask

DATA = Path(__file__).parents[2] / "shared" / "data"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not DATA.is_dir(), reason=f"real data not found at {DATA}"),
]


def _empty_masks(cat) -> int:
    """Check every defective image has a mask of its size; count the masks with no foreground."""
    empty = 0
    for s in cat.test:
        if s.label:
            assert s.mask_path is not None
            empty += not read_mask(s.mask_path, read_image(s.path).shape[:2], image_path=s.path).any()
    return empty


def test_mvtec_bottle():
    for root in (DATA / "mvtec_ad", DATA / "mvtec_ad" / "bottle"):
        (cat,) = mvtec.load(root)
        assert cat.name == "bottle" and len(cat.train) == 209 and len(cat.test) == 83
        assert Counter(s.defect for s in cat.test) == {
            "good": 20,
            "broken_large": 20,
            "broken_small": 22,
            "contamination": 21,
        }
    assert _empty_masks(cat) == 0
    image, mask = load_resized(next(s for s in cat.test if s.label), 256)
    assert image.shape == (256, 256, 3) and mask is not None and 0 < mask.mean() < 0.5


def test_mvtec3d_tire():
    (cat,) = mvtec3d.load(DATA / "mvtec_3d")
    assert cat.name == "tire" and len(cat.train) == 210 and len(cat.test) == 112
    assert Counter(s.defect for s in cat.test) == {
        "good": 25,
        "combined": 5,
        "contamination": 28,
        "cut": 27,
        "hole": 27,
    }
    assert _empty_masks(cat) == 0  # gt masks here are 0/254: still foreground


def test_magnetic_tile():
    (cat,) = mtd.load(DATA / "magnetic_tile", seed=0)
    assert len(cat.train) == 762 and len(cat.test) == 190 + 392
    assert Counter(s.defect for s in cat.test) == {
        "good": 190,
        "blowhole": 115,
        "break": 85,
        "crack": 57,
        "fray": 32,
        "uneven": 103,
    }
    assert _empty_masks(cat) == 4  # antialiased masks binarise; 4 'uneven' masks are all zero on disk
    image = read_image(cat.train[0].path)
    assert image.ndim == 3 and np.array_equal(image[:, :, 0], image[:, :, 2])  # grayscale JPEG → 3 channels


def test_load_sources_all_three():
    specs = [f"mvtec:{DATA / 'mvtec_ad'}", f"mvtec3d:{DATA / 'mvtec_3d'}", f"mtd:{DATA / 'magnetic_tile'}"]
    cats = load_sources(specs)
    assert [c.name for c in cats] == ["bottle", "tire", "magnetic_tile"]
    assert [c.source for c in cats] == specs
