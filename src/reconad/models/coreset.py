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


def _padded_chunks(block: np.ndarray, chunk: int) -> np.ndarray:
    """Each block cut into chunks of at most ``chunk`` points: ``[n_chunks, chunk]`` indices, -1 pads."""
    order = np.argsort(block, kind="stable")
    bounds = np.flatnonzero(np.diff(block[order])) + 1
    rows = []
    for members in np.split(order, bounds):
        for start in range(0, len(members), chunk):
            part = members[start : start + chunk]
            rows.append(np.pad(part, (0, chunk - len(part)), constant_values=-1))
    return np.stack(rows)


def greedy_coreset(
    features: Tensor,
    n_select: int,
    projection_dim: int | None = 128,
    seed: int = 0,
    points_per_block: int = 256,
    chunk: int = 64,
) -> Tensor:
    """Indices of ``n_select`` rows of ``features [N, D]`` chosen by greedy farthest-point sampling.

    ``projection_dim``: a seeded Gaussian random projection first (Johnson–Lindenstrauss), as PatchCore does;
    ``None`` keeps the full dimension. The first point is drawn at random with ``seed``. Points are grouped
    into k-means clusters of about ``points_per_block``, split into padded chunks of ``chunk`` points, so
    each step is a few array operations over the chunks that the triangle inequality cannot rule out.
    """
    n = features.shape[0]
    n_select = max(1, min(int(n_select), n))
    gen = torch.Generator().manual_seed(seed)
    x = features.float()
    if projection_dim is not None and projection_dim < x.shape[1]:
        proj = torch.randn(x.shape[1], projection_dim, generator=gen) / math.sqrt(projection_dim)
        x = x @ proj
    index = _padded_chunks(_blocks(x, points_per_block, seed).numpy(), chunk)  # [B, S], -1 = padding
    valid = index >= 0
    xs = np.ascontiguousarray(x.numpy(), dtype=np.float32)[np.where(valid, index, 0)]  # [B, S, d]
    xs[~valid] = 0
    sq_norm = np.einsum("bsd,bsd->bs", xs, xs)
    counts = valid.sum(1)
    centroids = xs.sum(1) / counts[:, None]
    radius = np.where(valid, np.linalg.norm(xs - centroids[:, None], axis=2), 0).max(1)
    centroid_sq = np.einsum("bd,bd->b", centroids, centroids)
    min_dist = np.where(valid, np.inf, -np.inf).astype(np.float32)  # squared distance to the coreset
    block_max = np.full(len(index), np.inf, np.float32)
    position = {int(v): (b, s) for (b, s), v in np.ndenumerate(index) if v >= 0}
    chosen = np.empty(n_select, dtype=np.int64)
    b, s = position[int(torch.randint(n, (1,), generator=gen))]
    for step in range(n_select):
        chosen[step] = index[b, s]
        centre = xs[b, s].copy()
        centre_sq = float(sq_norm[b, s])
        min_dist[b, s] = -np.inf  # never picked again (its float distance to itself may not be exactly 0)
        gap = np.sqrt(np.maximum(centroid_sq - 2 * (centroids @ centre) + centre_sq, 0)) - radius
        active = np.flatnonzero((gap <= 0) | (gap * gap < block_max))
        dist = sq_norm[active] - 2 * (xs[active] @ centre) + centre_sq
        seg = np.minimum(min_dist[active], dist)
        min_dist[active] = seg
        block_max[active] = seg.max(1)
        b = int(block_max.argmax())
        s = int(min_dist[b].argmax())
    return torch.from_numpy(chosen)
