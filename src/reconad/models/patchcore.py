"""PatchCore (Roth et al., CVPR 2022): kNN distance to a greedy-coreset memory bank of nominal patches."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from reconad.errors import ReconadError
from reconad.models.base import init_config, register
from reconad.models.coreset import greedy_coreset
from reconad.models.knn import NearestNeighbors, calibrate_nprobe, ivf_centroids


@register
class PatchCore:
    """Memory bank = greedy coreset of the good images' patch features; score = distance to the nearest atom.

    ``coreset_ratio``: fraction of all training patches kept (default 10 %, PatchCore's default).
    ``k``: neighbours averaged for the score (1 = PatchCore). ``projection_dim``: random projection used only
    to choose the coreset. ``nprobe``: IVF cells probed by the nearest-atom search (``2√M`` cells for an
    ``M``-atom bank); 0 = exact search; ``"auto"`` (default) = learned at fit time, the smallest power of
    two that finds the exact nearest atom of at least ``min_recall`` of 4,096 seeded training patches left
    out of the bank (:func:`~reconad.models.knn.calibrate_nprobe`). On held-back good images of the shared
    data sets that gives recall@1 ≥ 0.98 (``benchmarks/knn_recall.py``) at 2× to 8× the speed of exact search.
    """

    name: ClassVar[str] = "patchcore"
    unified: ClassVar[bool] = False

    def __init__(
        self,
        coreset_ratio: float = 0.1,
        k: int = 1,
        projection_dim: int = 128,
        nprobe: int | str = "auto",
        min_recall: float = 0.99,
        seed: int = 0,
    ) -> None:
        if not 0.0 < coreset_ratio <= 1.0:
            raise ReconadError(f"coreset_ratio must be in (0, 1], got {coreset_ratio}")
        if k < 1 or not (nprobe == "auto" or (isinstance(nprobe, int) and nprobe >= 0)):
            raise ReconadError(f"need k >= 1 and nprobe 'auto' or an int >= 0, got k={k}, nprobe={nprobe!r}")
        if not 0.0 < min_recall <= 1.0:
            raise ReconadError(f"min_recall must be in (0, 1], got {min_recall}")
        self.coreset_ratio = coreset_ratio
        self.k = k
        self.projection_dim = projection_dim
        self.nprobe = nprobe
        self.min_recall = min_recall
        self.seed = seed
        self._device = torch.device("cpu")  # where the search runs (:meth:`to`)

    def fit(self, features: Tensor, categories: list[str] | None = None) -> PatchCore:
        patches = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1]).float()
        n_keep = max(1, round(self.coreset_ratio * len(patches)))
        keep = (
            greedy_coreset(patches, n_keep, self.projection_dim, self.seed) if n_keep < len(patches) else None
        )
        self.bank_ = (patches if keep is None else patches[keep]).contiguous()
        auto = self.nprobe == "auto"
        self.centroids_ = ivf_centroids(self.bank_, 1 if auto else self.nprobe, self.seed)
        self.nprobe_ = self.nprobe if not auto else self._calibrate(patches, keep)
        self._build()
        return self

    def _calibrate(self, patches: Tensor, keep: Tensor | None) -> int:
        """``nprobe`` learned from up to 4,096 seeded training patches the coreset left out."""
        if keep is None or len(self.centroids_) == 0:
            return 0
        left_out = torch.ones(len(patches), dtype=torch.bool)
        left_out[keep] = False
        rest = left_out.nonzero()[:, 0]
        pick = torch.randperm(len(rest), generator=torch.Generator().manual_seed(self.seed))[:4096]
        queries = patches[rest[pick]]
        return calibrate_nprobe(self.bank_, self.centroids_, queries, self.min_recall, k=self.k)

    def _build(self) -> None:
        self._index = NearestNeighbors(self.bank_, self.centroids_, self.nprobe_, device=self._device)

    def to(self, device: str | torch.device) -> PatchCore:
        """Search on ``device`` from now on (a CUDA GPU: :mod:`~reconad.models.knn`); the state stays put."""
        self._device = torch.device(device)
        if hasattr(self, "bank_"):
            self._build()
        return self

    def predict(self, features: Tensor, categories: list[str] | None = None) -> Tensor:
        n, c, h, w = features.shape
        dist, _ = self._index.search(features.permute(0, 2, 3, 1).reshape(-1, c), self.k)
        return dist.clamp_(min=0).sqrt_().mean(dim=1).reshape(n, h, w)

    def state_dict(self) -> dict[str, Tensor]:
        return {"bank": self.bank_, "centroids": self.centroids_, "nprobe": torch.tensor(self.nprobe_)}

    def get_config(self) -> dict[str, Any]:
        return init_config(self)

    @classmethod
    def from_state(cls, config: dict[str, Any], state: dict[str, Tensor]) -> PatchCore:
        model = cls(**config)
        model.bank_ = state["bank"].float().contiguous()
        model.centroids_ = state.get("centroids", torch.empty(0, model.bank_.shape[1])).float().contiguous()
        model.nprobe_ = int(state["nprobe"]) if "nprobe" in state else int(model.nprobe)
        model._build()
        return model
