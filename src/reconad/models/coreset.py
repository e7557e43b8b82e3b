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


def _blocks(x: Tensor, points_per_block: int, seed: int) -> Tensor:
    """The k-means block (about ``points_per_block`` points each) of every point."""
    n, d = x.shape
    k = max(1, n // points_per_block)
    if k == 1:
        return torch.zeros(n, dtype=torch.long)
    data = np.ascontiguousarray(x.numpy(), dtype=np.float32)
    kmeans = faiss.Kmeans(d, k, niter=4, seed=seed, max_points_per_centroid=32, verbose=False)
    kmeans.train(data)
    _, assign = kmeans.index.search(data, 1)
    return torch.from_numpy(assign[:, 0].astype(np.int64))


def greedy_coreset(
    features: Tensor,
    n_select: int,
    projection_dim: int | None = 128,
    seed: int = 0,
    points_per_block: int = 256,
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
    block = _blocks(x, points_per_block, seed)
    order = torch.argsort(block, stable=True)  # points of one block are contiguous
    xs = np.ascontiguousarray(x[order].numpy(), dtype=np.float32)
    _, block = np.unique(block[order].numpy(), return_inverse=True)  # ids 0..B-1, no empty block
    n_blocks = int(block.max()) + 1
    counts = np.bincount(block, minlength=n_blocks)
    ends = np.cumsum(counts)
    starts = ends - counts
    centroids = np.zeros((n_blocks, xs.shape[1]), np.float32)
    np.add.at(centroids, block, xs)
    centroids /= np.maximum(counts, 1)[:, None]
    radius = np.zeros(n_blocks, np.float32)
    np.maximum.at(radius, block, np.linalg.norm(xs - centroids[block], axis=1))
    sq_norm = np.einsum("ij,ij->i", xs, xs)
    min_dist = np.full(n, np.inf, np.float32)  # squared distance of each point to the coreset
    block_max = np.full(n_blocks, np.inf, np.float32)  # max of min_dist within each block
    chosen = np.empty(n_select, dtype=np.int64)
    current = int(torch.randint(n, (1,), generator=gen))
    for step in range(n_select):
        chosen[step] = current
        centre = xs[current]
        min_dist[current] = -np.inf  # never picked again (its float distance to itself may not be 0)
        gap = np.linalg.norm(centroids - centre, axis=1) - radius  # lower bound on distances to the centre
        for b in np.flatnonzero((gap <= 0) | (gap * gap < block_max)):
            lo, hi = starts[b], ends[b]
            dist = sq_norm[lo:hi] - 2 * (xs[lo:hi] @ centre) + sq_norm[current]
            seg = np.minimum(min_dist[lo:hi], dist, out=min_dist[lo:hi])
            block_max[b] = seg.max()
        best = int(block_max.argmax())
        current = int(starts[best] + min_dist[starts[best] : ends[best]].argmax())
    return order[torch.from_numpy(chosen)]
