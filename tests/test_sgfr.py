"""SGFR: reconstruction on a union of subspaces, subspace-covering sampling, exact save/load, any grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from sklearn.linear_model import ElasticNet

from reconad.errors import ReconadError
from reconad.models import model_class
from reconad.models.self_expressive import elastic_net_gram, residual_from_gram
from reconad.models.sgfr import SGFR

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


def test_random_sampling_misses_small_subspaces() -> None:
    """The fixture above is a real test: a random 4 % bank leaves the small subspaces unreconstructable."""
    bases, train, labels = imbalanced_union()
    model = SGFR(sampling_ratio=0.04, lam=1e-3, nprobe=0, sampling="random").fit(as_features(train))
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


def test_nonneg_solver_matches_sklearn_positive_elastic_net() -> None:
    gen = torch.Generator().manual_seed(14)
    atoms = torch.randn(3, 10, 25, generator=gen, dtype=torch.float64)
    y = torch.randn(3, 25, generator=gen, dtype=torch.float64)
    gram, b = atoms @ atoms.transpose(1, 2), (atoms @ y.unsqueeze(-1)).squeeze(-1)
    ours = elastic_net_gram(gram, b, 0.3, 0.5, iters=800, nonneg=True)
    assert (ours >= 0).all()
    for i in range(3):
        ref = ElasticNet(
            alpha=0.3 / 25, l1_ratio=0.5, fit_intercept=False, positive=True, tol=1e-12, max_iter=100_000
        )
        ref.fit(atoms[i].T.numpy(), y[i].numpy())
        np.testing.assert_allclose(ours[i].numpy(), ref.coef_, atol=1e-5)


def test_affine_solver_matches_a_constrained_reference() -> None:
    from scipy.optimize import minimize

    gen = torch.Generator().manual_seed(15)
    atoms = torch.randn(3, 8, 20, generator=gen, dtype=torch.float64)
    y = torch.randn(3, 20, generator=gen, dtype=torch.float64)
    gram, b = atoms @ atoms.transpose(1, 2), (atoms @ y.unsqueeze(-1)).squeeze(-1)
    lam, alpha = 0.2, 0.5
    ours = elastic_net_gram(gram, b, lam, alpha, iters=3000, affine=True)
    torch.testing.assert_close(ours.sum(-1), torch.ones(3, dtype=torch.float64), atol=1e-4, rtol=0)
    for i in range(3):
        a, t = atoms[i].numpy(), y[i].numpy()

        def objective(pn: np.ndarray, a: np.ndarray = a, t: np.ndarray = t) -> float:  # c = p − n, p, n ≥ 0
            c = pn[:8] - pn[8:]
            r = t - a.T @ c
            return 0.5 * r @ r + lam * alpha * pn.sum() + lam * (1 - alpha) / 2 * c @ c

        ref = minimize(
            objective,
            np.full(16, 1 / 16),
            method="SLSQP",
            bounds=[(0, None)] * 16,
            constraints=[{"type": "eq", "fun": lambda pn: pn[:8].sum() - pn[8:].sum() - 1}],
            options={"ftol": 1e-14, "maxiter": 2000},
        )
        np.testing.assert_allclose(ours[i].numpy(), ref.x[:8] - ref.x[8:], atol=1e-4)


def test_affine_codes_do_not_mimic_a_scaled_normal_feature() -> None:
    bases = subspaces(3)
    train, _ = draw(bases, [400, 400, 400], seed=0)
    train = train / train.norm(dim=1, keepdim=True)  # normal features: unit length
    half = train[:50] * 0.5  # in the span of the bank, but half as long as anything in it
    kw = {"sampling_ratio": 0.5, "n_candidates": 3, "lam": 1e-3, "nprobe": 0, "metric": "l2"}
    linear = SGFR(**kw).fit(as_features(train))
    affine = SGFR(**kw, affine=True).fit(as_features(train))
    assert rel_residual(linear, half).median() < 0.05  # 3 atoms span the whole 3-dim subspace
    assert rel_residual(affine, half).median() > 0.5  # their affine hull is a plane away from the origin
    assert rel_residual(affine, train[:50]).median() < 0.05  # normal features are still rebuilt


def test_objective_score_adds_the_code_penalty() -> None:
    bases = subspaces(2)
    train, _ = draw(bases, [200, 200], seed=1)
    test, _ = draw(bases, [20, 20], seed=2)
    feats = as_features(test)
    model = SGFR(sampling_ratio=0.25, lam=0.05, nprobe=0).fit(as_features(train))
    _, c, res = model.reconstruct(feats)
    penalty = 0.05 * (2 * 0.5 * c.abs().sum(-1) + 0.5 * c.pow(2).sum(-1))
    objective = SGFR.from_state({**model.get_config(), "score": "objective"}, model.state_dict())
    expected = ((res + penalty).sqrt() * model.scale_).reshape(feats.shape[0], 1, -1)
    torch.testing.assert_close(objective.predict(feats), expected)
    assert (objective.predict(feats) > model.predict(feats)).all()  # every code is non-zero here
    with pytest.raises(ReconadError, match="score"):
        SGFR(score="energy")


def test_channel_rms_makes_scores_blind_to_channel_units(tmp_path) -> None:
    gen = torch.Generator().manual_seed(11)
    train, test = torch.randn(10, 8, 6, 6, generator=gen), torch.randn(2, 8, 6, 6, generator=gen)
    units = torch.logspace(-1, 1, 8).view(1, 8, 1, 1)  # channels 100x apart in size
    kw = {"sampling_ratio": 0.3, "nprobe": 0}
    plain = SGFR(**kw, channel_rms=True).fit(train)
    rescaled = SGFR(**kw, channel_rms=True).fit(train * units)
    base = plain.predict(test)
    # equal up to float rounding through the ADMM steps
    torch.testing.assert_close(rescaled.predict(test * units), base, rtol=5e-3, atol=1e-3)
    raw = SGFR(**kw).fit(train * units)  # without it the large channels decide
    assert ((raw.predict(test * units) - base).abs() / base).max() > 0.1
    save_file(rescaled.state_dict(), str(tmp_path / "sgfr.safetensors"))
    loaded = SGFR.from_state(rescaled.get_config(), load_file(str(tmp_path / "sgfr.safetensors")))
    assert torch.equal(loaded.predict(test * units), rescaled.predict(test * units))
    old = {k: v for k, v in raw.state_dict().items() if k != "channel_scale"}  # a run saved before the option
    assert torch.equal(SGFR.from_state(raw.get_config(), old).predict(test), raw.predict(test))


def test_learned_coder_reconstructs_the_subspaces_not_noise() -> None:
    """The SENet-style coder (codes from query/key networks, not solved): in-subspace points rebuild far
    better than off-subspace ones, and its learned state round-trips through safetensors."""
    bases = subspaces(4)
    train, _ = draw(bases, [300, 300, 300, 300], seed=1)
    model = SGFR(sampling_ratio=0.25, lam=1e-3, nprobe=0, coder="network", coder_steps=100)
    model.fit(as_features(train))
    test, _ = draw(bases, [20, 20, 20, 20], seed=2)
    on = rel_residual(model, test)
    off = rel_residual(model, torch.randn(40, DIM, generator=torch.Generator().manual_seed(3)))
    assert on.mean() < 0.2
    assert on.max() < off.min()
    state = model.state_dict()
    assert any(k.startswith("coder.") for k in state)
    loaded = SGFR.from_state(model.get_config(), state)
    assert torch.equal(model.predict(as_features(test)), loaded.predict(as_features(test)))
    with pytest.raises(ReconadError):
        SGFR(coder="magic")


def test_whitened_score_discounts_channels_that_rebuild_poorly_on_normal_data(tmp_path) -> None:
    """Channels 0–7 carry noise that 8 atoms cannot rebuild: a deviation there is more normal than the same
    deviation in a clean channel. The whitened score separates the two further than the plain residual."""
    bases = subspaces(3, seed=13)
    train, _ = draw(bases, [400, 400, 400], seed=14)
    train[:, :8] += 0.5 * torch.randn(len(train), 8, generator=torch.Generator().manual_seed(15))
    test, _ = draw(bases, [10, 10, 10], seed=16)
    noisy, clean = test.clone(), test.clone()
    noisy[:, 0] += 1.5
    clean[:, 20] += 1.5
    params = {"sampling_ratio": 0.25, "lam": 1e-3, "nprobe": 0, "n_candidates": 8}
    plain = SGFR(**params).fit(as_features(train))
    white = SGFR(**params, score="whitened").fit(as_features(train))
    assert white.residual_scale_[:8].min() > white.residual_scale_[8:].max()

    def ratio(model: SGFR) -> float:
        return float(model.predict(as_features(clean)).mean() / model.predict(as_features(noisy)).mean())

    assert ratio(white) > 1.5 * ratio(plain)
    save_file(white.state_dict(), str(tmp_path / "w.safetensors"))
    loaded = SGFR.from_state(white.get_config(), load_file(str(tmp_path / "w.safetensors")))
    assert torch.equal(white.predict(as_features(clean)), loaded.predict(as_features(clean)))


def test_weighted_solver_meets_its_optimality_conditions() -> None:
    """Per-atom penalty weights ω: the ridge case has a closed form, and ℓ₁ codes satisfy the KKT
    conditions ``|(Gc − b)_k| ≤ λω_k`` (equality with the sign of ``c_k`` where ``c_k ≠ 0``)."""
    gen = torch.Generator().manual_seed(17)
    a = torch.randn(8, 6, 10, generator=gen, dtype=torch.float64)
    y = torch.randn(8, 10, generator=gen, dtype=torch.float64)
    gram, b = a @ a.transpose(1, 2), (a @ y.unsqueeze(-1)).squeeze(-1)
    w = 1 + 3 * torch.rand(8, 6, generator=gen, dtype=torch.float64)
    lam = 0.3
    ridge = elastic_net_gram(gram, b, lam, 0.0, iters=300, weights=w)
    closed = torch.linalg.solve(gram + torch.diag_embed(lam * w), b)
    assert torch.allclose(ridge, closed, atol=1e-6)
    lasso = elastic_net_gram(gram, b, lam, 1.0, iters=2000, weights=w)
    grad = (gram @ lasso.unsqueeze(-1)).squeeze(-1) - b
    on = lasso != 0
    assert on.any() and (~on).any()
    assert torch.allclose(grad[on], -lam * w[on] * lasso[on].sign(), atol=1e-5)
    assert (grad[~on].abs() <= lam * w[~on] + 1e-5).all()


def test_locality_does_not_let_far_atoms_mimic_a_far_feature() -> None:
    """A feature three times as long as any normal one lies in their span: plain codes rebuild it, codes
    whose penalty grows with the distance to each atom do not, and normal features are still rebuilt."""
    bases = subspaces(3)
    train, _ = draw(bases, [400, 400, 400], seed=0)
    train = train / train.norm(dim=1, keepdim=True)
    far = train[:50] * 3.0
    kw = {"sampling_ratio": 0.5, "n_candidates": 8, "lam": 0.02, "nprobe": 0}
    plain = SGFR(**kw).fit(as_features(train))
    local = SGFR(**kw, locality=10.0).fit(as_features(train))
    assert 0 < local.locality_scale_ < 1
    assert rel_residual(plain, far).median() < 0.05
    assert rel_residual(local, far).median() > 4 * rel_residual(plain, far).median()
    assert rel_residual(local, train[:50]).median() < 0.1
    loaded = SGFR.from_state(local.get_config(), local.state_dict())
    assert torch.equal(local.predict(as_features(far)), loaded.predict(as_features(far)))
