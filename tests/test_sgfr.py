"""SGFR: reconstruction on a union of subspaces, subspace-covering sampling, exact save/load, any grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from sklearn.linear_model import ElasticNet

from reconad.errors import ReconadError
from reconad.models import model_class
from reconad.models.bank.self_expressive import elastic_net_gram, residual_from_gram
from reconad.models.bank.sgfr import SGFR

DIM, SUB_DIM = 24, 3


def subspaces(n: int, seed: int = 0) -> list[torch.Tensor]:
    """``n`` random ``SUB_DIM``-dim linear subspaces of R^DIM: orthonormal bases ``[SUB_DIM, DIM]``."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.linalg.qr(torch.randn(DIM, SUB_DIM, generator=gen))[0].T for _ in range(n)]


def draw(bases: list[torch.Tensor], counts: list[int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Points ``[sum(counts), DIM]`` from the union of subspaces, and the subspace label of each."""
    gen = torch.Generator().manual_seed(seed)
    pts = [torch.randn(c, SUB_DIM, generator=gen) @ b for b, c in zip(bases, counts)]
    labels = torch.cat([torch.full((c,), i) for i, c in enumerate(counts)])
    return torch.cat(pts), labels


def as_features(points: torch.Tensor, w: int = 10) -> torch.Tensor:
    """Rows ``[P, C]`` as a feature map ``[P / w, C, 1, w]`` (patch order = row order)."""
    return points.reshape(-1, 1, w, points.shape[1]).permute(0, 3, 1, 2).contiguous()


def rel_residual(model: SGFR, points: torch.Tensor) -> torch.Tensor:
    scores = model.predict(as_features(points)).reshape(-1)
    return scores / points.norm(dim=1)


def test_union_of_subspaces_reconstructed_off_subspace_not() -> None:
    bases = subspaces(4)
    train, _ = draw(bases, [300, 300, 300, 300], seed=1)
    model = SGFR(sampling_ratio=0.25, n_candidates=16, lam=1e-3, nprobe=0).fit(as_features(train))
    test, _ = draw(bases, [20, 20, 20, 20], seed=2)
    on = rel_residual(model, test)
    off = rel_residual(model, torch.randn(40, DIM, generator=torch.Generator().manual_seed(3)))
    assert on.max() < 0.1
    assert off.min() > 0.3


def imbalanced_union() -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    bases = subspaces(5, seed=4)
    train, labels = draw(bases, [1500, 300, 100, 50, 50], seed=5)  # the small subspaces get few atoms
    return bases, train, labels


def test_coverage_sampling_keeps_every_subspace() -> None:
    bases, train, labels = imbalanced_union()
    model = SGFR(sampling_ratio=0.04, n_candidates=16, lam=1e-3, nprobe=0).fit(as_features(train))
    assert len(model.bank_) == round(0.04 * len(train))
    kept = torch.bincount(labels[model.support_], minlength=len(bases))
    assert (kept >= 2 * SUB_DIM).all(), kept  # enough atoms to span each subspace from either side
    test, _ = draw(bases, [10] * len(bases), seed=6)
    assert rel_residual(model, test).max() < 0.1


def test_random_atoms_miss_small_subspaces() -> None:
    """The fixture above is a real test: a random 4 % bank leaves the small subspaces unreconstructable."""
    bases, train, _ = imbalanced_union()
    coverage = SGFR(sampling_ratio=0.04, lam=1e-3, nprobe=0).fit(as_features(train))
    rows = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[: len(coverage.bank_)]
    random_bank = {**coverage.state_dict(), "bank": train[rows] / coverage.scale_}
    model = SGFR.from_state(coverage.get_config(), random_bank)
    test, _ = draw(bases, [10] * len(bases), seed=6)
    assert rel_residual(model, test).max() > 0.5


def test_state_roundtrip_gives_identical_scores(tmp_path) -> None:
    gen = torch.Generator().manual_seed(7)
    train = torch.randn(12, 16, 8, 8, generator=gen)
    test = torch.randn(3, 16, 8, 8, generator=gen)
    model = SGFR(sampling_ratio=0.5, nprobe=2).fit(train)  # 384 atoms: the IVF index is used
    assert len(model.centroids_) > 2
    save_file(model.state_dict(), str(tmp_path / "sgfr.safetensors"))
    loaded = SGFR.from_state(model.get_config(), load_file(str(tmp_path / "sgfr.safetensors")))
    assert torch.equal(model.predict(test), loaded.predict(test))


def test_same_seed_same_model_and_scores() -> None:
    gen = torch.Generator().manual_seed(8)
    train, test = torch.randn(10, 8, 6, 6, generator=gen), torch.randn(2, 8, 6, 6, generator=gen)
    a, b = SGFR(sampling_ratio=0.3).fit(train), SGFR(sampling_ratio=0.3).fit(train)
    assert torch.equal(a.bank_, b.bank_)
    assert torch.equal(a.predict(test), b.predict(test))


def test_predict_non_square_grid() -> None:
    gen = torch.Generator().manual_seed(9)
    model = SGFR(sampling_ratio=0.5).fit(torch.randn(4, 12, 5, 7, generator=gen))
    scores = model.predict(torch.randn(3, 12, 6, 9, generator=gen))
    assert scores.shape == (3, 6, 9)
    assert torch.isfinite(scores).all() and (scores >= 0).all()


def test_train_patches_score_lower_than_noise() -> None:
    bases = subspaces(2, seed=10)
    train, _ = draw(bases, [400, 400], seed=11)
    model = SGFR(sampling_ratio=0.1, lam=1e-3).fit(as_features(train))
    noise = (
        torch.randn(80, DIM, generator=torch.Generator().manual_seed(12))
        * train.norm(dim=1).mean()
        / DIM**0.5
    )
    assert model.predict(as_features(train[:80])).max() < model.predict(as_features(noise)).min()


def test_solver_matches_sklearn_elastic_net() -> None:
    gen = torch.Generator().manual_seed(13)
    atoms = torch.randn(4, 12, 30, generator=gen, dtype=torch.float64)  # B=4 targets, K=12 atoms, C=30
    y = torch.randn(4, 30, generator=gen, dtype=torch.float64)
    gram, b = atoms @ atoms.transpose(1, 2), (atoms @ y.unsqueeze(-1)).squeeze(-1)
    lam, alpha = 0.5, 0.6
    ours = elastic_net_gram(gram, b, lam, alpha, iters=500)
    for i in range(4):
        ref = ElasticNet(alpha=lam / 30, l1_ratio=alpha, fit_intercept=False, tol=1e-12, max_iter=100_000)
        ref.fit(atoms[i].T.numpy(), y[i].numpy())
        np.testing.assert_allclose(ours[i].numpy(), ref.coef_, atol=1e-5)
    yy = (y * y).sum(1)
    direct = ((y - (ours.unsqueeze(-1) * atoms).sum(1)) ** 2).sum(1)
    torch.testing.assert_close(residual_from_gram(gram, b, yy, ours), direct)


def test_registered_and_validates() -> None:
    assert model_class("sgfr") is SGFR
    with pytest.raises(ReconadError):
        SGFR(sampling_ratio=0.0)
    with pytest.raises(ReconadError):
        SGFR().predict(torch.zeros(1, 4, 2, 2))
    model = SGFR(sampling_ratio=1.0).fit(torch.randn(2, 4, 3, 3))
    with pytest.raises(ReconadError):
        model.predict(torch.zeros(1, 5, 3, 3))


def test_parameters_are_the_ten_that_serve_users() -> None:
    names = "sampling_ratio n_candidates lam alpha iters rounds pool_size metric nprobe seed"
    assert list(SGFR().get_config()) == names.split()
