"""RLR without the learnable reference (the ablation): the tokens reconstruct themselves, one model for all
categories.

Per level, a stack of post-norm transformer layers whose self-attention carries a *neighbour mask* (a query
cannot attend to keys inside its local window), trained with the same feature jitter, loss, epochs and
scoring as RLR (:class:`ReconstructionModel`). There is no learnable reference, and every layer keeps the
residual connection from its input — the identity shortcut through which an anomaly can be copied to the
output, which RLR's reference is designed to close. Same width and depth as the RLR it is compared with.
(Not UniAD: that is :mod:`reconad.models.trained.uniad`.)
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from reconad.models.base import register
from reconad.models.trained.attention import masked_attention, merge_heads, split_heads
from reconad.models.trained.reconstruction import (
    LevelShape,
    ReconstructionModel,
    TokenReconstructor,
    attention_init,
    feed_forward,
)


class SelfRefLayer(nn.Module):
    """``x ← LN(x + NeighbourMaskedSelfAttention(x))``, then ``x ← LN(x + FFN(x))`` (GELU, as RLR's)."""

    def __init__(self, width: int, heads: int, ff_mult: int, hw: tuple[int, int], window: int) -> None:
        super().__init__()
        self.heads, self.hw, self.window = heads, hw, window
        self.qkv = nn.Linear(width, 3 * width)
        self.o = nn.Linear(width, width)
        attention_init([self.qkv], self.o)  # as RLR's (nn.MultiheadAttention's)
        self.norm1 = nn.LayerNorm(width)
        self.ff = feed_forward(width, ff_mult)
        self.norm2 = nn.LayerNorm(width)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = (split_heads(t, self.heads) for t in self.qkv(x).chunk(3, dim=-1))
        x = self.norm1(x + self.o(merge_heads(masked_attention(q, k, v, self.hw, self.window))))
        return self.norm2(x + self.ff(x))


class SelfRefLevel(TokenReconstructor):
    def __init__(self, shape: LevelShape) -> None:
        super().__init__(shape.channels, shape.width, shape.hw)
        self.layers = nn.ModuleList(
            SelfRefLayer(shape.width, shape.heads, shape.ff_mult, shape.hw, shape.window)
            for _ in range(shape.layers)
        )

    def encode(self, tokens: Tensor) -> Tensor:
        for layer in self.layers:
            tokens = layer(tokens)
        return tokens


@register
@dataclass(eq=False, kw_only=True)
class RLRSelfRef(ReconstructionModel):
    """RLR without the learnable reference (the ablation); hyper-parameters as
    :class:`ReconstructionModel`."""

    name = "rlr-selfref"

    def make_level(self, shape: LevelShape) -> TokenReconstructor:
        return SelfRefLevel(shape)
