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
    candidates: int = 1024,
) -> Tensor:
    """Indices of ``n_select`` rows of ``features [N, D]`` chosen by greedy farthest-point sampling.

    ``projection_dim``: a seeded Gaussian random projection first (Johnson–Lindenstrauss), as PatchCore does;
    ``None`` keeps the full dimension. The first point is drawn at random with ``seed``. Points are grouped
    into k-means clusters of about ``points_per_block``, split into padded chunks of ``chunk`` points, so an
    update of the distances to the coreset touches only the chunks the triangle inequality cannot rule out.

    The greedy steps run in rounds: the ``candidates`` points farthest from the coreset are taken aside,
    and steps are made among them (their distances kept up to date with a small candidate × candidate
    computation) for as long as the best candidate is still farther than every point outside the round
    (whose distances can only have shrunk). Each step is then exactly the plain greedy step, and the full
    update of all N distances is paid once per round instead of once per step.
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
    points = np.ascontiguousarray(x.numpy(), dtype=np.float32)
    xs = points[np.where(valid, index, 0)]  # [B, S, d]
    del x, points  # the projected copy is no longer needed: xs holds every point
    xs[~valid] = 0
    sq_norm = np.einsum("bsd,bsd->bs", xs, xs)
    counts = valid.sum(1)
    centroids = xs.sum(1) / counts[:, None]
    radius = np.empty(len(xs), np.float32)
    step = max(1, 2**22 // (xs.shape[1] * xs.shape[2]))  # slices of ≤ 16 MiB: not a second copy of xs
    for s in range(0, len(xs), step):
        diff = np.linalg.norm(xs[s : s + step] - centroids[s : s + step, None], axis=2)
        radius[s : s + step] = np.where(valid[s : s + step], diff, 0).max(1)
    min_dist = np.where(valid, np.inf, -np.inf).astype(np.float32)  # squared distance to the coreset
    flat_dist = min_dist.reshape(-1)  # a view: flat position = block * chunk + slot
    block_max = np.full(len(index), np.inf, np.float32)
    flat_index = index.reshape(-1)
    xs_t, sq_t, dist_t = torch.from_numpy(xs), torch.from_numpy(sq_norm), torch.from_numpy(min_dist)
    position = np.empty(n, dtype=np.int64)
    position[flat_index[flat_index >= 0]] = np.flatnonzero(flat_index >= 0)

    def add(new: np.ndarray) -> None:
        """Update every distance to the coreset after adding the points at flat positions ``new``."""
        centres = xs.reshape(-1, xs.shape[2])[new]  # [m, d]
        centre_sq = np.einsum("md,md->m", centres, centres)
        to_centroid = np.maximum(
            (centroids * centroids).sum(1)[:, None] - 2 * centroids @ centres.T + centre_sq, 0
        )
        gap = np.sqrt(to_centroid) - radius[:, None]  # [B, m]: a lower bound on point-to-centre distances
        active = torch.from_numpy(np.flatnonzero(((gap <= 0) | (gap * gap < block_max[:, None])).any(1)))
        c_t, c_sq = torch.from_numpy(centres), torch.from_numpy(centre_sq)
        per_block = xs.shape[1] * max(len(new), xs.shape[2])  # floats per block: distances or points
        for part in active.split(max(1, 2**22 // per_block)):  # ≤ 16 MiB of distances and of points
            pts = xs_t.index_select(0, part).reshape(-1, xs.shape[2])
            dist = torch.addmm(c_sq, pts, c_t.T, alpha=-2).add_(sq_t.index_select(0, part).reshape(-1, 1))
            seg = torch.minimum(dist_t.index_select(0, part), dist.amin(1).view(len(part), -1))
            dist_t[part] = seg
        flat_dist[new] = -np.inf  # never picked again (its float distance to itself may not be exactly 0)
        block_max[active.numpy()] = min_dist[active.numpy()].max(1)

    chosen: list[int] = []
    new = np.array([position[int(torch.randint(n, (1,), generator=gen))]])
    while True:
        chosen.extend(flat_index[new].tolist())
        add(new)
        if len(chosen) >= n_select:
            break
        left = n - len(chosen)
        take = min(candidates, left)
        if take < left:
            part = np.argpartition(flat_dist, -(take + 1))[-(take + 1) :]
            part = part[np.argsort(flat_dist[part])[::-1]]
            cand, outside = part[:take], float(flat_dist[part[take]])
        else:
            cand = np.argsort(flat_dist)[::-1][:take]
            outside = -np.inf
        cx = xs.reshape(-1, xs.shape[2])[cand]
        cd = flat_dist[cand].copy()
        picked = []
        while len(chosen) + len(picked) < n_select:
            a = int(cd.argmax())
            if picked and not cd[a] > outside:
                break
            picked.append(a)
            cd[a] = -np.inf
            cd = np.minimum(cd, ((cx - cx[a]) ** 2).sum(1))
        new = cand[picked]
    return torch.from_numpy(np.asarray(chosen[:n_select], dtype=np.int64))
