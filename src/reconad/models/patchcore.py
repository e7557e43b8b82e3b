"""PatchCore (Roth et al., CVPR 2022): kNN distance to a greedy-coreset memory bank of nominal patches."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from reconad.errors import ReconadError
from reconad.models.base import init_config, register
from reconad.models.coreset import greedy_coreset
from reconad.models.knn import NearestNeighbors, ivf_centroids


@register
class PatchCore:
    """Memory bank = greedy coreset of the good images' patch features; score = distance to the nearest atom.

    ``coreset_ratio``: fraction of all training patches kept (default 10 %, PatchCore's default).
    ``k``: neighbours averaged for the score (1 = PatchCore). ``projection_dim``: random projection used only
    to choose the coreset. ``nprobe``: IVF cells probed by the nearest-atom search (``2√M`` cells for an
    ``M``-atom bank); 0 = exact search. The default 16 is the smallest power of two whose mean relative
    error of the nearest distance is ≤ 0.2 % on held-back good images of all three shared data sets
    (``benchmarks/knn_recall.py``; recall@1 ≥ 0.98, 3× to 4× faster than exact).
    """

    name: ClassVar[str] = "patchcore"
    unified: ClassVar[bool] = False

    def __init__(
        self,
        coreset_ratio: float = 0.1,
        k: int = 1,
        projection_dim: int = 128,
        nprobe: int = 16,
        seed: int = 0,
    ) -> None:
        if not 0.0 < coreset_ratio <= 1.0:
            raise ReconadError(f"coreset_ratio must be in (0, 1], got {coreset_ratio}")
        if k < 1 or nprobe < 0:
            raise ReconadError(f"need k >= 1 and nprobe >= 0, got k={k}, nprobe={nprobe}")
        self.coreset_ratio = coreset_ratio
        self.k = k
        self.projection_dim = projection_dim
        self.nprobe = nprobe
        self.seed = seed

    def fit(self, features: Tensor, categories: list[str] | None = None) -> PatchCore:
        patches = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1]).float()
        n_keep = max(1, round(self.coreset_ratio * len(patches)))
        keep = (
            greedy_coreset(patches, n_keep, self.projection_dim, self.seed) if n_keep < len(patches) else None
        )
        self.bank_ = (patches if keep is None else patches[keep]).contiguous()
        self.centroids_ = ivf_centroids(self.bank_, self.nprobe, self.seed)
        self._build()
        return self

    def _build(self) -> None:
        self._index = NearestNeighbors(self.bank_, self.centroids_, self.nprobe)

    def predict(self, features: Tensor, categories: list[str] | None = None) -> Tensor:
        n, c, h, w = features.shape
        dist, _ = self._index.search(features.permute(0, 2, 3, 1).reshape(-1, c), self.k)
        return dist.clamp_(min=0).sqrt_().mean(dim=1).reshape(n, h, w)

    def state_dict(self) -> dict[str, Tensor]:
        return {"bank": self.bank_, "centroids": self.centroids_}

    def get_config(self) -> dict[str, Any]:
        return init_config(self)

    @classmethod
    def from_state(cls, config: dict[str, Any], state: dict[str, Tensor]) -> PatchCore:
        model = cls(**config)
        model.bank_ = state["bank"].float().contiguous()
        model.centroids_ = state.get("centroids", torch.empty(0, model.bank_.shape[1])).float().contiguous()
        model._build()
        return model
