"""Greedy coreset selection (farthest-point sampling), as in PatchCore, made fast by pruning.

Each step adds the point farthest from the coreset so far. Plain greedy costs a full pass over all N points
per step. Here the points are grouped into k-means blocks with a centroid and a radius; a block whose every
point is provably closer to the coreset than to the new centre (triangle inequality) is skipped, so later
steps touch only a small fraction of the points. The result is the exact greedy sequence on the (randomly
projected) features.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import faiss
import numpy as np
import torch
from torch import Tensor

from reconad.features.store import Features, as_patches, image_chunks
from reconad.models.bank.knn import NearestNeighbors


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


def _gathered(x: Tensor, index: np.ndarray) -> np.ndarray:
    """The points ``x [N, d]`` laid out as the chunks of ``index`` (:func:`_padded_chunks`): ``[B, S, d]``,
    zeros at the pads."""
    valid = index >= 0
    points = np.ascontiguousarray(x.numpy(), dtype=np.float32)
    xs = points[np.where(valid, index, 0)]  # [B, S, d]
    xs[~valid] = 0
    return xs


class _Distances:
    """The squared distance of every point to the coreset so far, kept chunk by chunk (``xs [B, S, d]``, the
    points' flat positions ``index [B, S]``, -1 = padding), with each chunk's centroid and radius so that an
    update skips the chunks the triangle inequality rules out."""

    def __init__(self, xs: np.ndarray, index: np.ndarray, n: int) -> None:
        valid = index >= 0
        self.xs = xs
        sq_norm = np.einsum("bsd,bsd->bs", xs, xs)
        counts = valid.sum(1)
        self.centroids = xs.sum(1) / counts[:, None]
        self.radius = np.empty(len(xs), np.float32)
        step = max(1, 2**22 // (xs.shape[1] * xs.shape[2]))  # slices of ≤ 16 MiB: not a second copy of xs
        for s in range(0, len(xs), step):
            diff = np.linalg.norm(xs[s : s + step] - self.centroids[s : s + step, None], axis=2)
            self.radius[s : s + step] = np.where(valid[s : s + step], diff, 0).max(1)
        self.min_dist = np.where(valid, np.inf, -np.inf).astype(np.float32)  # squared distance to the coreset
        self.flat_dist = self.min_dist.reshape(-1)  # a view: flat position = block * chunk + slot
        self.block_max = np.full(len(index), np.inf, np.float32)
        self.flat_index = index.reshape(-1)
        self.xs_t, self.sq_t = torch.from_numpy(xs), torch.from_numpy(sq_norm)
        self.dist_t = torch.from_numpy(self.min_dist)
        self.position = np.empty(n, dtype=np.int64)  # each point's flat position
        self.position[self.flat_index[self.flat_index >= 0]] = np.flatnonzero(self.flat_index >= 0)

    def add(self, new: np.ndarray) -> None:
        """Update every distance to the coreset after adding the points at flat positions ``new``."""
        xs, centroids, radius, block_max = self.xs, self.centroids, self.radius, self.block_max
        xs_t, sq_t, dist_t = self.xs_t, self.sq_t, self.dist_t
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
        self.flat_dist[new] = -np.inf  # never picked again (its distance to itself may not be exactly 0)
        block_max[active.numpy()] = self.min_dist[active.numpy()].max(1)

    def next_steps(self, candidates: int, left: int, room: int) -> np.ndarray:
        """The flat positions of the next greedy steps, at most ``room``, made among the ``candidates`` points
        farthest from the coreset (``left``: the points not in it) for as long as the best candidate is still
        farther than every point outside the round."""
        flat_dist = self.flat_dist
        take = min(candidates, left)
        if take < left:
            part = np.argpartition(flat_dist, -(take + 1))[-(take + 1) :]
            part = part[np.argsort(flat_dist[part])[::-1]]
            cand, outside = part[:take], float(flat_dist[part[take]])
        else:
            cand = np.argsort(flat_dist)[::-1][:take]
            outside = -np.inf
        cx = self.xs.reshape(-1, self.xs.shape[2])[cand]
        cd = flat_dist[cand].copy()
        picked: list[int] = []
        while len(picked) < room:
            a = int(cd.argmax())
            if picked and not cd[a] > outside:
                break
            picked.append(a)
            cd[a] = -np.inf
            cd = np.minimum(cd, ((cx - cx[a]) ** 2).sum(1))
        return cand[picked]


def greedy_coreset(
    features: Tensor,
    n_select: int,
    projection_dim: int | None = 128,
    seed: int = 0,
    points_per_block: int = 256,
    chunk: int = 64,
    candidates: int = 1024,
) -> tuple[Tensor, float]:
    """Indices of ``n_select`` rows of ``features [N, D]`` chosen by greedy farthest-point sampling, and the
    covering radius they reach.

    ``projection_dim``: a seeded Gaussian random projection first (Johnson–Lindenstrauss), as PatchCore does;
    ``None`` keeps the full dimension. The first point is drawn at random with ``seed``. Points are grouped
    into k-means clusters of about ``points_per_block``, split into padded chunks of ``chunk`` points, so an
    update of the distances to the coreset touches only the chunks the triangle inequality cannot rule out.

    The greedy steps run in rounds: the ``candidates`` points farthest from the coreset are taken aside,
    and steps are made among them (their distances kept up to date with a small candidate × candidate
    computation) for as long as the best candidate is still farther than every point outside the round
    (whose distances can only have shrunk). Each step is then exactly the plain greedy step, and the full
    update of all N distances is paid once per round instead of once per step.

    Also returns the covering radius: the largest distance, in the (projected) space the greedy ran in, of
    a row to its nearest chosen row (within twice the best any ``n_select`` rows can do).
    """
    n = features.shape[0]
    n_select = max(1, min(int(n_select), n))
    gen = torch.Generator().manual_seed(seed)
    x = features.float()
    if projection_dim is not None and projection_dim < x.shape[1]:
        proj = torch.randn(x.shape[1], projection_dim, generator=gen) / math.sqrt(projection_dim)
        x = x @ proj
    index = _padded_chunks(_blocks(x, points_per_block, seed).numpy(), chunk)  # [B, S], -1 = padding
    xs = _gathered(x, index)
    del x  # the projected copy is no longer needed: xs holds every point
    coreset = _Distances(xs, index, n)
    chosen: list[int] = []
    new = np.array([coreset.position[int(torch.randint(n, (1,), generator=gen))]])
    while True:
        chosen.extend(coreset.flat_index[new].tolist())
        coreset.add(new)
        if len(chosen) >= n_select:
            break
        new = coreset.next_steps(candidates, n - len(chosen), n_select - len(chosen))
    radius = math.sqrt(max(0.0, float(coreset.min_dist.max())))
    return torch.from_numpy(np.asarray(chosen[:n_select], dtype=np.int64)), radius


@dataclass(frozen=True)
class ChunkedBank:
    """What :class:`ChunkedCoreset` returns: the ``bank`` ``[B, C]``, its certified covering ``radius`` (in
    the greedy's space), a seeded ``sample`` of the patches and a seeded sample of those ``left_out`` of the
    bank (about :data:`SAMPLE` each, drawn from each chunk in proportion), and the image of each atom
    (``origin`` ``[B]``)."""

    bank: Tensor
    radius: float
    sample: Tensor
    left_out: Tensor
    origin: Tensor


#: Patches drawn for the coverage radius and for PatchCore's nprobe calibration.
SAMPLE = 4096


@dataclass(frozen=True)
class ChunkedCoreset:
    """A greedy coreset of more patches than one greedy affords (its cost grows as N·n_select): the images
    are cut into chunks of at most ``images_per_chunk`` (read one at a time: the features may be on disk),
    each chunk keeps the greedy coreset of ``ratio`` of its patches (:func:`greedy_coreset`, seed
    ``seed + chunk``) and the bank is their union. The cost is linear in the patches: a chunk costs the same
    whatever the number of images.

    Coverage: every patch lies within its chunk's greedy radius of its chunk's atoms, so the whole bank
    covers every patch within ``radius`` = the largest chunk radius (each within twice the best radius its
    chunk's atom count allows); a single chunk is the exact greedy.
    """

    ratio: float
    images_per_chunk: int
    projection_dim: int | None = 128
    seed: int = 0

    def run(self, features: Features) -> ChunkedBank:
        n, _, h, w = features.shape
        gen = torch.Generator().manual_seed(self.seed)
        banks, samples, left_out, origins, radius = [], [], [], [], 0.0
        for i, (first, x) in enumerate(image_chunks(features, self.images_per_chunk)):
            patches = as_patches(x)
            del x
            n_keep = max(1, round(self.ratio * len(patches)))
            keep, r = greedy_coreset(patches, n_keep, self.projection_dim, self.seed + i)
            banks.append(patches[keep])
            origins.append(first + keep // (h * w))
            radius = max(radius, r)
            share = max(1, round(SAMPLE * len(patches) / (n * h * w)))
            samples.append(patches[torch.randperm(len(patches), generator=gen)[:share]])
            rest = torch.ones(len(patches), dtype=torch.bool)
            rest[keep] = False
            rest_idx = rest.nonzero()[:, 0]
            left_out.append(patches[rest_idx[torch.randperm(len(rest_idx), generator=gen)[:share]]])
        bank = torch.cat(banks).contiguous()
        return ChunkedBank(bank, radius, torch.cat(samples), torch.cat(left_out), torch.cat(origins))


def coverage_radius(bank: Tensor, patches: Tensor, seed: int, sample: int = 4096) -> float:
    """How closely ``bank`` covers the training ``patches``: the largest distance from one of ``sample``
    seeded patches to its nearest atom (exact search)."""
    pick = torch.randperm(len(patches), generator=torch.Generator().manual_seed(seed))[:sample]
    d = NearestNeighbors(bank, None, 0).search(patches[pick], 1)[0][:, 0]
    return float(d.clamp_min(0).max().sqrt())


def continue_coreset(bank: Tensor, new: Tensor, radius: float) -> Tensor:
    """Which of the ``new`` patches ``[M, C]`` join ``bank`` ``[B, C]``: greedy farthest-point selection
    continued from the bank (as the coreset would go on) while the farthest new patch lies further than
    ``radius`` (the bank's :func:`coverage_radius` of its training patches) from the bank and the atoms
    chosen so far. New patches the bank covers as closely as it covered its training patches join nothing.
    The indices of those that join, in the order chosen."""
    gap = NearestNeighbors(bank, None, 0).search(new, 1)[0][:, 0].clamp_min(0).sqrt()
    chosen: list[int] = []
    while len(chosen) < len(new):
        far = int(gap.argmax())
        if gap[far] <= radius:
            break
        chosen.append(far)
        gap = torch.minimum(gap, (new - new[far]).norm(dim=1))
    return torch.tensor(chosen, dtype=torch.long)
