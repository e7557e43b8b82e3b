"""Greedy coreset selection (farthest-point sampling), as in PatchCore, made fast by pruning.

Each step adds the point farthest from the coreset so far. Plain greedy costs a full pass over all N points
per step. Here the points are grouped into k-means blocks with a centroid and a radius; a block whose every
point is provably closer to the coreset than to the new centre (triangle inequality) is skipped, so later
steps touch only a small fraction of the points. The result is the exact greedy sequence on the (randomly
projected) features.
"""

from __future__ import annotations

import math

import faiss
import numpy as np
import torch
from torch import Tensor


def _blocks(x: Tensor, points_per_block: int, seed: int) -> tuple[Tensor, Tensor]:
    """Assign points to k-means blocks; returns (block id per point, number of blocks as a tensor)."""
    n, d = x.shape
    k = max(1, n // points_per_block)
    if k == 1:
        return torch.zeros(n, dtype=torch.long), torch.tensor(1)
    data = np.ascontiguousarray(x.numpy(), dtype=np.float32)
    kmeans = faiss.Kmeans(d, k, niter=4, seed=seed, max_points_per_centroid=32, verbose=False)
    kmeans.train(data)
    _, assign = kmeans.index.search(data, 1)
    return torch.from_numpy(assign[:, 0].astype(np.int64)), torch.tensor(k)


def greedy_coreset(
    features: Tensor, n_select: int, projection_dim: int | None = 128, seed: int = 0, points_per_block: int = 256
) -> Tensor:
    """Indices of ``n_select`` rows of ``features [N, D]`` chosen by greedy farthest-point sampling.

    ``projection_dim``: a seeded Gaussian random projection first (Johnson–Lindenstrauss), as PatchCore does;
    ``None`` keeps the full dimension. The first point is drawn at random with ``seed``.
    """
    n = features.shape[0]
    n_select = max(1, min(int(n_select), n))
    gen = torch.Generator().manual_seed(seed)
    x = features.float()
    if projection_dim is not None and projection_dim < x.shape[1]:
        proj = torch.randn(x.shape[1], projection_dim, generator=gen) / math.sqrt(projection_dim)
        x = x @ proj
    block, _ = _blocks(x, points_per_block, seed)
    order = torch.argsort(block, stable=True)  # points of one block are contiguous
    x, block = x[order].contiguous(), block[order]
    n_blocks = int(block.max()) + 1
    counts = torch.bincount(block, minlength=n_blocks)
    starts = torch.cumsum(counts, 0) - counts
    centroids = torch.zeros(n_blocks, x.shape[1]).index_add_(0, block, x) / counts.clamp(min=1)[:, None]
    radius = torch.zeros(n_blocks).scatter_reduce_(
        0, block, (x - centroids[block]).norm(dim=1), reduce="amax", include_self=True
    )
    sq_norm = (x * x).sum(1)
    min_dist = torch.full((n,), float("inf"))  # squared distance of each point to the coreset
    block_max = torch.full((n_blocks,), float("inf"))  # max of min_dist in each block
    chosen = torch.empty(n_select, dtype=torch.long)
    current = int(torch.randint(n, (1,), generator=gen))
    for step in range(n_select):
        chosen[step] = current
        centre = x[current]
        gap = (centroids - centre).norm(dim=1) - radius  # lower bound on any block point's distance to centre
        active = (gap <= 0) | (gap * gap < block_max)
        rows = active[block].nonzero().squeeze(1)
        dist = (sq_norm[rows] - 2 * (x[rows] @ centre) + centre.dot(centre)).clamp_(min=0)
        min_dist[rows] = torch.minimum(min_dist[rows], dist)
        block_max[active] = 0
        block_max.scatter_reduce_(0, block[rows], min_dist[rows], reduce="amax", include_self=True)
        best_block = int(block_max.argmax())
        start = int(starts[best_block])
        current = start + int(min_dist[start : start + int(counts[best_block])].argmax())
    return order[chosen]
