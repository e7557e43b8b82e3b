"""benchmarks/shortcut_index.py: the common score every unified model is also indexed by (its squared error in
units of each channel's spread), on a toy case whose answer is known, and each model's reconstruction
(``UnifiedModel.reconstructions``) agreeing with its own score."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_rlr import TINY as RLR_TINY
from test_uniad import TINY as UNIAD_TINY
from test_uniad import _features

from reconad.models.trained.reconstruction import reconstruction_error
from reconad.models.trained.rlr import RLR
from reconad.models.trained.uniad import UniAD

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
from shortcut_index import common_errors, shortcut_index  # noqa: E402


def test_the_common_index_is_the_squared_error_ratio_in_units_of_each_channels_spread():
    """A 2×2 grid, one defective token. The defect-free tokens are missed by 1 on channel 0; the defective
    token by 6 on channel 1, whose targets spread twice as wide: 3 spreads against 1, so the common index is
    3² = 9. The L2 norm on raw features (UniAD's own score) reads 6: unstandardised, and a square root."""
    base = torch.tensor([0.0, 1.0, 2.0, 3.0])
    target = torch.stack([base, 2 * base], dim=-1)[None]  # [1, 4 tokens, 2 channels]: std 2× on channel 1
    error = torch.tensor([[0.0, 6.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    mask = np.array([[[True, False], [False, False]]])
    (common,) = common_errors([(target, target + error[None])], [(2, 2)])
    assert common.shape == (1, 2, 2)
    assert shortcut_index(common, mask) == pytest.approx(9.0)
    assert shortcut_index(error.norm(dim=-1).view(1, 2, 2), mask) == pytest.approx(6.0)
    no_shortcut = common_errors([(target, target + 1)], [(2, 2)])[0]  # the same error everywhere
    assert shortcut_index(no_shortcut, mask) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("cls", "params", "own"),
    [
        (RLR, RLR_TINY, lambda t, r: reconstruction_error(t, r)),
        (UniAD, UNIAD_TINY, lambda t, r: (r - t).norm(dim=-1)),
    ],
)
def test_each_models_reconstruction_gives_its_own_score(cls, params, own):
    feats = _features(n=6)
    model = cls(**params, epochs=1).fit(feats)
    pairs = model.reconstructions(feats[:3])
    maps = model.predict(feats[:3])
    assert len(pairs) == len(maps) == len(model.level_hw_)
    for (target, rec), errors, hw in zip(pairs, maps, model.level_hw_, strict=True):
        assert target.shape == rec.shape and target.shape[:2] == (3, hw[0] * hw[1])
        torch.testing.assert_close(own(target, rec).view(-1, *hw), errors)
