"""Local-window masks and windowed attention on a 2-D token grid, shared by RLR, RLR-selfref and UniAD.

Tokens are a row-major ``h×w`` grid flattened to ``N = h·w``. The *window* of a query position is the
``k×k`` square of grid positions centred on it (``k`` odd), cut at the grid border.

* :func:`local_attention` attends only inside the window: queries in small tiles, each tile against the
  keys of its halo (``O(N·(b + k − 1)²)``), or, on grids too small for tiling to pay, PyTorch's fused
  attention kernel with a cached boolean ``[N, N]`` window mask (docs/rlr.md has the timings).
* :func:`masked_attention` attends to every key *except* the window (RLR's Masked Learnable Key Attention and
  UniAD's neighbour mask): a full ``N×N`` attention with a boolean mask.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor


def _check_window(window: int) -> None:
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be a positive odd number, got {window}")


@lru_cache(maxsize=32)
def window_mask(h: int, w: int, window: int) -> Tensor:
    """Bool ``[N, N]``: ``True`` where key ``j`` is in the ``window×window`` square centred on query ``i``."""
    _check_window(window)
    r = window // 2
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)
    return ((ys[:, None] - ys[None, :]).abs() <= r) & ((xs[:, None] - xs[None, :]).abs() <= r)


@lru_cache(maxsize=32)
def window_blocks(h: int, w: int, window: int, block: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The grid cut into ``block×block`` query tiles, each with the keys of its halo (the tile grown by the
    window radius on every side, ``(block + window − 1)²`` keys).

    Returns ``queries`` ``[T, block²]`` (flat positions of each tile's queries; tiles past the grid border
    are padded with position 0), ``keys`` ``[T, halo²]`` (flat positions of each halo; 0 past the border),
    ``allowed`` ``[T, block², halo²]`` (bool: key in the query's window and on the grid; a padded query may
    see every key of its halo, so no row is empty) and ``slot`` ``[N]`` (where each grid position sits in
    the flattened ``[T·block²]`` tiles).
    """
    _check_window(window)
    if block < 1:
        raise ValueError(f"block must be positive, got {block}")
    r = window // 2
    ty, tx = torch.meshgrid(
        torch.arange(0, h, block), torch.arange(0, w, block), indexing="ij"
    )  # tile corners [Ty, Tx]
    ty, tx = ty.reshape(-1, 1), tx.reshape(-1, 1)
    qy, qx = (c.reshape(-1) for c in torch.meshgrid(torch.arange(block), torch.arange(block), indexing="ij"))
    ky, kx = (c.reshape(-1) for c in torch.meshgrid(*[torch.arange(-r, block + r)] * 2, indexing="ij"))
    qy, qx, ky, kx = ty + qy, tx + qx, ty + ky, tx + kx  # [T, block²] and [T, halo²] grid coordinates
    q_on = (qy < h) & (qx < w)
    k_on = (ky >= 0) & (ky < h) & (kx >= 0) & (kx < w)
    near = ((qy[:, :, None] - ky[:, None, :]).abs() <= r) & ((qx[:, :, None] - kx[:, None, :]).abs() <= r)
    allowed = k_on[:, None, :] & (near | ~q_on[:, :, None])
    queries = torch.where(q_on, qy * w + qx, torch.zeros_like(qy))
    keys = torch.where(k_on, ky * w + kx, torch.zeros_like(ky))
    flat = torch.where(q_on, queries, -1).reshape(-1)
    slot = torch.empty(h * w, dtype=torch.long)
    slot[flat[flat >= 0]] = torch.nonzero(flat >= 0).reshape(-1)
    return queries, keys, allowed, slot


def blocked_pays(hw: tuple[int, int], window: int, block: int = 4) -> bool:
    """Whether tiling beats the dense kernel: the halo holds under half the grid's tokens (measured on CPU:
    4.5× faster on 32×32 with a 7×7 window, 2.3× on 16×16 with 5×5; docs/rlr.md)."""
    return 2 * (block + window - 1) ** 2 < hw[0] * hw[1]


def local_attention(
    q: Tensor, k: Tensor, v: Tensor, hw: tuple[int, int], window: int, method: str = "auto", block: int = 4
) -> Tensor:
    """Softmax attention of each query over the keys inside its window only.

    ``q``: ``[B, H, N, d]``; ``k``, ``v``: ``[B, H, N, d]`` or ``[H, N, d]`` (batch-independent, e.g. a
    learned reference). Returns ``[B, H, N, d]``. ``method``: ``"dense"`` — the fused scaled-dot-product
    kernel with the cached ``[N, N]`` window mask, ``O(N²)``; ``"blocked"`` — queries in ``block×block``
    tiles, each attending to its halo only (``O(N·(block + window − 1)²)``; ``block=1`` gathers exactly
    each query's window); ``"auto"`` — blocked where :func:`blocked_pays`, else dense.
    """
    if method == "auto":
        method = "blocked" if blocked_pays(hw, window, block) else "dense"
    if method == "dense":
        allowed = window_mask(hw[0], hw[1], window).to(q.device)
        k, v = (t.unsqueeze(0).expand(q.shape[0], -1, -1, -1) if t.dim() == 3 else t for t in (k, v))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    if method != "blocked":
        raise ValueError(f"unknown local attention method {method!r}: use 'auto', 'dense' or 'blocked'")
    queries, keys, allowed, slot = (t.to(q.device) for t in window_blocks(hw[0], hw[1], window, block))
    qt = q.index_select(-2, queries.reshape(-1)).unflatten(-2, queries.shape)  # [B, H, T, block², d]
    kt = k.index_select(-2, keys.reshape(-1)).unflatten(-2, keys.shape)  # [(B,) H, T, halo², d]
    vt = v.index_select(-2, keys.reshape(-1)).unflatten(-2, keys.shape)
    kb, vb = ("" if t.dim() == 3 else "b" for t in (k, v))  # a shared reference has no batch axis
    scores = torch.einsum(f"bhtqd,{kb}htkd->bhtqk", qt, kt) / math.sqrt(q.shape[-1])
    attn = scores.masked_fill(~allowed, float("-inf")).softmax(dim=-1)
    out = torch.einsum(f"bhtqk,{vb}htkd->bhtqd", attn, vt)
    return out.flatten(-3, -2).index_select(-2, slot)


@lru_cache(maxsize=32)
def outside_window_mask(h: int, w: int, window: int) -> Tensor:
    """Bool ``[N, N]``: ``True`` where key ``j`` lies *outside* query ``i``'s window; refused when some query
    would have no key left."""
    allowed = ~window_mask(h, w, window)
    if not bool(allowed.any(dim=1).all()):
        raise ValueError(f"a {window}×{window} masked window leaves some query of the {h}×{w} grid no key")
    return allowed


def masked_attention(q: Tensor, k: Tensor, v: Tensor, hw: tuple[int, int], window: int) -> Tensor:
    """Softmax attention of each query over every key *outside* its window (the window is masked out).

    ``q``, ``v``: ``[B, H, N, d]``; ``k``: ``[B, H, N, d]`` or ``[H, N, d]``. The window must leave at least
    one key outside it for every query (``window`` well below the grid size), or a query would have nothing to
    attend to.
    Returns ``[B, H, N, d]``.
    """
    allowed = outside_window_mask(hw[0], hw[1], window).to(q.device)
    if k.dim() == 3:
        k = k.unsqueeze(0).expand(q.shape[0], -1, -1, -1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)


def split_heads(x: Tensor, heads: int) -> Tensor:
    """``[..., N, H·d]`` → ``[..., H, N, d]``."""
    *lead, n, width = x.shape
    return x.view(*lead, n, heads, width // heads).transpose(-3, -2)


def merge_heads(x: Tensor) -> Tensor:
    """``[..., H, N, d]`` → ``[..., N, H·d]``."""
    *lead, h, n, d = x.shape
    return x.transpose(-3, -2).reshape(*lead, n, h * d)
