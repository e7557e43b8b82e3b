"""The training-only validation set: held-out good images, corruptions with exact masks, and the criterion."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reconad.data import load_sources
from reconad.data.synthetic import make_parts
from reconad.data.validation import blotch, cutpaste, foreign_textures, validation_images
from reconad.errors import ReconadError
from reconad.validate import criterion, validate, validation_sets

SIZE = 64
N_TRAIN = 32  # the fewest that hold out 16 images with a distinct CutPaste donor each


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory):
    """Two small synthetic categories (good training images only matter here)."""
    root = tmp_path_factory.mktemp("validation-data")
    for seed, name in ((0, "part_a"), (1, "part_b")):
        make_parts(root, n_train=N_TRAIN, n_test_good=1, n_test_bad=0, size=SIZE, seed=seed, category=name)
    return load_sources([f"mvtec:{root}"])


def _changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a != b).any(axis=-1)


def test_corruptions_change_only_inside_their_mask() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(30, 220, (SIZE, SIZE, 3), dtype=np.uint8)
    donor = rng.integers(30, 220, (SIZE, SIZE, 3), dtype=np.uint8)
    for out, mask in (cutpaste(img, donor, rng), blotch(img, rng)):
        assert out.dtype == np.uint8 and out.shape == img.shape
        assert 0.005 < mask.mean() < 0.25
        assert not _changed(out, img)[~mask].any()
        assert _changed(out, img)[mask].mean() > 0.9


def test_held_out_images_are_clean_then_corrupted_with_exact_masks(data) -> None:
    cat = data[0]
    v = validation_images(cat, SIZE, seed=0)
    n = 16
    assert len(v.fit) == N_TRAIN - n
    assert v.images.shape == (3 * n, SIZE, SIZE, 3) and v.masks.shape == (3 * n, SIZE, SIZE)
    assert v.labels.tolist() == [0] * n + [1] * 2 * n
    assert v.kinds.tolist() == ["good"] * n + ["cutpaste", "blotch"] * n
    assert not v.masks[:n].any()
    for i in range(n, 3 * n):
        twin = v.images[v.twins[i]]
        assert v.masks[i].any()
        assert not _changed(v.images[i], twin)[~v.masks[i]].any()
    fit = {s.path for s in v.fit}
    assert len(fit) == N_TRAIN - n and fit < {s.path for s in cat.train}  # the held-out ones are never fitted


def test_the_set_is_seeded_and_foreign_textures_only_add_images(data) -> None:
    textures = foreign_textures(data, SIZE, seed=0)
    assert len(textures["part_a"]) == 8  # eight of the other category's training images
    plain = validation_images(data[0], SIZE, seed=0)
    again = validation_images(data[0], SIZE, seed=0)
    other = validation_images(data[0], SIZE, seed=1)
    foreign = validation_images(data[0], SIZE, seed=0, textures=textures["part_a"])
    assert np.array_equal(plain.images, again.images) and np.array_equal(plain.masks, again.masks)
    assert not np.array_equal(plain.images, other.images)
    n = len(plain.images)
    assert np.array_equal(foreign.images[:n], plain.images) and np.array_equal(foreign.masks[:n], plain.masks)
    assert foreign.kinds[n:].tolist() == ["foreign"] * 16 and foreign.labels[n:].all()
    assert foreign.masks[n:].any(axis=(1, 2)).all()


def test_clear_errors_for_too_few_images_or_categories(data) -> None:
    small = type(data[0])(data[0].name, data[0].train[:31])
    with pytest.raises(ReconadError, match="at least 32 good training images, found 31"):
        validation_images(small, SIZE, seed=0)
    with pytest.raises(ReconadError, match="at least two categories"):
        foreign_textures(data[:1], SIZE, seed=0)


def test_validate_scores_the_corruptions_and_averages_pixel_auroc_and_aupro(data, extractor) -> None:
    sets = validation_sets(data, extractor, None, seed=0, foreign=True)
    assert {name: len(s.train) for name, s in sets.items()} == {"part_a": 16, "part_b": 16}
    result = validate("patchcore", sets, extractor, {"coreset_ratio": 0.1})
    cats = result["categories"]
    assert set(cats) == {"part_a", "part_b"}
    for m in cats.values():
        assert set(m["by_kind"]) == {"cutpaste", "blotch", "foreign"}
        assert m["pixel_auroc"] > 0.6  # the corruptions are found (chance: 0.5)
    expected = np.mean([(m["pixel_auroc"] + m["pixel_aupro"]) / 2 for m in cats.values()])
    assert result["criterion"] == pytest.approx(expected)
    assert result["params"]["coreset_ratio"] == 0.1
    assert validate("patchcore", sets, extractor, {"coreset_ratio": 0.1})["criterion"] == result["criterion"]


def test_a_model_blind_to_the_corruptions_scores_chance(data, extractor, monkeypatch) -> None:
    from reconad.models.base import MODELS

    class Constant:
        name, unified, align_corners = "test_constant", True, False

        def __init__(self, seed: int = 0) -> None:
            self.seed = seed

        def fit(self, features, categories=None, **kwargs):
            assert len(features) == len(categories) == 32  # one model on both categories' fit images
            return self

        def predict(self, features, categories=None):
            return torch.zeros(features.shape[0], *features.shape[-2:])

        def get_config(self):
            return {"seed": self.seed}

    monkeypatch.setitem(MODELS, Constant.name, Constant)
    sets = validation_sets(data, extractor, None, seed=0)
    result = validate(Constant.name, sets, extractor)
    assert result["params"] == {"seed": 0}
    for m in result["categories"].values():
        assert m["pixel_auroc"] == pytest.approx(0.5) and m["image_auroc"] == pytest.approx(0.5)
    assert criterion(
        {"a": {"pixel_auroc": 0.9, "pixel_aupro": 0.7}, "b": {"pixel_auroc": 1.0, "pixel_aupro": 0.8}}
    ) == (pytest.approx(0.85))
    with pytest.raises(ReconadError, match="no parameter"):
        validate("patchcore", sets, extractor, {"coreset": 0.1})
