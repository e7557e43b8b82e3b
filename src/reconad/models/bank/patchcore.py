"""PatchCore (Roth et al., CVPR 2022): kNN distance to a greedy-coreset memory bank of nominal patches."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from reconad.errors import ReconadError
from reconad.features.store import FeatureRows, Features, as_patches
from reconad.models.bank.coreset import ChunkedCoreset, continue_coreset, coverage_radius, greedy_coreset
from reconad.models.bank.knn import MAX_NPROBE, NearestNeighbors, calibrate_nprobe, ivf_centroids
from reconad.models.bank.origins import atom_origins, with_added
from reconad.models.base import init_config, register
from reconad.params import MAX_SEED, fraction, param, validate


@register
@dataclass(eq=False)
class PatchCore:
    """Memory bank = greedy coreset of the good images' patch features; score = distance to the nearest atom.

    With ``nprobe="auto"`` the IVF search probes the fewest cells (a power of two) that find the exact
    nearest atom of at least ``min_recall`` of 4,096 seeded training patches left out of the bank
    (:func:`~reconad.models.bank.knn.calibrate_nprobe`). On held-back good images of the shared data sets that
    gives recall@1 >= 0.98 (``benchmarks/knn_recall.py``) at 2x to 8x the speed of exact search.
    """

    name: ClassVar[str] = "patchcore"
    unified: ClassVar[bool] = False
    align_corners: ClassVar[bool] = False  # patch scores resized once from the grid, as official PatchCore

    coreset_ratio: float = fraction(0.1, help="fraction of the training patches kept in the memory bank")
    k: int = param(1, low=1, help="nearest atoms averaged for a patch's score (1 = PatchCore)")
    projection_dim: int = param(
        128, low=1, help="random projection used only to choose the coreset (>= channels: none)"
    )
    nprobe: int | str = param(
        "auto",
        low=0,
        high=MAX_NPROBE,
        choices=("auto",),
        help="IVF cells the nearest-atom search probes; 0 = exact; 'auto' = learned at fit (min_recall)",
    )
    min_recall: float = fraction(
        0.99, help="nprobe='auto': share of left-out training patches whose exact nearest atom must be found"
    )
    seed: int = param(
        0, low=0, high=MAX_SEED, help="seeds the coreset's projection and first point, and the IVF"
    )
    coreset_chunk: int = param(  # 2¹⁶: chosen on the validation set, docs/scale.md
        1 << 16,
        low=1,
        help="patches one greedy coreset takes: more are cut into image chunks of at most this many, "
        "each chunk's coreset kept (linear in images; ChunkedCoreset)",
    )

    def __post_init__(self) -> None:
        validate(self)
        self._device = torch.device("cpu")  # where the search runs (:meth:`to`)

    def fit(self, features: Features, categories: list[str] | None = None) -> PatchCore:
        """The bank: one exact greedy coreset of every patch where they number at most ``coreset_chunk``,
        else the union of each image chunk's (:class:`~.coreset.ChunkedCoreset`); ``features`` in memory
        or spooled rows (:class:`~reconad.features.store.FeatureRows`, read a chunk at a time)."""
        n, _, h, w = features.shape
        if n * h * w > self.coreset_chunk:
            return self._fit_chunked(features, max(1, self.coreset_chunk // (h * w)))
        if isinstance(features, FeatureRows):
            features.check_chunk(n, "the patchcore coreset")
            features = features[:]
        patches = as_patches(features)
        n_keep = max(1, round(self.coreset_ratio * len(patches)))
        keep = (
            greedy_coreset(patches, n_keep, self.projection_dim, self.seed)[0]
            if n_keep < len(patches)
            else None
        )
        self.bank_ = (patches if keep is None else patches[keep]).contiguous()
        self.origin_ = (torch.arange(len(patches)) if keep is None else keep) // (h * w)  # (not saved)
        return self._index_bank(self._left_out(patches, keep), patches)

    def _fit_chunked(self, features: Features, images_per_chunk: int) -> PatchCore:
        if isinstance(features, FeatureRows):
            features.check_chunk(min(images_per_chunk, len(features)), "the patchcore coreset")
        sampler = ChunkedCoreset(self.coreset_ratio, images_per_chunk, self.projection_dim, self.seed)
        chunked = sampler.run(features)
        self.bank_, self.origin_ = chunked.bank, chunked.origin
        return self._index_bank(chunked.left_out, chunked.sample)

    def _index_bank(self, left_out: Tensor, patches: Tensor) -> PatchCore:
        """The search over the bank: IVF cells, ``nprobe`` (learned from ``left_out`` training patches where
        'auto') and the coverage radius of the training ``patches`` (a seeded 4,096 of them)."""
        if self.k > len(self.bank_):
            raise ReconadError(
                f"patchcore: k={self.k} nearest atoms asked of a memory bank of {len(self.bank_)}: "
                "lower k or raise coreset_ratio"
            )
        auto = self.nprobe == "auto"
        self.centroids_ = ivf_centroids(self.bank_, 1 if auto else self.nprobe, self.seed)
        self.nprobe_ = self.nprobe if not auto else self._nprobe_for(left_out)
        self.coverage_ = coverage_radius(self.bank_, patches, self.seed)
        self._build()
        return self

    def extend(self, features: Tensor) -> PatchCore:
        """Learn from more good images without refitting: their patches join the bank where it does not
        already cover them (:func:`~.coreset.continue_coreset`); the IVF cells and ``nprobe`` stay."""
        patches = as_patches(features)
        joining = continue_coreset(self.bank_, patches, self._coverage())
        self.bank_ = torch.cat([self.bank_, patches[joining]]).contiguous()
        self.origin_ = with_added(getattr(self, "origin_", None), len(joining))
        self._build()
        return self

    def _coverage(self) -> float:
        if getattr(self, "coverage_", None) is None:
            raise ReconadError(
                "this patchcore run was fitted by an older reconad (no coverage radius): refit it"
            )
        return self.coverage_

    def _left_out(self, patches: Tensor, keep: Tensor | None) -> Tensor:
        """Up to 4,096 seeded training patches the coreset left out (none where it kept every patch)."""
        if keep is None:
            return patches[:0]
        left_out = torch.ones(len(patches), dtype=torch.bool)
        left_out[keep] = False
        rest = left_out.nonzero()[:, 0]
        pick = torch.randperm(len(rest), generator=torch.Generator().manual_seed(self.seed))[:4096]
        return patches[rest[pick]]

    def _nprobe_for(self, queries: Tensor) -> int:
        """``nprobe`` learned from training patches left out of the bank (none, or no IVF: 0)."""
        if len(queries) == 0 or len(self.centroids_) == 0:
            return 0
        return calibrate_nprobe(self.bank_, self.centroids_, queries, self.min_recall, k=self.k)

    def _build(self) -> None:
        self._index = NearestNeighbors(self.bank_, self.centroids_, self.nprobe_, device=self._device)

    def to(self, device: str | torch.device) -> PatchCore:
        """Search on ``device`` from now on (a CUDA GPU: :mod:`.knn`); the state stays put."""
        self._device = torch.device(device)
        if hasattr(self, "bank_"):
            self._build()
        return self

    def predict(self, features: Tensor, categories: list[str] | None = None) -> Tensor:
        n, c, h, w = features.shape
        dist, _ = self._index.search(features.permute(0, 2, 3, 1).reshape(-1, c), self.k)
        return dist.clamp_(min=0).sqrt_().mean(dim=1).reshape(n, h, w)

    def predict_left_out(self, features: Tensor, images: Tensor) -> Tensor:
        """Patch scores ``[N, h, w]`` of training images (``images``: their rows in what :meth:`fit` took),
        each searched without the atoms taken from it: out-of-sample scores from the one fit."""
        n, c, h, w = features.shape
        origins = atom_origins(self)
        out = torch.empty(n, h * w)
        for row, image in enumerate(images.tolist()):
            dist, idx = self._index.search(
                features[row].permute(1, 2, 0).reshape(-1, c), self.k, origins.of(image)
            )
            if bool((idx < 0).any()):
                raise ReconadError(
                    f"patchcore: the bank holds fewer than k={self.k} atoms from good images other than one "
                    "of its own: add good images or raise coreset_ratio"
                )
            out[row] = dist.clamp_(min=0).sqrt_().mean(dim=1)
        return out.reshape(n, h, w)

    def export_head(self) -> nn.Module:
        """:meth:`predict` as a traceable module (:class:`PatchCoreHead`), in eval mode, on the CPU."""
        return PatchCoreHead(self).eval()

    def state_dict(self) -> dict[str, Tensor]:
        state = {"bank": self.bank_, "centroids": self.centroids_, "nprobe": torch.tensor(self.nprobe_)}
        return state if self.coverage_ is None else {**state, "coverage": torch.tensor(self.coverage_)}

    def get_config(self) -> dict[str, Any]:
        return init_config(self)

    @classmethod
    def from_state(cls, config: dict[str, Any], state: dict[str, Tensor]) -> PatchCore:
        model = cls(**config)
        model.bank_ = state["bank"].float().contiguous()
        model.centroids_ = state.get("centroids", torch.empty(0, model.bank_.shape[1])).float().contiguous()
        model.nprobe_ = int(state["nprobe"]) if "nprobe" in state else int(model.nprobe)
        model.coverage_ = float(state["coverage"]) if "coverage" in state else None
        model._build()
        return model


class PatchCoreHead(nn.Module):
    """PatchCore's ``predict`` with operations ONNX has: the mean distance to the ``k`` nearest bank atoms its
    search finds (:func:`~.traced_search.bank_search`)."""

    def __init__(self, model: PatchCore) -> None:
        super().__init__()
        from reconad.models.bank.traced_search import bank_search  # (onnxscript: only when exporting)

        self.search = bank_search(model.bank_, model.centroids_, model.nprobe_, "l2", model.k)

    def forward(self, features: Tensor) -> Tensor:
        n, c, h, w = features.shape
        q = features.permute(0, 2, 3, 1).reshape(-1, c)
        key, _, _ = self.search(q)
        d = q.pow(2).sum(1, keepdim=True) - key
        return d.clamp(min=0).sqrt().mean(dim=1).reshape(n, h, w)
