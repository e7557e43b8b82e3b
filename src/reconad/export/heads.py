"""Torch modules that mirror each model's ``predict`` with operations ONNX has, for tracing into a graph.

A *head* maps patch features ``[N, C, h, w]`` to patch scores ``[N, h, w]`` as the fitted model does;
:class:`MapsAndScores` adds the library's scoring (upsampling, Gaussian blur, image score). Where a model
searches its bank approximately (an IVF index), the head searches it exactly: brute-force distances by
matrix products.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from reconad.errors import ReconadError
from reconad.scoring import bilinear_matrix, image_scores, map_operator

#: Atoms per block of a bank search: the ``[N·h·w, block]`` distance matrix is the largest tensor a search
#: holds, so memory stays bounded however large the bank is.
SEARCH_BLOCK = 8192


class BankSearch(nn.Module):
    """Exact nearest-atom search over a fixed bank, block by block: ``(squared L2 distances [P, k], indices
    [P, k])`` of the ``k`` nearest atoms, nearest first (``‖q‖² + ‖a‖² − 2⟨q, a⟩``, as FAISS computes it)."""

    def __init__(self, bank: Tensor, k: int) -> None:
        super().__init__()
        bank = bank.detach().float()
        self.k = min(k, len(bank))
        self.blocks = (len(bank) + SEARCH_BLOCK - 1) // SEARCH_BLOCK
        for i, block in enumerate(bank.split(SEARCH_BLOCK)):
            self.register_buffer(f"atoms_t{i}", block.T.contiguous())  # [C, m]: no transpose at run time
            self.register_buffer(f"sq{i}", block.pow(2).sum(1))

    def forward(self, q: Tensor) -> tuple[Tensor, Tensor]:
        dists, found = [], []
        for i in range(self.blocks):
            d = getattr(self, f"sq{i}") - 2 * (q @ getattr(self, f"atoms_t{i}"))
            k = min(self.k, d.shape[1])
            best = d.topk(k, dim=1, largest=False) if k > 1 else d.min(dim=1, keepdim=True)
            dists.append(best[0])
            found.append(best[1] + i * SEARCH_BLOCK)
        d, idx = torch.cat(dists, dim=1), torch.cat(found, dim=1)
        if self.blocks > 1:
            d, pick = d.topk(self.k, dim=1, largest=False) if self.k > 1 else d.min(dim=1, keepdim=True)
            idx = idx.gather(1, pick)
        return d + q.pow(2).sum(1, keepdim=True), idx


class PatchCoreHead(nn.Module):
    """PatchCore's ``predict``: the mean distance to the ``k`` nearest bank atoms (exact search)."""

    def __init__(self, bank: Tensor, k: int) -> None:
        super().__init__()
        self.search = BankSearch(bank, k)

    def forward(self, features: Tensor) -> Tensor:
        n, c, h, w = features.shape
        d, _ = self.search(features.permute(0, 2, 3, 1).reshape(-1, c))
        return d.clamp(min=0).sqrt().mean(dim=1).reshape(n, h, w)


def patch_head(model: Any) -> nn.Module:
    """The head of a fitted model (one of the registered methods), in eval mode."""
    name = getattr(model, "name", type(model).__name__)
    if name == "patchcore":
        return PatchCoreHead(model.bank_, model.k).eval()
    raise ReconadError(f"model {name!r} cannot be exported yet")


class MapsAndScores(nn.Module):
    """Patch scores → anomaly maps ``[N, S, S]`` and image scores ``[N]``, as :mod:`reconad.scoring` computes
    them: bilinear upsampling and the Gaussian blur as one matrix per axis, then the image score."""

    def __init__(self, head: nn.Module, grid: tuple[int, int], image_size: int, scoring: dict[str, Any]):
        super().__init__()
        self.head = head
        self.reduce = scoring["reduce"]
        sigma = float(scoring["sigma"])
        h, w = grid

        def axis(n_in: int) -> Tensor:
            if sigma > 0:
                return map_operator(image_size, n_in, sigma)
            return bilinear_matrix(image_size, n_in).float()

        self.register_buffer("rows", axis(h))
        self.register_buffer("cols_t", axis(w).T.contiguous())

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        maps = self.rows @ self.head(features) @ self.cols_t
        return maps, image_scores(maps, self.reduce)
