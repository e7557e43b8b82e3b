"""Greedy coreset = plain farthest-point sampling (the pruning changes nothing); PatchCore scores distance to
the bank, survives save/load bit for bit."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from reconad.models.bank.coreset import greedy_coreset
from reconad.models.bank.patchcore import PatchCore
from reconad.models.base import create_model


def naive_farthest_points(
    features: torch.Tensor, n: int, projection_dim: int | None, seed: int, first: int
) -> list[int]:
    """Textbook greedy coreset from point ``first``: same seeded projection, a full float64 pass a step."""
    gen = torch.Generator().manual_seed(seed)
    x = features.float()
    if projection_dim is not None and projection_dim < x.shape[1]:
        x = x @ (torch.randn(x.shape[1], projection_dim, generator=gen) / math.sqrt(projection_dim))
    current = first
    xs = x.double().numpy()
    min_dist = np.full(len(xs), np.inf)
    chosen = []
    for _ in range(n):
        chosen.append(current)
        min_dist = np.minimum(min_dist, ((xs - xs[current]) ** 2).sum(axis=1))
        current = int(min_dist.argmax())
    return chosen


def clustered(n: int, d: int, seed: int) -> torch.Tensor:
    """Points in a dozen clusters of different spreads (as patch features are): blocks get pruned."""
    g = torch.Generator().manual_seed(seed)
    centres = 4 * torch.randn(12, d, generator=g)
    which = torch.randint(12, (n,), generator=g)
    spread = torch.rand(12, 1, generator=g) + 0.2
    return centres[which] + spread[which] * torch.randn(n, d, generator=g)


@pytest.mark.parametrize(
    ("n", "d", "select", "projection_dim", "block", "seed"),
    [
        (1500, 48, 120, 16, 32, 0),  # projected, many small blocks
        (1500, 48, 120, None, 64, 1),  # full dimension
        (900, 8, 300, 128, 16, 2),  # projection_dim > d: no projection; a third of the points
        (50, 8, 50, 4, 256, 3),  # one block, every point
    ],
)
def test_greedy_coreset_equals_naive_farthest_point_sampling(n, d, select, projection_dim, block, seed):
    x = clustered(n, d, seed)
    got = greedy_coreset(x, select, projection_dim, seed, points_per_block=block)[0].tolist()
    assert got == naive_farthest_points(x, select, projection_dim, seed, first=got[0])
    assert len(set(got)) == select
    assert (
        greedy_coreset(x, select, projection_dim, seed, points_per_block=block)[0].tolist() == got
    )  # seeded


def projected(features: torch.Tensor, projection_dim: int | None, seed: int) -> np.ndarray:
    gen = torch.Generator().manual_seed(seed)
    x = features.float()
    if projection_dim is not None and projection_dim < x.shape[1]:
        x = x @ (torch.randn(x.shape[1], projection_dim, generator=gen) / math.sqrt(projection_dim))
    return x.double().numpy()


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(2, 400),
    d=st.integers(1, 12),
    fraction=st.floats(0.0, 0.5),
    projection_dim=st.sampled_from([None, 2, 4]),
    block=st.sampled_from([4, 16, 256]),
    seed=st.integers(0, 2**16),
)
def test_greedy_coreset_property(n, d, fraction, projection_dim, block, seed):
    """Any shape, size, projection and block size: distinct points, each the farthest from those before it
    (up to float32 rounding of the distances)."""
    x = clustered(n, d, seed)
    select = max(1, round(fraction * n))
    got = greedy_coreset(x, select, projection_dim, seed, points_per_block=block)[0].tolist()
    assert len(got) == select and len(set(got)) == select
    xs = projected(x, projection_dim, seed)
    tol = 1e-5 * float((xs**2).sum(axis=1).max()) + 1e-9
    min_dist = np.full(n, np.inf)
    for step, i in enumerate(got):
        if step:
            assert min_dist[i] >= min_dist.max() - tol, step
        min_dist = np.minimum(min_dist, ((xs - xs[i]) ** 2).sum(axis=1))


def test_greedy_coreset_selecting_every_point_gives_every_point():
    x = clustered(91, 1, 0)
    assert sorted(greedy_coreset(x, 91, None, 0, points_per_block=4)[0].tolist()) == list(range(91))


def test_greedy_coreset_clamps_the_count():
    x = clustered(20, 4, 0)
    assert sorted(greedy_coreset(x, 100, None)[0].tolist()) == list(range(20))
    assert len(greedy_coreset(x, 0, None)[0]) == 1


def features(n: int = 6, c: int = 16, h: int = 8, w: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(seed))


def test_bank_size_and_exact_zero_on_training_patches():
    train = features()
    model = PatchCore(coreset_ratio=0.25).fit(train)
    assert model.bank_.shape == (round(0.25 * 6 * 64), 16)
    full = PatchCore(coreset_ratio=1.0).fit(train)
    assert full.bank_.shape == (6 * 64, 16)
    assert torch.all(full.predict(train) < 1e-2)  # every training patch is in the bank


def test_a_far_away_patch_scores_highest():
    train = features(seed=0)
    model = PatchCore(coreset_ratio=0.2).fit(train)
    test = features(n=2, seed=1)
    test[1, :, 3, 5] += 12.0  # one patch moved far from every normal patch
    scores = model.predict(test)
    assert scores.shape == (2, 8, 8)
    assert int(scores[1].argmax()) == 3 * 8 + 5
    assert scores[1, 3, 5] > 2 * scores[0].max()
    others = torch.ones(8, 8, dtype=torch.bool)
    others[3, 5] = False
    assert torch.isfinite(scores).all()
    assert scores[1][others].max() < scores[1, 3, 5]


def test_scores_are_distances_to_the_nearest_bank_atoms():
    train, test = features(seed=0), features(n=2, seed=2)
    for k in (1, 3):
        model = PatchCore(coreset_ratio=0.3, k=k).fit(train)
        q = test.permute(0, 2, 3, 1).reshape(-1, 16).double()
        d = torch.cdist(q, model.bank_.double()).topk(k, largest=False).values.mean(dim=1)
        torch.testing.assert_close(model.predict(test).double().flatten(), d, rtol=1e-4, atol=1e-4)


def test_save_load_gives_bit_identical_scores(tmp_path):
    train, test = features(seed=0), features(n=3, seed=3)
    model = create_model("patchcore", coreset_ratio=0.1, k=2, level_channels=(8, 8)).fit(train)
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    loaded = PatchCore.from_state(model.get_config(), load_file(str(tmp_path / "w.safetensors")))
    assert loaded.get_config() == {
        "coreset_ratio": 0.1,
        "k": 2,
        "projection_dim": 128,
        "nprobe": "auto",
        "min_recall": 0.99,
        "seed": 0,
        "coreset_chunk": 1 << 16,
    }
    assert loaded.nprobe_ == model.nprobe_
    assert torch.equal(loaded.predict(test), model.predict(test))


def test_fit_is_deterministic_per_seed():
    train = features(seed=0)
    a = PatchCore(coreset_ratio=0.1, projection_dim=8, seed=5).fit(train).bank_
    b = PatchCore(coreset_ratio=0.1, projection_dim=8, seed=5).fit(train).bank_
    c = PatchCore(coreset_ratio=0.1, projection_dim=8, seed=6).fit(train).bank_
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_an_unknown_parameter_is_a_clear_error():
    from reconad.errors import ReconadError
    from reconad.models.base import check_params

    check_params("patchcore", {"coreset_ratio": 0.05})
    with pytest.raises(ReconadError, match="no parameter coreset_rato"):
        check_params("patchcore", {"coreset_rato": 0.05})
