"""Local-window masks and windowed attention on a 2-D token grid, shared by RLR and the UniAD-style model.

Tokens are a row-major ``h×w`` grid flattened to ``N = h·w``. The *window* of a query position is the
``k×k`` square of grid positions centred on it (``k`` odd), cut at the grid border.

* :func:`local_attention` attends only inside the window: by default PyTorch's fused attention kernel with a
  cached boolean ``[N, N]`` window mask, or (``method="gather"``) by gathering the window's keys and values to
  ``[..., N, k², d]`` (``O(N·k²)`` instead of ``O(N²)``, but slower on CPU at our sizes: docs/rlr.md).
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
def window_index(h: int, w: int, window: int) -> tuple[Tensor, Tensor]:
    """For every query the flat indices of its ``window²`` neighbours, ``[N, window²]`` (long), and whether
    each neighbour exists ``[N, window²]`` (bool; ``False`` past the grid border, where the index is 0)."""
    _check_window(window)
    r = window // 2
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    dy, dx = torch.meshgrid(torch.arange(-r, r + 1), torch.arange(-r, r + 1), indexing="ij")
    ny = ys.reshape(-1, 1) + dy.reshape(1, -1)
    nx = xs.reshape(-1, 1) + dx.reshape(1, -1)
    valid = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
    index = torch.where(valid, ny * w + nx, torch.zeros_like(ny))
    return index, valid


def local_attention(
    q: Tensor, k: Tensor, v: Tensor, hw: tuple[int, int], window: int, method: str = "dense"
) -> Tensor:
    """Softmax attention of each query over the keys inside its window only.

    ``q``: ``[B, H, N, d]``; ``k``, ``v``: ``[B, H, N, d]`` or ``[H, N, d]`` (batch-independent, e.g. a
    learned reference). Returns ``[B, H, N, d]``. ``method``: ``"dense"`` — the fused scaled-dot-product
    kernel with the cached ``[N, N]`` window mask (no ``N×N`` score matrix is kept; fastest on CPU at 1024
    tokens, see docs/rlr.md); ``"gather"`` — the window's keys and values gathered to
    ``[..., N, window², d]``, ``O(N·window²)`` work and memory.
    """
    if method == "dense":
        allowed = window_mask(hw[0], hw[1], window).to(q.device)
        k, v = (t.unsqueeze(0).expand(q.shape[0], -1, -1, -1) if t.dim() == 3 else t for t in (k, v))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    if method != "gather":
        raise ValueError(f"unknown local attention method {method!r}: use 'dense' or 'gather'")
    index, valid = window_index(hw[0], hw[1], window)
    index, valid = index.to(q.device), valid.to(q.device)
    n, kk = index.shape
    flat = index.reshape(-1)
    kn = k.index_select(-2, flat).unflatten(-2, (n, kk))  # [..., N, k², d]
    vn = v.index_select(-2, flat).unflatten(-2, (n, kk))
    if k.dim() == 3:
        scores = torch.einsum("bhnd,hnkd->bhnk", q, kn)
    else:
        scores = torch.einsum("bhnd,bhnkd->bhnk", q, kn)
    scores = (scores / math.sqrt(q.shape[-1])).masked_fill(~valid, float("-inf"))
    attn = scores.softmax(dim=-1)
    if v.dim() == 3:
        return torch.einsum("bhnk,hnkd->bhnd", attn, vn)
    return torch.einsum("bhnk,bhnkd->bhnd", attn, vn)


def masked_attention(q: Tensor, k: Tensor, v: Tensor, hw: tuple[int, int], window: int) -> Tensor:
    """Softmax attention of each query over every key *outside* its window (the window is masked out).

    ``q``, ``v``: ``[B, H, N, d]``; ``k``: ``[B, H, N, d]`` or ``[H, N, d]``. The window must leave at least
    one key outside it for every query (``window`` well below the grid size), or a query would have nothing to
    attend to.
    Returns ``[B, H, N, d]``.
    """
    allowed = ~window_mask(hw[0], hw[1], window)
    if not bool(allowed.any(dim=1).all()):
        raise ValueError(
            f"a {window}×{window} masked window leaves some query of the {hw[0]}×{hw[1]} grid no key"
        )
    allowed = allowed.to(q.device)
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
