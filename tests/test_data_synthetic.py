"""make_parts: MVTec layout, determinism, exact masks, and defects a simple patch method can find; the
high-resolution options (aspect, defects of a given pixel size, make_hires) leave the defaults unchanged."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from reconad.data import mvtec
from reconad.data.imageio import read_image, read_mask
from reconad.data.synthetic import DEFECTS, HIRES_ASPECTS, MARKER, _defect, _part, make_hires, make_parts
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


@pytest.mark.parametrize("px", [None, (3, 6)])
@pytest.mark.parametrize("kind", DEFECTS)
def test_masks_are_exactly_the_changed_pixels(kind, px):
    rng = np.random.default_rng(11)
    for _ in range(5):
        img, on_part, centre = _part(rng, (96, 96))
        clean = img.copy()
        mask = _defect(rng, img, on_part, centre, kind, px)
        assert mask.sum() > (10 if px is None else 0)
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


def _pixel_digest(folder):
    digest = hashlib.sha256()
    for p in sorted(folder.rglob("*.png")):
        digest.update(p.relative_to(folder).as_posix().encode())
        digest.update(np.asarray(Image.open(p)).tobytes())
    return digest.hexdigest()


def test_defaults_unchanged_by_the_hires_options(tmp_path):
    """The pixels of two small default generations, digested before aspect and defect_px were added: the
    demo's and the tests' parts are the same as before."""
    a = make_parts(tmp_path / "a", n_train=3, n_test_good=1, n_test_bad=3, size=64)
    b = make_parts(tmp_path / "b", n_train=2, n_test_good=1, n_test_bad=3, size=96, seed=3)
    assert _pixel_digest(a) == "381b9bfb4ea2900b77243b040ede16867b8774a6393ef01bbdd053fefc3ff41f"
    assert _pixel_digest(b) == "cb0173b41f4b0efe10d38595d752191e8036e8018a2cb556e96a083998503a6c"


@pytest.mark.parametrize(("aspect", "hw"), [(3.0, (85, 256)), (1 / 3, (256, 85)), (1.0, (256, 256))])
def test_aspect_gives_the_image_shape(tmp_path, aspect, hw):
    (cat,) = mvtec.load(make_parts(tmp_path, n_train=1, n_test_good=0, n_test_bad=3, size=256, aspect=aspect))
    for s in cat.train + cat.test:
        assert read_image(s.path).shape == (*hw, 3)
    for s in cat.test:
        mask = read_mask(s.mask_path, hw)
        assert mask.shape == hw and mask.any()


@pytest.mark.parametrize(("size", "px"), [(256, (2, 4)), (512, (8, 32))])
def test_defects_of_the_asked_pixel_size(tmp_path, size, px):
    """Every mask is one defect whose longest side is about ``px`` pixels, whatever the image size."""
    folder = make_parts(tmp_path, n_train=1, n_test_good=0, n_test_bad=9, size=size, defect_px=px, seed=2)
    masks = sorted((folder / "ground_truth").rglob("*_mask.png"))
    assert len(masks) == 9
    for path in masks:
        ys, xs = np.nonzero(np.asarray(Image.open(path)) > 0)
        extent = max(np.ptp(ys), np.ptp(xs)) + 1
        assert px[0] / 2 <= extent <= px[1] + 2, (path.name, extent)


def test_make_hires_categories_seeded(tmp_path):
    kwargs = dict(n_train=2, n_test_good=1, n_test_bad=3, size=256, defect_px=(2, 4))
    first = make_hires(tmp_path / "a", **kwargs)
    again = make_hires(tmp_path / "b", **kwargs)
    assert [f.name for f in first] == list(HIRES_ASPECTS)
    assert [_pixel_digest(f) for f in first] == [_pixel_digest(f) for f in again]
    assert _pixel_digest(first[0]) != _pixel_digest(make_hires(tmp_path / "c", **kwargs, seed=1)[0])
    shapes = {f.name: read_image(next((f / "test" / "blob").glob("*.png"))).shape for f in first}
    assert shapes == {"hires_square": (256, 256, 3), "hires_long": (85, 256, 3)}


def test_bad_hires_options_refused(tmp_path):
    with pytest.raises(ReconadError, match="32 px"):
        make_parts(tmp_path, size=64, aspect=3.0)
    with pytest.raises(ReconadError, match="defect_px"):
        make_parts(tmp_path, defect_px=(4, 2))
