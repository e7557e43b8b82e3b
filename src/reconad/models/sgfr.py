"""SGFR — subspace-guided feature reconstruction (after Hotta, Zhang, Hagihara, Akashi, arXiv 2309.13904).

Nominal patch features are taken to lie on a union of low-dimensional subspaces. A self-expressive model
(each nominal feature an elastic-net combination of the others, zero self-coefficient) reveals them; its
coefficients say which features carry the subspaces, and only those are kept as atoms. A test feature is
reconstructed from the atoms of its own subspace (its nearest atoms, the same elastic net) and its anomaly
score is the reconstruction residual. See ``docs/sgfr.md`` for the equations and the measurements.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from reconad.errors import ReconadError
from reconad.models.base import init_config, register
from reconad.models.coreset import greedy_coreset
from reconad.models.knn import METRICS, NearestNeighbors, ivf_centroids
from reconad.models.self_expressive import (
    candidates,
    code,
    coverage_select,
    residual_vectors,
    sq_distance_either_sign,
)
from reconad.models.self_expressive_net import SelfExpressiveNet, train_coder

SAMPLINGS = ("coverage", "usage", "random", "coreset")
SCORES = ("residual", "objective", "whitened")
CODERS = ("solver", "network")
CODER_POINTS = 65536  # normal patches the learned coder trains on


def _patches(features: Tensor) -> Tensor:
    if features.ndim != 4:
        raise ReconadError(f"features must be [N, C, h, w], got shape {tuple(features.shape)}")
    return features.detach().float().cpu().permute(0, 2, 3, 1).reshape(-1, features.shape[1])


@register
class SGFR:
    """Sparse self-expressive reconstruction of patch features from a sampled atom bank.

    ``sampling_ratio``: fraction of the training patches kept as atoms. ``n_candidates``: atoms a feature
    may use (its nearest ones). ``lam``, ``alpha``: elastic-net weight λ and ℓ₁ share α, on features scaled to
    unit mean squared norm. ``iters``: ADMM steps. ``sampling``: ``"coverage"`` (self-expressive coefficient
    mass with coverage re-weighting), ``"usage"`` (total |coefficient| only), ``"random"`` or ``"coreset"``
    (greedy farthest point, for comparison). ``pool_size``: training patches self-expressed to choose atoms.
    ``nprobe``: IVF lists probed in the atom search (0 = exact search). ``nonneg``: non-negative codes (a
    patch rebuilt inside the cone of its atoms). ``affine``: codes that sum to one (a patch rebuilt inside the
    affine hull of its atoms). ``score``: ``"residual"`` (``‖y − Xc‖``) or ``"objective"`` (the elastic-net
    objective at the code, as a norm: a feature rebuilt only with large coefficients scores higher) or
    ``"whitened"`` (each channel of the residual divided by its RMS on training patches coded without
    themselves: a channel that rebuilds poorly on normal patches counts less).
    ``channel_rms``: divide every channel by its root mean square over the training patches first, so that
    each channel counts alike in the codes and the residual (without it the backbone's larger channels
    dominate). ``coder``: ``"solver"`` (the elastic net solved for every patch) or ``"network"`` (a
    SENet-style query/key network trained for ``coder_steps`` batches on the training patches gives the codes;
    ``self_expressive_net.py``). ``locality``: ``γ`` of locality-constrained reconstruction (solver only):
    each candidate atom's penalty is weighted by ``1 + γ d² / d̄²`` (``d`` the distance from the feature to
    the atom or its negative, ``d̄²`` the mean of ``d²`` from a training patch to its nearest other atom), so a
    feature far from every atom cannot be rebuilt cheaply (0: off). ``seed``: all randomness.
    """

    name: ClassVar[str] = "sgfr"
    unified: ClassVar[bool] = False

    def __init__(
        self,
        sampling_ratio: float = 0.1,
        n_candidates: int = 16,
        lam: float = 0.02,
        alpha: float = 0.5,
        iters: int = 15,
        sampling: str = "coverage",
        rounds: int = 4,
        pool_size: int = 131072,
        metric: str = "abscos",
        nprobe: int = 8,
        nonneg: bool = False,
        affine: bool = False,
        score: str = "residual",
        channel_rms: bool = False,
        coder: str = "solver",
        coder_steps: int = 200,
        locality: float = 0.0,
        seed: int = 0,
    ) -> None:
        if not 0.0 < sampling_ratio <= 1.0:
            raise ReconadError(f"sampling_ratio must be in (0, 1], got {sampling_ratio}")
        if sampling not in SAMPLINGS:
            raise ReconadError(f"sampling must be one of {', '.join(SAMPLINGS)}, got {sampling!r}")
        if score not in SCORES:
            raise ReconadError(f"score must be one of {', '.join(SCORES)}, got {score!r}")
        if coder not in CODERS or coder_steps < 1:
            raise ReconadError(f"coder must be one of {', '.join(CODERS)} and coder_steps >= 1")
        if metric not in METRICS:
            raise ReconadError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
        if n_candidates < 1 or iters < 1 or lam < 0 or not 0.0 <= alpha <= 1.0 or locality < 0:
            raise ReconadError("need n_candidates >= 1, iters >= 1, lam >= 0, 0 <= alpha <= 1, locality >= 0")
        self.sampling_ratio = sampling_ratio
        self.n_candidates = n_candidates
        self.lam = lam
        self.alpha = alpha
        self.iters = iters
        self.sampling = sampling
        self.rounds = rounds
        self.pool_size = pool_size
        self.metric = metric
        self.nprobe = nprobe
        self.nonneg = nonneg
        self.affine = affine
        self.score = score
        self.channel_rms = channel_rms
        self.coder = coder
        self.coder_steps = coder_steps
        self.locality = locality
        self.seed = seed
        self._device = torch.device("cpu")  # where the atom search of predict runs (:meth:`to`)

    # ---------------------------------------------------------------- fit
    def fit(self, features: Tensor, categories: list[str] | None = None) -> SGFR:
        x = _patches(features)
        if len(x) < 2:
            raise ReconadError("SGFR needs at least two training patches")
        self.channel_scale_ = torch.ones(x.shape[1])
        if self.channel_rms:  # (dividing by ones would only copy every training patch)
            self.channel_scale_ = x.pow(2).mean(0).sqrt().clamp_min(1e-12)
            x = x / self.channel_scale_
        self.scale_ = x.pow(2).sum(1).mean().sqrt().clamp_min(1e-12)
        x = x / self.scale_
        gen = torch.Generator().manual_seed(self.seed)
        budget = min(len(x), max(2, round(self.sampling_ratio * len(x))))
        self.support_ = self._sample(x, budget, gen)  # which training patches became atoms (not saved)
        self.bank_ = x[self.support_].contiguous()
        self.centroids_ = ivf_centroids(self.bank_, self.nprobe, self.seed, self.metric)
        self._build()
        if self.coder == "network":
            self.net_ = self._train_net(*self._some_patches(x, gen))
        self.locality_scale_ = torch.tensor(1.0)
        if self.locality > 0:  # d̄²: mean squared distance of a training patch to its nearest other atom
            y, own = self._some_patches(x, gen)
            _, a, b = candidates(self._index, y, 1, own)
            d2 = sq_distance_either_sign(y.pow(2).sum(1), a[:, 0].pow(2).sum(1), b[:, 0])
            self.locality_scale_ = d2.mean().clamp_min(1e-12)
        self.residual_scale_ = torch.ones(x.shape[1])
        if (
            self.score == "whitened"
        ):  # each residual channel's RMS over training patches, coded without themselves
            y, own = self._some_patches(x, gen)
            idx, c, _ = self._reconstruct(y, own)
            self.residual_scale_ = (
                residual_vectors(self.bank_, y, idx, c).pow(2).mean(0).sqrt().clamp_min(1e-6)
            )
        return self

    def _some_patches(self, x: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        """A seeded sample of ``CODER_POINTS`` training patches and each one's atom index (−2 where it is not
        an atom; −1 marks an unfilled search slot), so that coding them can leave their own atom out."""
        rows = torch.randperm(len(x), generator=gen)[:CODER_POINTS]
        own = torch.full((len(x),), -2, dtype=torch.long)
        own[self.support_] = torch.arange(len(self.support_))
        return x[rows], own[rows]

    def _train_net(self, y: Tensor, own: Tensor) -> SelfExpressiveNet:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            net = SelfExpressiveNet(y.shape[1])
        train_coder(
            net,
            self._index,
            y,
            own,
            self.n_candidates,
            self.lam,
            self.alpha,
            self.coder_steps,
            seed=self.seed,
        )
        return net

    def _sample(self, x: Tensor, budget: int, gen: torch.Generator) -> Tensor:
        n = len(x)
        if budget >= n:
            return torch.arange(n)
        if self.sampling == "random":
            return torch.randperm(n, generator=gen)[:budget]
        if self.sampling == "coreset":
            return greedy_coreset(x, budget, 128, self.seed)
        pool = torch.randperm(n, generator=gen)[: min(n, max(self.pool_size, 2 * budget))]
        points = x[pool]
        own = torch.arange(len(points))
        idx, coef, _ = self._code(self._index_over(points), points, own)

        def residuals(chosen: Tensor) -> Tensor:
            return self._code(self._index_over(points[chosen]), points)[2]

        rounds = self.rounds if self.sampling == "coverage" else 1
        return pool[coverage_select(idx, coef, budget, rounds, residuals)]

    def _index_over(self, atoms: Tensor) -> NearestNeighbors:
        centroids = ivf_centroids(atoms, self.nprobe, self.seed, self.metric)
        return NearestNeighbors(atoms, centroids, self.nprobe, self.metric)

    def _code(
        self, index: NearestNeighbors, y: Tensor, own: Tensor | None = None, locality: float = 0.0
    ) -> tuple[Tensor, Tensor, Tensor]:
        return code(
            index,
            y,
            self.n_candidates,
            self.lam,
            self.alpha,
            self.iters,
            own,
            nonneg=self.nonneg,
            affine=self.affine,
            locality=locality,
        )

    def _build(self) -> None:
        self._index = NearestNeighbors(self.bank_, self.centroids_, self.nprobe, self.metric, self._device)

    def to(self, device: str | torch.device) -> SGFR:
        """Search the atoms on ``device`` from now on (a CUDA GPU: :mod:`~reconad.models.knn`); the coding
        and the state stay on the CPU."""
        self._device = torch.device(device)
        if hasattr(self, "bank_"):
            self._build()
        return self

    # ---------------------------------------------------------------- predict
    def reconstruct(self, features: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per patch ``(atom indices [P, K], codes [P, K], squared residuals [P])`` in scaled units."""
        return self._reconstruct(self._scaled_patches(features))

    def _scaled_patches(self, features: Tensor) -> Tensor:
        if not hasattr(self, "bank_"):
            raise ReconadError("SGFR is not fitted: call fit() first")
        y = _patches(features)
        if y.shape[1] != self.bank_.shape[1]:
            raise ReconadError(
                f"features have {y.shape[1]} channels but the model was fitted on {self.bank_.shape[1]}"
            )
        return y / (self.channel_scale_ * self.scale_)

    def _reconstruct(self, y: Tensor, own: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Code scaled patches over the bank with the fitted coder (``own``: exclude each one's own atom)."""
        if self.coder == "solver":
            return self._code(self._index, y, own, self.locality / float(self.locality_scale_))
        with torch.no_grad():
            return code(self._index, y, self.n_candidates, 0.0, 0.0, 1, own, coder=self.net_)

    def predict(self, features: Tensor, categories: list[str] | None = None) -> Tensor:
        """Patch scores ``[N, h, w]`` in feature units (per-channel RMS units with ``channel_rms``): the
        residual norm ``‖y − Xc‖``, or with ``score="objective"`` ``sqrt(‖y − Xc‖² + λ(2α‖c‖₁ + (1−α)‖c‖²))``
        (twice the elastic-net objective); with ``score="whitened"`` ``‖(y − Xc) / σ‖`` (unitless; ``σ`` the
        residual's per-channel RMS on training patches)."""
        n, _, h, w = features.shape
        y = self._scaled_patches(features)
        idx, c, res = self._reconstruct(y)
        if self.score == "objective":
            res = res + self.lam * (2 * self.alpha * c.abs().sum(-1) + (1 - self.alpha) * c.pow(2).sum(-1))
        if self.score == "whitened":
            r = residual_vectors(self.bank_, y, idx, c) / self.residual_scale_
            return r.pow(2).sum(1).sqrt().reshape(n, h, w)
        return (res.sqrt() * self.scale_).reshape(n, h, w)

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Tensor]:
        state = {
            "bank": self.bank_,
            "centroids": self.centroids_,
            "scale": self.scale_.reshape(1),
            "channel_scale": self.channel_scale_,
            "residual_scale": self.residual_scale_,
            "locality_scale": self.locality_scale_.reshape(1),
        }
        if self.coder == "network":
            state |= {f"coder.{k}": v.detach() for k, v in self.net_.state_dict().items()}
        return state

    def get_config(self) -> dict[str, Any]:
        return init_config(self)

    @classmethod
    def from_state(cls, config: dict[str, Any], state: dict[str, Tensor]) -> SGFR:
        model = cls(**config)
        model.bank_ = state["bank"].float().contiguous()
        model.centroids_ = state["centroids"].float().contiguous()
        model.scale_ = state["scale"].float().reshape(())
        channels = model.bank_.shape[1]  # runs saved before channel_rms existed have no channel_scale
        model.channel_scale_ = state.get("channel_scale", torch.ones(channels)).float()
        model.residual_scale_ = state.get("residual_scale", torch.ones(channels)).float()
        model.locality_scale_ = state.get("locality_scale", torch.ones(1)).float().reshape(())
        if model.coder == "network":
            net = {k.removeprefix("coder."): v.float() for k, v in state.items() if k.startswith("coder.")}
            model.net_ = SelfExpressiveNet(channels)
            model.net_.load_state_dict(net)
            model.net_.eval()
        model._build()
        return model
