"""Window masks and windowed attention: what each query may and may not see."""

from __future__ import annotations

import math

import pytest
import torch

from reconad.models.trained.attention import (
    blocked_pays,
    local_attention,
    masked_attention,
    merge_heads,
    split_heads,
    window_blocks,
    window_mask,
)

HW = (5, 7)  # non-square on purpose
N = HW[0] * HW[1]


def _reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Plain softmax attention restricted to ``allowed`` keys (the definition the fast paths must match)."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    return scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v


def _qkv(seed: int = 0, b: int = 2, h: int = 2, d: int = 4) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(b, h, N, d, generator=g, dtype=torch.float64) for _ in range(3))


def _pos(y: int, x: int) -> int:
    return y * HW[1] + x


def test_window_mask_geometry() -> None:
    m = window_mask(*HW, 3)
    assert m.shape == (N, N) and torch.equal(m, m.T) and m.diagonal().all()
    assert int(m[_pos(2, 3)].sum()) == 9  # interior: the full 3×3
    assert int(m[_pos(0, 0)].sum()) == 4  # corner: cut at the border
    assert bool(m[_pos(2, 3), _pos(3, 4)]) and not bool(m[_pos(2, 3), _pos(2, 5)])


@pytest.mark.parametrize("block", [1, 2, 3, 4, 8])
def test_window_blocks_cover_each_window_exactly_once(block: int) -> None:
    """Every grid position is the query of exactly one tile slot, and that slot allows exactly its window."""
    queries, keys, allowed, slot = window_blocks(*HW, 3, block)
    flat_q, flat_allowed = queries.reshape(-1), allowed.reshape(-1, allowed.shape[-1])
    assert torch.equal(flat_q[slot], torch.arange(N))
    assert allowed.any(dim=-1).all()  # no empty row, padded queries included
    tile = torch.arange(queries.numel()) // queries.shape[1]
    rebuilt = torch.zeros(N, N, dtype=torch.bool)
    for pos in range(N):
        s = int(slot[pos])
        rebuilt[pos, keys[tile[s]][flat_allowed[s]]] = True
        assert int(flat_allowed[s].sum()) == int(window_mask(*HW, 3)[pos].sum())  # no key twice
    assert torch.equal(rebuilt, window_mask(*HW, 3))


def test_blocked_pays_only_on_large_grids() -> None:
    assert blocked_pays((32, 32), 7) and blocked_pays((16, 16), 5)
    assert not blocked_pays(HW, 3) and not blocked_pays((8, 8), 5)


@pytest.mark.parametrize("window", [0, 2, -3])
def test_window_must_be_positive_odd(window: int) -> None:
    with pytest.raises(ValueError):
        window_mask(4, 4, window)


METHODS = [("dense", 4), ("blocked", 1), ("blocked", 2), ("blocked", 4), ("auto", 4)]


@pytest.mark.parametrize(("method", "block"), METHODS)
@pytest.mark.parametrize("shared_kv", [False, True])
def test_local_attention_matches_masked_reference(shared_kv: bool, method: str, block: int) -> None:
    q, k, v = _qkv()
    if shared_kv:  # a batch-independent reference, as RLR's LCA uses
        k, v = k[0], v[0]
    want = _reference(q, k, v, window_mask(*HW, 3))
    assert torch.allclose(local_attention(q, k, v, HW, 3, method=method, block=block), want, atol=1e-10)
    if shared_kv:  # keys shared, values per image (and the other way round)
        for kk, vv in ((k, _qkv(1)[2]), (_qkv(1)[1], v)):
            want = _reference(q, kk, vv, window_mask(*HW, 3))
            assert torch.allclose(
                local_attention(q, kk, vv, HW, 3, method=method, block=block), want, atol=1e-10
            )


def test_blocked_local_attention_gradients_match_dense() -> None:
    """Training goes through the backward pass too: tiles and the dense kernel give the same gradients."""
    q, k, v = (t[0].requires_grad_() if i else t.requires_grad_() for i, t in enumerate(_qkv()))
    grads = []
    for method in ("dense", "blocked"):
        (local_attention(q, k, v, HW, 3, method=method, block=2) ** 2).sum().backward()
        grads.append([t.grad.clone() for t in (q, k, v)])
        for t in (q, k, v):
            t.grad = None
    for dense, blocked in zip(*grads, strict=True):
        assert torch.allclose(dense, blocked, atol=1e-10)


def test_masked_attention_matches_reference() -> None:
    q, k, v = _qkv()
    want = _reference(q, k, v, ~window_mask(*HW, 3))
    assert torch.allclose(masked_attention(q, k, v, HW, 3), want, atol=1e-10)
    assert torch.allclose(masked_attention(q, k[0], v, HW, 3), _reference(q, k[0], v, ~window_mask(*HW, 3)))


def test_masked_attention_ignores_the_window() -> None:
    """Changing keys and values inside query i's window leaves i's output unchanged; outside, it changes."""
    q, k, v = _qkv()
    i = _pos(2, 3)
    inside = window_mask(*HW, 3)[i]
    base = masked_attention(q, k, v, HW, 3)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, inside] += 5.0
    v2[:, :, inside] -= 7.0
    assert torch.allclose(masked_attention(q, k2, v2, HW, 3)[:, :, i], base[:, :, i], atol=1e-12)
    v3 = v.clone()
    v3[:, :, _pos(0, 0)] += 1.0  # outside the window of (2, 3)
    assert not torch.allclose(masked_attention(q, k, v3, HW, 3)[:, :, i], base[:, :, i])


@pytest.mark.parametrize("method", ["dense", "blocked"])
def test_local_attention_sees_only_the_window(method: str) -> None:
    q, k, v = _qkv()
    i = _pos(2, 3)
    inside = window_mask(*HW, 3)[i]
    base = local_attention(q, k, v, HW, 3, method=method)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, ~inside] += 5.0
    v2[:, :, ~inside] -= 7.0
    assert torch.allclose(
        local_attention(q, k2, v2, HW, 3, method=method)[:, :, i], base[:, :, i], atol=1e-12
    )
    v3 = v.clone()
    v3[:, :, _pos(3, 4)] += 1.0  # inside the window of (2, 3)
    assert not torch.allclose(local_attention(q, k, v3, HW, 3, method=method)[:, :, i], base[:, :, i])
    with pytest.raises(ValueError):
        local_attention(q, k, v, HW, 3, method="nope")


def test_masked_window_covering_the_grid_is_refused() -> None:
    q, k, v = _qkv()
    with pytest.raises(ValueError):
        masked_attention(q, k, v, HW, 7)


def test_heads_round_trip() -> None:
    x = torch.randn(3, N, 8)
    assert split_heads(x, 2).shape == (3, 2, N, 4)
    assert torch.equal(merge_heads(split_heads(x, 2)), x)
