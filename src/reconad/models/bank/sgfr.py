"""SGFR — subspace-guided feature reconstruction (after Hotta, Zhang, Hagihara, Akashi, arXiv 2309.13904).

Nominal patch features are taken to lie on a union of low-dimensional subspaces. A self-expressive model
(each nominal feature an elastic-net combination of the others, zero self-coefficient) reveals them; its
coefficients say which features carry the subspaces, and only those are kept as atoms. A test feature is
reconstructed from the atoms of its own subspace (its nearest atoms, the same elastic net) and its anomaly
score is the reconstruction residual. See ``docs/sgfr.md`` for the equations and the measurements.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from reconad.errors import ReconadError
from reconad.features.store import (
    WORKING_COPIES,
    FeatureRows,
    Features,
    as_patches,
    gather_patches,
    image_chunks,
)
from reconad.models.bank.coreset import continue_coreset, coverage_radius
from reconad.models.bank.knn import MAX_NPROBE, METRICS, NearestNeighbors, ivf_centroids
from reconad.models.bank.origins import atom_origins, with_added
from reconad.models.bank.self_expressive import coverage_select, sparse_codes
from reconad.models.bank.traced_linalg import spd_inverse
from reconad.models.base import init_config, register
from reconad.params import MAX_SEED, fraction, param, validate


def _patches(features: Tensor) -> Tensor:
    if features.ndim != 4:
        raise ReconadError(f"features must be [N, C, h, w], got shape {tuple(features.shape)}")
    return features.detach().float().cpu().permute(0, 2, 3, 1).reshape(-1, features.shape[1])


@register
@dataclass(eq=False)
class SGFR:
    """Sparse self-expressive reconstruction of patch features from a sampled atom bank.

    Atoms are sampled in coverage rounds: the self-expressive coefficient mass, re-aimed each round at the
    patches the atoms so far rebuild worst. ``metric="abscos"`` (largest ``|cos|``) is the subspace notion of
    closeness. ``lam`` and ``alpha`` act on features scaled to unit mean squared norm.
    """

    name: ClassVar[str] = "sgfr"
    unified: ClassVar[bool] = False
    align_corners: ClassVar[bool] = False  # patch scores resized once from the grid, as official PatchCore

    sampling_ratio: float = fraction(0.1, help="fraction of the training patches kept as atoms")
    n_candidates: int = param(
        16, low=1, high=256, help="nearest atoms a feature may use (cost grows as its square)"
    )
    lam: float = param(
        0.02, low=0, high=100, help="elastic-net weight λ (from about 1 up, every code is zero)"
    )
    alpha: float = param(0.5, low=0, high=1, help="share of λ on the ℓ₁ term (0 = ridge, 1 = lasso)")
    iters: int = param(15, low=1, high=1000, help="ADMM steps of each elastic-net code")
    rounds: int = param(4, low=1, high=64, help="coverage rounds of the atom sampling")
    pool_size: int = param(131072, low=1, help="training patches self-expressed to choose the atoms")
    metric: str = param("abscos", choices=METRICS, help="which atoms are nearest: |cos|, cos or l2 distance")
    nprobe: int = param(
        8, low=0, high=MAX_NPROBE, help="IVF lists probed by the atom search (0 = exact search)"
    )
    seed: int = param(0, low=0, high=MAX_SEED, help="seeds all randomness (pool, IVF)")

    def __post_init__(self) -> None:
        validate(self)
        self._device = torch.device("cpu")  # where the atom search of predict runs (:meth:`to`)

    # ---------------------------------------------------------------- fit
    def fit(self, features: Features, categories: list[str] | None = None) -> SGFR:
        """The atoms, sampled from the patches of ``features``: in memory, or spooled rows
        (:class:`~reconad.features.store.FeatureRows`, read a chunk at a time: :meth:`_fit_rows`)."""
        if isinstance(features, FeatureRows):
            return self._fit_rows(features)
        x = _patches(features)
        if len(x) < 2:
            raise ReconadError("SGFR needs at least two training patches")
        self.scale_ = x.pow(2).sum(1).mean().sqrt().clamp_min(1e-12)
        x = x / self.scale_
        gen = torch.Generator().manual_seed(self.seed)
        budget = min(len(x), max(2, round(self.sampling_ratio * len(x))))
        pool = self._pool(len(x), budget, gen)
        self.support_ = pool[self._sample(x[pool], budget)]  # which training patches became atoms (not saved)
        self.bank_ = x[self.support_].contiguous()
        self.origin_ = self.support_ // (features.shape[2] * features.shape[3])  # each atom's image
        return self._index_bank(x)

    def _fit_rows(self, features: FeatureRows) -> SGFR:
        """:meth:`fit` reading the rows a budget's worth of images at a time: the scale summed chunk by
        chunk (in float64: equal to the in-memory mean up to rounding), then only the sampled pool and the
        coverage sample gathered; the same atoms as in memory wherever the scale rounds alike."""
        n, _, h, w = features.shape
        features.check_chunk(1, "sgfr's reads")
        per = max(1, features.budget // (WORKING_COPIES * features.row_bytes))
        count = n * h * w
        if count < 2:
            raise ReconadError("SGFR needs at least two training patches")
        total = sum(float(as_patches(x).double().pow(2).sum()) for _, x in image_chunks(features, per))
        self.scale_ = torch.tensor((total / count) ** 0.5, dtype=torch.float32).clamp_min(1e-12)
        gen = torch.Generator().manual_seed(self.seed)
        budget = min(count, max(2, round(self.sampling_ratio * count)))
        pool = self._pool(count, budget, gen)
        points = gather_patches(features, pool, per) / self.scale_
        chosen = self._sample(points, budget)
        self.support_ = pool[chosen]
        self.bank_ = points[chosen].contiguous()
        self.origin_ = self.support_ // (h * w)
        pick = torch.randperm(count, generator=torch.Generator().manual_seed(self.seed))[:4096]
        return self._index_bank(gather_patches(features, pick, per) / self.scale_)

    def _index_bank(self, patches: Tensor) -> SGFR:
        """The atom search's IVF cells and the coverage radius of the (scaled) training ``patches``."""
        self.centroids_ = ivf_centroids(self.bank_, self.nprobe, self.seed, self.metric)
        self.coverage_ = coverage_radius(self.bank_, patches, self.seed)
        self._build()
        return self

    def extend(self, features: Tensor) -> SGFR:
        """Learn from more good images without refitting: their patches (in the bank's units) join the bank
        where it does not already cover them (:func:`~.coreset.continue_coreset`, farthest first: not the
        coverage sampling of :meth:`fit`); the IVF cells and the scale stay."""
        x = _patches(features) / self.scale_
        if getattr(self, "coverage_", None) is None:
            raise ReconadError("this sgfr run was fitted by an older reconad (no coverage radius): refit it")
        joining = continue_coreset(self.bank_, x, self.coverage_)
        self.bank_ = torch.cat([self.bank_, x[joining]]).contiguous()
        self.origin_ = with_added(getattr(self, "origin_", None), len(joining))
        self._build()
        return self

    def _pool(self, n: int, budget: int, gen: torch.Generator) -> Tensor:
        """The seeded training patches self-expressed to choose ``budget`` atoms (all where it is all)."""
        if budget >= n:
            return torch.arange(n)
        return torch.randperm(n, generator=gen)[: min(n, max(self.pool_size, 2 * budget))]

    def _sample(self, points: Tensor, budget: int) -> Tensor:
        """Which ``budget`` of the pool's ``points`` become atoms: coverage sampling, each point
        self-expressed without itself."""
        if budget >= len(points):
            return torch.arange(len(points))
        idx, coef, _ = self._codes(self._index_over(points), points, exclude_self=torch.arange(len(points)))

        def residuals(chosen: Tensor) -> Tensor:
            return self._codes(self._index_over(points[chosen]), points)[2]

        return coverage_select(idx, coef, budget, self.rounds, residuals)

    def _index_over(self, atoms: Tensor) -> NearestNeighbors:
        centroids = ivf_centroids(atoms, self.nprobe, self.seed, self.metric)
        return NearestNeighbors(atoms, centroids, self.nprobe, self.metric)

    def _codes(
        self,
        index: NearestNeighbors,
        y: Tensor,
        exclude_self: Tensor | None = None,
        exclude: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        k, lam, alpha, iters = self.n_candidates, self.lam, self.alpha, self.iters
        return sparse_codes(index, y, k, lam, alpha, iters, exclude_self, exclude=exclude)

    def _build(self) -> None:
        self._index = NearestNeighbors(self.bank_, self.centroids_, self.nprobe, self.metric, self._device)

    def to(self, device: str | torch.device) -> SGFR:
        """Search the atoms on ``device`` from now on (a CUDA GPU: :mod:`.knn`); the coding and
        the state stay on the CPU."""
        self._device = torch.device(device)
        if hasattr(self, "bank_"):
            self._build()
        return self

    # ---------------------------------------------------------------- predict
    def reconstruct(self, features: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per patch ``(atom indices [P, K], codes [P, K], squared residuals [P])`` in scaled units."""
        y = self._scaled_patches(features)  # (checks that the model is fitted)
        return self._codes(self._index, y)

    def _scaled_patches(self, features: Tensor) -> Tensor:
        if not hasattr(self, "bank_"):
            raise ReconadError("SGFR is not fitted: call fit() first")
        y = _patches(features)
        if y.shape[1] != self.bank_.shape[1]:
            raise ReconadError(
                f"features have {y.shape[1]} channels but the model was fitted on {self.bank_.shape[1]}"
            )
        return y / self.scale_

    def predict(self, features: Tensor, categories: list[str] | None = None) -> Tensor:
        """Patch scores ``[N, h, w]`` in feature units: the residual norm ``‖y − Xc‖``."""
        n, _, h, w = features.shape
        _, _, res = self.reconstruct(features)
        return (res.sqrt() * self.scale_).reshape(n, h, w)

    def predict_left_out(self, features: Tensor, images: Tensor) -> Tensor:
        """Patch scores ``[N, h, w]`` of training images (``images``: their rows in what :meth:`fit` took),
        each coded without the atoms taken from it: out-of-sample scores from the one fit."""
        n, _, h, w = features.shape
        y, origins = self._scaled_patches(features).reshape(n, h * w, -1), atom_origins(self)
        res = []
        for row, image in enumerate(images.tolist()):
            own = origins.of(image)
            if len(own) >= len(self.bank_):
                raise ReconadError(
                    "sgfr: every atom comes from one good image: add good images or raise sampling_ratio"
                )
            res.append(self._codes(self._index, y[row], exclude=own)[2])
        return (torch.stack(res).sqrt() * self.scale_).reshape(n, h, w)

    def export_head(self) -> nn.Module:
        """:meth:`predict` as a traceable module (:class:`SGFRHead`), in eval mode, on the CPU."""
        return SGFRHead(self).eval()

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Tensor]:
        return {
            "bank": self.bank_,
            "centroids": self.centroids_,
            "scale": self.scale_.reshape(1),
        } | ({} if self.coverage_ is None else {"coverage": torch.tensor(self.coverage_)})

    def get_config(self) -> dict[str, Any]:
        return init_config(self)

    @classmethod
    def from_state(cls, config: dict[str, Any], state: dict[str, Tensor]) -> SGFR:
        model = cls(**config)
        model.bank_ = state["bank"].float().contiguous()
        model.centroids_ = state["centroids"].float().contiguous()
        model.scale_ = state["scale"].float().reshape(())
        model.coverage_ = float(state["coverage"]) if "coverage" in state else None
        model._build()
        return model


class SGFRHead(nn.Module):
    """SGFR's ``predict`` with operations ONNX has: each patch, scaled to the bank's units, is coded over its
    ``n_candidates`` nearest atoms (found by the model's search and metric:
    :func:`~.traced_search.bank_search`) with the elastic net, solved by the same ADMM steps as
    :func:`~.self_expressive.elastic_net_gram`; its score is the residual norm in feature units. The solver's
    one Cholesky inverse becomes :func:`~.traced_linalg.spd_inverse`.

    The ADMM step size ``ρ = max(5λ, 10⁻³ · mean Gram diagonal)`` is a constant where the bank's largest
    squared norm already gives ``5λ`` (the default λ on unit-scale atoms); otherwise it is taken from the
    graph's batch (the library takes it per 4,096 patches).
    """

    def __init__(self, model: SGFR) -> None:
        super().__init__()
        from reconad.models.bank.traced_search import bank_search  # (onnxscript: only when exporting)

        bank = model.bank_.detach().float()
        self.metric, self.k = model.metric, max(1, min(model.n_candidates, len(bank)))
        self.lam, self.alpha, self.iters = float(model.lam), float(model.alpha), int(model.iters)
        self.scale = float(model.scale_)
        norms = bank.norm(dim=1)
        self.rho = 5.0 * self.lam if 1e-3 * float(norms.max()) ** 2 <= 5.0 * self.lam else None
        self.register_buffer("norms", norms)
        self.register_buffer("bank", bank)
        self.search = bank_search(bank, model.centroids_, model.nprobe, self.metric, self.k)

    def candidates(self, y: Tensor, yy: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The ``k`` nearest atoms ``[P, k, C]`` and ``b = ⟨atom, y⟩`` ``[P, k]``, read off the search as the
        library does: a slot the search could not fill (an IVF probe of fewer than ``k`` entries) is a zero
        atom with ``b = 0``."""
        if self.metric == "l2":
            key, idx, _ = self.search(y)
            b = 0.5 * (key + self.norms[idx].pow(2))
        else:
            key, idx, sign = self.search(y / yy.sqrt().clamp_min(1e-12)[:, None])
            b = key * sign * self.norms[idx] * yy.sqrt()[:, None]
        atoms = self.bank[idx]
        if self.search.may_miss:
            filled = key > -torch.inf
            atoms, b = atoms * filled[:, :, None], torch.where(filled, b, 0.0)
        return atoms, b

    def forward(self, features: Tensor) -> Tensor:
        n, ch, h, w = features.shape
        y = features.permute(0, 2, 3, 1).reshape(-1, ch) / self.scale
        yy = y.pow(2).sum(1)
        atoms, b = self.candidates(y, yy)
        gram = atoms @ atoms.transpose(1, 2)
        l1, l2 = self.lam * self.alpha, self.lam * (1.0 - self.alpha)
        rho = self.rho
        if rho is None:
            rho = torch.clamp(gram.diagonal(dim1=-2, dim2=-1).mean() * 1e-3, min=5.0 * self.lam)
        inv = spd_inverse(gram + (l2 + rho) * torch.eye(self.k))
        c0 = (inv @ b[:, :, None])[:, :, 0]
        inv_rho, thr = rho * inv, l1 / rho
        z = c0 - c0.clamp(-thr, thr)
        u = c0 - z
        for _ in range(self.iters - 1):
            c = c0 + (inv_rho @ (z - u)[:, :, None])[:, :, 0]
            z = (c + u) - (c + u).clamp(-thr, thr)
            u = u + c - z
        quad = (z * (gram @ z[:, :, None])[:, :, 0]).sum(1)
        residual = (yy - 2 * (b * z).sum(1) + quad).clamp(min=0)
        return (residual.sqrt() * self.scale).reshape(n, h, w)
