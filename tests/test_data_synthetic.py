"""make_parts: MVTec layout, determinism, exact masks, and defects a simple patch method can find."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from reconad.data import mvtec
from reconad.data.imageio import read_image, read_mask
from reconad.data.synthetic import DEFECTS, MARKER, _defect, _part, make_parts
from reconad.errors import ReconadError


def _bytes(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


def test_layout_and_counts(tmp_path):
    folder = make_parts(tmp_path, n_train=5, n_test_good=2, n_test_bad=7, size=64)
    assert folder == tmp_path / "synthetic_part"
    (cat,) = mvtec.load(folder)
    assert len(cat.train) == 5 and len(cat.test) == 9
    bad = [s for s in cat.test if s.label]
    assert sorted({s.defect for s in bad}) == sorted(DEFECTS) and len(bad) == 7
    for s in bad:
        image = read_image(s.path)
        assert image.shape == (64, 64, 3)
        assert read_mask(s.mask_path, image.shape[:2]).any()


def test_deterministic(tmp_path):
    a = make_parts(tmp_path / "a", n_train=3, n_test_good=1, n_test_bad=3, size=48, seed=5)
    b = make_parts(tmp_path / "b", n_train=3, n_test_good=1, n_test_bad=3, size=48, seed=5)
    c = make_parts(tmp_path / "c", n_train=3, n_test_good=1, n_test_bad=3, size=48, seed=6)
    assert _bytes(a) == _bytes(b) != _bytes(c)
    train = [np.asarray(Image.open(p)) for p in sorted((a / "train" / "good").glob("*.png"))]
    assert not np.array_equal(train[0], train[1])  # images vary within a run


def test_rerun_replaces_own_output_only(tmp_path):
    folder = make_parts(tmp_path, n_train=6, n_test_good=1, n_test_bad=1, size=32)
    make_parts(tmp_path, n_train=2, n_test_good=1, n_test_bad=1, size=32)
    assert len(list((folder / "train" / "good").glob("*.png"))) == 2 and (folder / MARKER).is_file()
    other = tmp_path / "mine"
    other.mkdir()
    (other / "keep.txt").write_text("precious")
    with pytest.raises(ReconadError, match="not empty"):
        make_parts(tmp_path, category="mine")
    assert (other / "keep.txt").read_text() == "precious"
    with pytest.raises(ReconadError, match="n_train"):
        make_parts(tmp_path / "x", n_train=0)


@pytest.mark.parametrize("kind", DEFECTS)
def test_masks_are_exactly_the_changed_pixels(kind):
    rng = np.random.default_rng(11)
    for _ in range(5):
        img, on_part, centre = _part(rng, 96)
        clean = img.copy()
        mask = _defect(rng, img, on_part, centre, kind)
        assert mask.sum() > 10
        np.testing.assert_array_equal(np.abs(img - clean).max(axis=2) > 0.5, mask)


def test_defects_are_findable_by_raw_patch_knn(tmp_path):
    """Nearest-neighbour distance of raw 8×8 colour patches to the training patches ranks defective images
    above good ones: the defects differ visibly from the texture (a backbone does much better)."""
    (cat,) = mvtec.load(make_parts(tmp_path, n_train=30, n_test_good=10, n_test_bad=15, size=64, seed=0))

    def patches(s):
        a = read_image(s.path).astype(np.float32) / 255
        return a.reshape(8, 8, 8, 8, 3).transpose(0, 2, 1, 3, 4).reshape(64, -1)

    bank = np.concatenate([patches(s) for s in cat.train])
    scores = []
    for s in cat.test:
        q = patches(s)
        d2 = (q**2).sum(1)[:, None] - 2 * q @ bank.T + (bank**2).sum(1)[None]
        scores.append(d2.min(1).max())
    assert roc_auc_score([s.label for s in cat.test], scores) > 0.85
