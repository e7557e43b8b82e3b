"""RLR: reconstruction from a learned unified reference (He et al., ECCV 2024), one model for all categories.

Per feature level, a learnable *reference* (one token per grid position, random normal init, in feature space,
embedded by its own linear projection plus the inputs' position embedding, as the official code does) stands
for "normal" and every layer reconstructs the tokens through it:

* Local Cross Attention (LCA): query = tokens, key = value = reference, only inside a local window — the
  output is a mix of reference tokens, so an anomaly cannot be copied through;
* Masked Learnable Key Attention (MLKA): query = tokens, key = reference, value = tokens, with the same window
  masked out — a position is rebuilt from *other* positions' features, never from its own neighbourhood.

A layer is ``LayerNorm(2·LCA + MLKA)`` (no residual from the input tokens: the identity shortcut UniAD
suffers from is closed) followed by a feed-forward block (GELU) with residual and LayerNorm. ``use_lca`` /
``use_mlka`` switch either branch off for the ablation. Training and scoring are
:class:`ReconstructionModel`'s.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from reconad.errors import ReconadError
from reconad.models.base import register
from reconad.models.trained.attention import local_attention, masked_attention, merge_heads, split_heads
from reconad.models.trained.reconstruction import (
    LevelShape,
    ReconstructionModel,
    TokenReconstructor,
    attention_init,
    feed_forward,
    token_embedding,
)
from reconad.params import param


class _Projections(nn.Module):
    """Query / key / value / output projections of one multi-head attention, initialised as the official
    code's ``nn.MultiheadAttention`` (:func:`attention_init`)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(width, width) for _ in range(4))
        attention_init([self.q, self.k, self.v], self.o)


class RLRLayer(nn.Module):
    """``x ← LN(2·LCA(x, ref) + MLKA(x, ref))``, then ``x ← LN(x + FFN(x))``."""

    def __init__(
        self, width: int, heads: int, ff_mult: int, hw: tuple[int, int], window: int, lca: bool, mlka: bool
    ) -> None:
        super().__init__()
        self.heads, self.hw, self.window = heads, hw, window
        self.lca = _Projections(width) if lca else None
        self.mlka = _Projections(width) if mlka else None
        self.norm1 = nn.LayerNorm(width)
        self.ff = feed_forward(width, ff_mult)
        self.norm2 = nn.LayerNorm(width)

    def forward(self, x: Tensor, ref: Tensor) -> Tensor:
        """``x``: ``[B, N, width]`` tokens; ``ref``: ``[N, width]`` embedded reference."""
        h = self.heads
        mixed = torch.zeros_like(x)
        if self.lca is not None:
            p = self.lca
            att = local_attention(
                split_heads(p.q(x), h),
                split_heads(p.k(ref), h),
                split_heads(p.v(ref), h),
                self.hw,
                self.window,
            )
            mixed = mixed + 2 * p.o(merge_heads(att))
        if self.mlka is not None:
            p = self.mlka
            att = masked_attention(
                split_heads(p.q(x), h), split_heads(p.k(ref), h), split_heads(p.v(x), h), self.hw, self.window
            )
            mixed = mixed + p.o(merge_heads(att))
        x = self.norm1(mixed)
        return self.norm2(x + self.ff(x))


class RLRLevel(TokenReconstructor):
    """One level: embedded tokens → RLR layers against the learnable reference, embedded by its own projection
    (``ref_embed``) plus the position embedding."""

    def __init__(self, shape: LevelShape, lca: bool, mlka: bool) -> None:
        channels, width, hw = shape.channels, shape.width, shape.hw
        super().__init__(channels, width, hw)
        self.reference = nn.Parameter(torch.randn(hw[0] * hw[1], channels))
        self.ref_embed = token_embedding(channels, width)
        self.layers = nn.ModuleList(
            RLRLayer(width, shape.heads, shape.ff_mult, hw, shape.window, lca, mlka)
            for _ in range(shape.layers)
        )

    def encode(self, tokens: Tensor) -> Tensor:
        ref = self.ref_embed(self.reference) + self.pos
        for layer in self.layers:
            tokens = layer(tokens, ref)
        return tokens


@register
@dataclass(eq=False, kw_only=True)
class RLR(ReconstructionModel):
    """Unified RLR; see :class:`ReconstructionModel` for the shared hyper-parameters and docs/rlr.md for the
    CPU and GPU recipes. ``use_lca`` / ``use_mlka``: keep each attention branch (the ablation)."""

    name = "rlr"

    use_lca: bool = param(True, help="keep the local cross attention to the learnable reference")
    use_mlka: bool = param(True, help="keep the masked learnable-key attention")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (self.use_lca or self.use_mlka):
            raise ReconadError("rlr needs at least one of use_lca and use_mlka")

    def make_level(self, shape: LevelShape) -> TokenReconstructor:
        return RLRLevel(shape, lca=self.use_lca, mlka=self.use_mlka)
