"""PatchCore (Roth et al., CVPR 2022): kNN distance to a greedy-coreset memory bank of nominal patches."""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor

from reconad.models.base import init_config, register
from reconad.models.coreset import greedy_coreset
from reconad.models.knn import NearestNeighbors


@register
class PatchCore:
    """Memory bank = greedy coreset of the good images' patch features; score = distance to the nearest atom.

    ``coreset_ratio``: fraction of all training patches kept (default 10 %, PatchCore's default).
    ``k``: neighbours averaged for the score (1 = PatchCore). ``projection_dim``: random projection used only
    to choose the coreset.
    """

    name: ClassVar[str] = "patchcore"
    unified: ClassVar[bool] = False

    def __init__(
        self, coreset_ratio: float = 0.1, k: int = 1, projection_dim: int = 128, seed: int = 0
    ) -> None:
        self.coreset_ratio = coreset_ratio
        self.k = k
        self.projection_dim = projection_dim
        self.seed = seed

    def fit(self, features: Tensor, categories: list[str] | None = None) -> PatchCore:
        patches = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])
        n_keep = max(1, round(self.coreset_ratio * len(patches)))
        keep = (
            greedy_coreset(patches, n_keep, self.projection_dim, self.seed) if n_keep < len(patches) else None
        )
        self.bank_ = (patches if keep is None else patches[keep]).contiguous()
        self._index = NearestNeighbors(self.bank_)
        return self

    def predict(self, features: Tensor, categories: list[str] | None = None) -> Tensor:
        n, c, h, w = features.shape
        dist, _ = self._index.search(features.permute(0, 2, 3, 1).reshape(-1, c), self.k)
        return dist.clamp_(min=0).sqrt_().mean(dim=1).reshape(n, h, w)

    def state_dict(self) -> dict[str, Tensor]:
        return {"bank": self.bank_}

    def get_config(self) -> dict[str, Any]:
        return init_config(self)

    @classmethod
    def from_state(cls, config: dict[str, Any], state: dict[str, Tensor]) -> PatchCore:
        model = cls(**config)
        model.bank_ = state["bank"].float().contiguous()
        model._index = NearestNeighbors(model.bank_)
        return model
