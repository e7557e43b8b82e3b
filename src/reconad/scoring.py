"""From patch scores to anomaly maps, image scores and a decision threshold (the predict hot path).

Everything works on batched CPU (or GPU) tensors; no per-image Python work and no scipy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

from reconad.errors import ReconadError
from reconad.features.extractor import bilinear_matrix
from reconad.features.tiles import TileGrid

REDUCTIONS = ("max", "mean", "topk_mean")
TOPK_FRACTION = 0.01  # "topk_mean": the mean of the top 1 % pixels of each map


def gaussian_kernel1d(sigma: float, radius: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """A normalised 1-D Gaussian of standard deviation ``sigma`` on ``[-radius, radius]``."""
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).to(dtype)


def blur_matrix(n: int, sigma: float, dtype: torch.dtype = torch.float32) -> Tensor:
    """The ``[n, n]`` matrix ``B`` with ``B @ v`` = ``v`` convolved with the Gaussian (radius ``round(4σ)``)
    under reflect padding (``d c b | a b c d | c b a``, edge not repeated), as one 1-D pass of the blur.

    Taps that fall outside are folded back by reflection (repeatedly, if the radius exceeds the side), so
    every row sums to one and constant signals stay constant.
    """
    radius = int(4.0 * sigma + 0.5)
    k = gaussian_kernel1d(sigma, radius, torch.float64)
    idx = torch.arange(n).view(-1, 1) + torch.arange(-radius, radius + 1).view(1, -1)
    if n == 1:
        idx = torch.zeros_like(idx)
    else:
        period = 2 * (n - 1)
        idx = idx.remainder(period)
        idx = torch.where(idx > n - 1, period - idx, idx)
    b = torch.zeros(n, n, dtype=torch.float64)
    b.scatter_add_(1, idx, k.expand(n, -1).contiguous())
    return b.to(dtype)


def gaussian_blur(maps: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of ``[N, H, W]`` maps (radius 4σ, reflect padding); ``sigma <= 0``: unchanged.

    Each 1-D pass is applied as a product with a banded matrix (:func:`blur_matrix`), ``B_H @ X @ B_W^T``:
    the same result as two padded 1-D convolutions, but BLAS makes it ~7x faster than ``conv1d`` on CPU
    at 256 px (and still ~2x at 1024 px).
    """
    if sigma <= 0:
        return maps
    _, h, w = maps.shape
    bh = blur_matrix(h, sigma, maps.dtype).to(maps.device)
    bw = blur_matrix(w, sigma, maps.dtype).to(maps.device)
    return torch.matmul(torch.matmul(bh, maps), bw.T)


@lru_cache(maxsize=32)
def map_operator(n_out: int, n_in: int, sigma: float, align_corners: bool = False) -> Tensor:
    """``[n_out, n_in]``: one axis of "bilinear resize to ``n_out`` (``align_corners`` as ``F.interpolate``),
    then the Gaussian blur" (``sigma > 0``; ``0``: the resize alone) as one matrix (:func:`blur_matrix` times
    :func:`bilinear_matrix`, formed in float64)."""
    resize = bilinear_matrix(n_out, n_in, align_corners=align_corners)
    return (resize if sigma <= 0 else blur_matrix(n_out, sigma, torch.float64) @ resize).float()


def anomaly_maps(
    scores: Tensor | Sequence[Tensor],
    size: int | tuple[int, int],
    sigma: float = 4.0,
    align_corners: bool = False,
) -> Tensor:
    """Per-pixel anomaly maps ``[N, H, W]`` from a model's ``predict``: patch scores ``[N, h, w]``, or a list
    of per-level maps ``[N, h_l, w_l]`` (the unified models), each resized once to ``size`` and averaged.

    Each map is resized bilinearly to ``size`` (an int means a square; ``align_corners`` as
    ``F.interpolate``), the maps are averaged, then blurred by a Gaussian of standard deviation ``sigma``
    pixels (radius 4σ, reflect padding; ``sigma=0`` skips it). Every step is linear and separable, so each
    map goes through ``M_H @ x @ M_Wᵀ`` with one ``[H, h]`` and one ``[W, w]`` matrix (:func:`map_operator`)
    and the results are averaged: for 32×32 patch scores and 256 px maps that is 14× fewer multiply-adds than
    blurring the upsampled map, and equal to it up to float32 rounding.
    """
    levels = [scores] if isinstance(scores, Tensor) else list(scores)
    if not levels or any(x.ndim != 3 for x in levels):
        shapes = [tuple(x.shape) for x in levels]
        raise ReconadError(f"patch scores must be [N, h, w] (or a list of them), got shapes {shapes}")
    if sigma < 0 or not math.isfinite(sigma):
        raise ReconadError(f"sigma must be a finite number >= 0, got {sigma}")
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if len(hw) != 2 or min(hw) < 1:
        raise ReconadError(f"map size must be a positive int or (H, W), got {size!r}")
    with torch.no_grad():
        maps = [_resized(x if x.is_floating_point() else x.float(), hw, sigma, align_corners) for x in levels]
    return maps[0] if len(maps) == 1 else torch.stack(maps).mean(dim=0)


def _resized(x: Tensor, hw: tuple[int, int], sigma: float, align_corners: bool) -> Tensor:
    """One ``[N, h, w]`` map resized to ``hw`` and blurred (:func:`map_operator` per axis)."""
    if sigma == 0:
        if tuple(x.shape[1:]) == hw:
            return x
        return F.interpolate(x[:, None], size=hw, mode="bilinear", align_corners=align_corners)[:, 0]
    mh = map_operator(hw[0], x.shape[1], float(sigma), align_corners).to(x.device, x.dtype)
    mw = map_operator(hw[1], x.shape[2], float(sigma), align_corners).to(x.device, x.dtype)
    return torch.matmul(torch.matmul(mh, x), mw.T)


def conv_blur(maps: Tensor, sigma: float) -> Tensor:
    """:func:`gaussian_blur` as two 1-D convolutions (the same reflect padding and taps): linear in the side,
    where the banded matrices grow with its square (a tiled canvas of thousands of pixels)."""
    radius = int(4.0 * sigma + 0.5)
    if sigma <= 0 or radius >= min(maps.shape[1:]):  # no blur, or taps folded back more than once
        return gaussian_blur(maps, sigma)
    k = gaussian_kernel1d(sigma, radius, maps.dtype).to(maps.device)
    x = F.conv2d(F.pad(maps[:, None], (radius, radius, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), k.view(1, 1, -1, 1))[:, 0]


def tiled_maps(scores: Tensor, grid: TileGrid, sigma: float = 4.0, align_corners: bool = False) -> Tensor:
    """Anomaly maps ``[N, H, W]`` of a tiled canvas from patch scores ``[N, T·h, w]`` (the tiles' grids one
    below the other, :class:`~reconad.features.extractor.TiledFeatures`): each tile's scores resized to the
    tile, the tiles stitched (overlaps averaged, :meth:`TileGrid.stitch`), then blurred on the whole canvas
    (:func:`conv_blur`), so that a tile's border leaves no seam."""
    if not isinstance(scores, Tensor) or scores.ndim != 3 or scores.shape[1] % len(grid):
        raise ReconadError(f"tiled patch scores must be [N, T·h, w] with T = {len(grid)} tiles")
    n, th, w = scores.shape
    per_tile = scores.reshape(n * len(grid), th // len(grid), w)
    with torch.no_grad():
        tile_maps = anomaly_maps(per_tile, grid.size, 0, align_corners)
        return conv_blur(grid.stitch(tile_maps), sigma)


def image_scores(maps: Tensor, reduce: str = "max") -> Tensor:
    """One anomaly score per map ``[N, H, W] -> [N]``.

    ``reduce``: ``"max"`` (default), ``"mean"``, or ``"topk_mean"`` (mean of the top 1 % pixels, at
    least one pixel).
    """
    if maps.ndim != 3:
        raise ReconadError(f"maps must be [N, H, W], got shape {tuple(maps.shape)}")
    flat = maps.reshape(maps.shape[0], -1)
    if flat.shape[1] == 0:
        raise ReconadError("maps are empty (zero pixels)")
    if reduce == "max":
        return flat.amax(dim=1)
    if reduce == "mean":
        return flat.mean(dim=1)
    if reduce == "topk_mean":
        k = max(1, math.ceil(TOPK_FRACTION * flat.shape[1]))
        return flat.topk(k, dim=1).values.mean(dim=1)
    raise ReconadError(f"unknown image score reduction {reduce!r}; choose one of: {', '.join(REDUCTIONS)}")
