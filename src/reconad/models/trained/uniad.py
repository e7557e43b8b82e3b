"""UniAD (You et al., *A Unified Model for Multi-class Anomaly Detection*, NeurIPS 2022): one transformer
reconstructs the features of every category; the reconstruction error is the anomaly score.

As the official code (zhiyuanyou/UniAD) runs it, on our features:

* **one grid** (the official MFCN neck): every level resized to the coarsest level's grid and concatenated.
  Our extractor upsampled the coarser levels to the finest grid (bilinear, ``align_corners=False``); that
  upsampling has full column rank, so its pseudo-inverse recovers a level's own grid exactly. A finer level
  is then resized down as the neck does (bilinear, ``align_corners=True``). Default features: 40 + 112 = 152
  channels on 16×16.
* input projection, learned position embedding (a row and a column table, half the width each), an encoder
  of post-norm layers whose self-attention carries the *neighbour mask* (a query never attends to keys inside
  its ``window×window`` neighbourhood), a decoder whose every layer starts from its own learned queries
  (layer-wise queries: attention to the encoder output, then to the previous layer's output, both
  neighbour-masked), output projection.
* training: feature jitter on the raw features (Gaussian, per-token std ``jitter_scale · ‖f‖ / C``), MSE to
  the clean features, AdamW, gradients clipped to a global norm, the learning rate ×0.1 for the last fifth.
* score: ‖reconstruction − features‖₂ per position.

Training runs on the shared trainer (:func:`reconad.models.trained.trainer.train` with this model's
:class:`~reconad.models.trained.trainer.Recipe`), so checkpoints, ``--resume`` and torchrun work as for RLR.
docs/uniad.md has our CPU recipe next to the official one.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reconad.distributed import World
from reconad.errors import ReconadError
from reconad.features.extractor import bilinear_matrix, unsampling_matrix
from reconad.models.base import register
from reconad.models.trained.attention import merge_heads, outside_window_mask, split_heads
from reconad.models.trained.trainer import LR_SCHEDULES, Recipe, feature_jitter
from reconad.models.trained.unified import UnifiedModel, device_param
from reconad.params import MAX_SEED, param


# --- the neck: the extractor's concatenated levels → one grid, and the score back ---------------------------
@lru_cache(maxsize=32)
def neck_matrix(n_out: int, n_level: int, n_in: int) -> Tensor:
    """``[n_out, n_in]``: one axis of a level from the extractor's grid (``n_in``) to the model's (``n_out``).

    First the level's own grid (``n_level``) back: the pseudo-inverse of the extractor's bilinear upsampling
    (``align_corners=False``; exact, the upsampling has full column rank); then, for a level finer than the
    model's grid, the official neck's bilinear resize (``align_corners=True``)."""
    out = torch.eye(n_in, dtype=torch.float64)
    if n_level != n_in:
        out = unsampling_matrix(n_in, n_level).double() @ out
    if n_out != n_level:
        out = bilinear_matrix(n_out, n_level, align_corners=True) @ out
    return out.float()


def reconstruction_distance(net: nn.Module, tokens: Tensor) -> Tensor:
    """``[B, N]``: ‖net(tokens) − tokens‖₂ per token (the score)."""
    return (net(tokens) - tokens).norm(dim=-1)


# --- the network -------------------------------------------------------------------------------------------
class NeighbourMaskedAttention(nn.Module):
    """Multi-head attention in which a query sees every key *outside* its ``window×window`` neighbourhood.
    One ``[3·width, width]`` input projection split into query, key and value parts (as
    ``nn.MultiheadAttention`` holds it), dropout on the attention weights while training."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.in_proj = nn.Linear(width, 3 * width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, hw: tuple[int, int], window: int) -> Tensor:
        weights, biases = self.in_proj.weight.chunk(3), self.in_proj.bias.chunk(3)
        q, k, v = (
            split_heads(F.linear(x, w, b), self.heads)
            for x, w, b in zip((query, key, value), weights, biases, strict=True)
        )
        allowed = outside_window_mask(hw[0], hw[1], window).to(q.device)
        p = self.dropout if self.training else 0.0
        return self.out_proj(merge_heads(F.scaled_dot_product_attention(q, k, v, allowed, dropout_p=p)))


class FeedForward(nn.Sequential):
    def __init__(self, width: int, hidden: int, dropout: float) -> None:
        super().__init__(
            nn.Linear(width, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, width),
            nn.Dropout(dropout),
        )


class EncoderLayer(nn.Module):
    """``x ← LN(x + Attn(q = k = x + pos, v = x))``, ``x ← LN(x + FFN(x))`` (post-norm)."""

    def __init__(self, width: int, heads: int, ff_dim: int, dropout: float) -> None:
        super().__init__()
        self.attn = NeighbourMaskedAttention(width, heads, dropout)
        self.drop = nn.Dropout(dropout)
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.ff = FeedForward(width, ff_dim, dropout)

    def forward(self, x: Tensor, pos: Tensor, hw: tuple[int, int], window: int) -> Tensor:
        x = self.norm1(x + self.drop(self.attn(x + pos, x + pos, x, hw, window)))
        return self.norm2(x + self.ff(x))


class DecoderLayer(nn.Module):
    """From the layer's learned queries ``t``: ``t ← LN(t + Attn(q = t + pos, k = mem + pos, v = mem))``,
    ``t ← LN(t + Attn(q = t + pos, k = prev + pos, v = prev))``, ``t ← LN(t + FFN(t))``; ``mem`` is the
    encoder's output, ``prev`` the previous decoder layer's (the encoder's for the first)."""

    def __init__(self, width: int, heads: int, ff_dim: int, dropout: float, tokens: int) -> None:
        super().__init__()
        self.queries = nn.Parameter(torch.randn(tokens, width))
        self.attn_memory = NeighbourMaskedAttention(width, heads, dropout)
        self.attn_prev = NeighbourMaskedAttention(width, heads, dropout)
        self.drop1, self.drop2 = nn.Dropout(dropout), nn.Dropout(dropout)
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(width) for _ in range(3))
        self.ff = FeedForward(width, ff_dim, dropout)

    def forward(self, prev: Tensor, memory: Tensor, pos: Tensor, hw: tuple[int, int], window: int) -> Tensor:
        t = self.queries.expand(memory.shape[0], -1, -1)
        t = self.norm1(t + self.drop1(self.attn_memory(t + pos, memory + pos, memory, hw, window)))
        t = self.norm2(t + self.drop2(self.attn_prev(t + pos, prev + pos, prev, hw, window)))
        return self.norm3(t + self.ff(t))


class UniADNet(nn.Module):
    """Tokens ``[B, h·w, C]`` (raw features on the model's grid) → their reconstruction ``[B, h·w, C]``."""

    def __init__(
        self,
        channels: int,
        hw: tuple[int, int],
        width: int,
        heads: int,
        encoder_layers: int,
        decoder_layers: int,
        ff_dim: int,
        dropout: float,
        window: int,
    ) -> None:
        super().__init__()
        self.hw, self.window = hw, window
        self.input_proj = nn.Linear(channels, width)
        self.row_embed = nn.Parameter(torch.rand(hw[0], width // 2))  # learned position: uniform [0, 1) init
        self.col_embed = nn.Parameter(torch.rand(hw[1], width - width // 2))
        self.encoder = nn.ModuleList(
            EncoderLayer(width, heads, ff_dim, dropout) for _ in range(encoder_layers)
        )
        tokens = hw[0] * hw[1]
        self.decoder = nn.ModuleList(
            DecoderLayer(width, heads, ff_dim, dropout, tokens) for _ in range(decoder_layers)
        )
        self.decoder_norm = nn.LayerNorm(width)
        self.output_proj = nn.Linear(width, channels)
        for m in self.modules():  # the official initializer: xavier-uniform weights, zero biases
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def position(self) -> Tensor:
        """``[h·w, width]``: the column embedding, then the row embedding, of each position."""
        h, w = self.hw
        cols = self.col_embed[None].expand(h, -1, -1)
        rows = self.row_embed[:, None].expand(-1, w, -1)
        return torch.cat([cols, rows], dim=-1).flatten(0, 1)

    def forward(self, tokens: Tensor) -> Tensor:
        pos = self.position()
        memory = self.input_proj(tokens)
        for layer in self.encoder:
            memory = layer(memory, pos, self.hw, self.window)
        out = memory
        for layer in self.decoder:
            out = layer(out, memory, pos, self.hw, self.window)
        return self.output_proj(self.decoder_norm(out))


# --- the model ---------------------------------------------------------------------------------------------
@register
@dataclass(eq=False, kw_only=True)
class UniAD(UnifiedModel):
    """Unified UniAD; ``level_channels`` / ``level_grids`` come from the features. Defaults: our CPU recipe
    (docs/uniad.md gives the official values and the GPU command). One network, one map on the model's grid
    (the coarsest level's)."""

    name: ClassVar[str] = "uniad"

    width: int = param(128, low=4, high=2048, help="transformer width (official 256)")
    heads: int = param(8, low=1, high=32, help="attention heads; divide width (official 8)")
    encoder_layers: int = param(2, low=1, high=16, help="encoder layers (official 4)")
    decoder_layers: int = param(
        2, low=1, high=16, help="decoder layers, each with learned queries (official 4)"
    )
    ff_dim: int = param(512, low=1, high=8192, help="feed-forward hidden width (official 1024)")
    dropout: float = param(
        0.1, low=0, high=1, high_inclusive=False, help="dropout while training (official 0.1)"
    )
    window: int = param(7, low=1, help="odd neighbour-mask side: keys inside it are masked out (official 7)")
    jitter_scale: float = param(20.0, low=0, high=1000, help="feature jitter: noise std per token, × ‖f‖ / C")
    jitter_prob: float = param(1.0, low=0, high=1, help="feature jitter: share of the images jittered")
    epochs: int = param(18, low=1, high=10000, help="training epochs (official 1000)")
    batch_size: int = param(8, low=1, high=1024, help="images per optimizer step and process (official 8)")
    lr: float = param(1e-4, low=0, high=1, low_inclusive=False, help="AdamW learning rate (official 1e-4)")
    weight_decay: float = param(1e-4, low=0, high=1, help="AdamW weight decay (official 1e-4)")
    clip_norm: float = param(
        0.1, low=0, high=1e6, low_inclusive=False, help="gradients' largest global L2 norm (official 0.1)"
    )
    lr_schedule: str = param(
        "step", choices=LR_SCHEDULES, help="learning rate over the training (official step)"
    )
    seed: int = param(
        0, low=0, high=MAX_SEED, help="seeds the weights, the batches, the jitter and the dropout"
    )
    device: str = device_param()

    def check_together(self) -> None:
        if self.width % self.heads:
            raise ReconadError(f"uniad: width must be a multiple of heads={self.heads}, got {self.width}")
        if self.window % 2 == 0:
            raise ReconadError(f"uniad: window must be odd, got {self.window}")

    # --- features → tokens on the model's grid -----------------------------------------------------------
    def map_grids(self, features: Tensor) -> list[tuple[int, int]]:
        """The model's grid, the coarsest level's (one map)."""
        grid = min(self.level_grids_of(features))
        if self.window >= min(grid):
            raise ReconadError(
                f"uniad: a {self.window}×{self.window} neighbour mask does not fit the {grid[0]}×{grid[1]} "
                "grid (each token needs keys outside it): use a larger image size or a smaller window"
            )
        return [grid]

    def tokens(self, features: Tensor) -> list[Tensor]:
        """``[N, C, h, w]`` extractor features → ``[[N, g_h·g_w, C]]``, the raw tokens on the model's grid
        (the official neck: each level on the coarsest level's grid, concatenated)."""
        (grid,) = self.map_grids(features)
        h, w = features.shape[-2:]
        out, start = [], 0
        for c, (lh, lw) in zip(self.level_channels, self.level_grids_of(features), strict=True):
            x = features[:, start : start + c].float()
            start += c
            rows = neck_matrix(grid[0], lh, h).to(x.device)
            cols = neck_matrix(grid[1], lw, w).to(x.device)
            out.append(rows @ x @ cols.T)
        return [torch.cat(out, dim=1).flatten(2).transpose(1, 2).contiguous()]

    def make_nets(self, grids: list[tuple[int, int]]) -> list[nn.Module]:
        (grid,) = grids
        return [
            UniADNet(
                sum(self.level_channels),
                grid,
                self.width,
                self.heads,
                self.encoder_layers,
                self.decoder_layers,
                self.ff_dim,
                self.dropout,
                self.window,
            )
        ]

    def token_errors(self, net: nn.Module, tokens: Tensor) -> Tensor:
        return reconstruction_distance(net, tokens)

    def reconstruct(self, net: nn.Module, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """The raw tokens and their reconstruction."""
        return tokens, net(tokens)

    # --- training ----------------------------------------------------------------------------------------
    def batch_loss(
        self, nets: nn.ModuleList, batch: list[Tensor], generator: torch.Generator, world: World | None
    ) -> Tensor:
        """MSE between the clean raw tokens and the reconstruction of their jittered copy. Dropout draws from
        a seed taken from ``generator`` (plus the rank), so a resumed run repeats it."""
        (clean,) = batch
        noisy = feature_jitter(clean, self.jitter_scale, self.jitter_prob, generator, world)
        seed = int(torch.randint(0, 2**62, (), generator=generator)) + (world.rank if world else 0)
        cuda = [clean.device] if clean.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(seed)
            return F.mse_loss(nets[0](noisy).float(), clean)

    def recipe(self) -> Recipe:
        """UniAD's training step for :func:`~reconad.models.trained.trainer.train`."""
        return Recipe(
            loss=self.batch_loss,
            optimizer=lambda ps: torch.optim.AdamW(ps, lr=self.lr, weight_decay=self.weight_decay),
            clip_norm=self.clip_norm,
        )
