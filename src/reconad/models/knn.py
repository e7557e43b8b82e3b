"""Nearest-neighbour search over a memory bank (FAISS), shared by the memory-bank models."""

from __future__ import annotations

import faiss
import numpy as np
import torch
from torch import Tensor


class NearestNeighbors:
    """Exact L2 search (FAISS flat index, BLAS-backed) over the rows of ``bank [M, D]``."""

    def __init__(self, bank: Tensor) -> None:
        self.bank = np.ascontiguousarray(bank.detach().float().cpu().numpy())
        self.index = faiss.IndexFlatL2(self.bank.shape[1])
        self.index.add(self.bank)

    def search(self, queries: Tensor, k: int = 1) -> tuple[Tensor, Tensor]:
        """(squared distances, indices), each ``[Q, k]``, nearest first."""
        q = np.ascontiguousarray(queries.detach().float().cpu().numpy())
        dist, idx = self.index.search(q, k)
        return torch.from_numpy(dist), torch.from_numpy(idx)
