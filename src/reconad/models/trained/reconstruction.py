"""The shared base of the feature-reconstruction transformers (RLR and its ablation RLR-selfref): one network
per feature level, every category trained together (a :class:`~.unified.UnifiedModel`).

Each level is standardised per channel with the mean and standard deviation of its training features
(stored with the weights; the official code works on raw features, which scored 0.3 pt lower on the
validation set, docs/rlr.md): the network starts at the right scale, which matters on a short CPU schedule,
and every channel counts alike in the loss and the score. Training (:mod:`.trainer`; its feature jitter is
drawn in raw units) and its per-epoch checkpoints (:mod:`.checkpoints`) live apart.

Score: per level, channel-mean squared error + (1 − cosine) between the (standardised) features and their
reconstruction, on the level's own grid; :func:`reconad.scoring.anomaly_maps` resizes each level's map to the
image and averages them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reconad.errors import ReconadError
from reconad.features.extractor import unsampling_matrix
from reconad.models.trained.trainer import LR_SCHEDULES
from reconad.models.trained.unified import UnifiedModel, device_param
from reconad.params import MAX_SEED, param


def sincos_position_2d(hw: tuple[int, int], width: int) -> Tensor:
    """Fixed 2-D sine-cosine position embedding ``[h·w, width]`` (half the channels encode y, half x)."""
    if width % 4:
        raise ValueError(f"width must be a multiple of 4 for a 2-D sine-cosine embedding, got {width}")
    quarter = width // 4
    freq = 1.0 / (10000.0 ** (torch.arange(quarter, dtype=torch.float64) / quarter))
    ys, xs = torch.meshgrid(
        torch.arange(hw[0], dtype=torch.float64), torch.arange(hw[1], dtype=torch.float64), indexing="ij"
    )
    parts = []
    for coord in (ys.reshape(-1, 1), xs.reshape(-1, 1)):
        angle = coord * freq
        parts += [angle.sin(), angle.cos()]
    return torch.cat(parts, dim=1).float()


def default_window(side: int) -> int:
    """The attention window for a grid side: 7 on 32, 5 on 16 (RLR's choices), ~3/16 of the side, odd, ≥ 3."""
    return max(3, 2 * round(side * 3 / 32) + 1)


def token_embedding(channels: int, width: int) -> nn.Linear:
    """The linear map from feature tokens to the model width, initialised as the official RLR code initialises
    its 1×1 ``Conv1d`` embeddings: kaiming-normal weights (fan in, gain √2), PyTorch's default bias."""
    layer = nn.Linear(channels, width)
    nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="leaky_relu")
    return layer


def attention_init(inputs: Sequence[nn.Linear], output: nn.Linear) -> None:
    """Initialise an attention's projections as ``nn.MultiheadAttention`` does (the official RLR code's
    attentions): xavier-uniform over the ``inputs`` (query, key, value) stacked as one ``in_proj`` matrix,
    every bias zero; the ``output`` weight keeps ``nn.Linear``'s default."""
    rows = sum(layer.out_features for layer in inputs)
    bound = math.sqrt(6 / (inputs[0].in_features + rows))
    with torch.no_grad():
        for layer in inputs:
            layer.weight.uniform_(-bound, bound)
            layer.bias.zero_()
        output.bias.zero_()


@dataclass(frozen=True)
class LevelShape:
    """The size of one level's network: ``channels`` of its features, token ``width``, grid ``hw``, attention
    ``window``, and ``layers`` transformer layers of ``heads`` heads, feed-forward ``ff_mult`` × ``width``."""

    channels: int
    width: int
    hw: tuple[int, int]
    window: int
    layers: int
    heads: int
    ff_mult: int


class TokenReconstructor(nn.Module):
    """One level's network: linear embedding (:func:`token_embedding`) + fixed position embedding →
    :meth:`encode` → LayerNorm → linear projection back to the feature width. Subclasses implement
    :meth:`encode` (``[B, N, width]`` tokens). ``feature_mean`` / ``feature_std`` (buffers, set from the
    training tokens by :meth:`ReconstructionModel.prepare`) standardise the level's raw features."""

    def __init__(self, channels: int, width: int, hw: tuple[int, int]) -> None:
        super().__init__()
        self.hw = hw
        self.register_buffer("feature_mean", torch.zeros(channels))
        self.register_buffer("feature_std", torch.ones(channels))
        self.embed = token_embedding(channels, width)
        self.register_buffer("pos", sincos_position_2d(hw, width), persistent=False)
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, channels)

    def encode(self, tokens: Tensor) -> Tensor:
        raise NotImplementedError

    def standardise(self, features: Tensor) -> Tensor:
        """Raw ``[B, N, C]`` level features → per-channel standardised features (the space of the loss)."""
        return (features - self.feature_mean) / self.feature_std

    def forward(self, features: Tensor) -> Tensor:
        """``[B, N, C]`` standardised (possibly jittered) features → ``[B, N, C]`` reconstruction."""
        return self.out(self.norm(self.encode(self.embed(features) + self.pos)))


def feed_forward(width: int, ff_mult: int) -> nn.Sequential:
    """A layer's feed-forward block: ``width → ff_mult·width → width`` with GELU (the official ``Mlp``)."""
    return nn.Sequential(nn.Linear(width, ff_mult * width), nn.GELU(), nn.Linear(ff_mult * width, width))


def reconstruction_error(x: Tensor, rec: Tensor) -> Tensor:
    """Per-token channel-mean squared error + (1 − cosine similarity): ``[..., C]`` → ``[...]``."""
    return (rec - x).pow(2).mean(dim=-1) + 1 - F.cosine_similarity(rec, x, dim=-1, eps=1e-6)


@dataclass(eq=False, kw_only=True)
class ReconstructionModel(UnifiedModel):
    """Base of RLR and RLR-selfref: one network per feature level, on the level's own grid. Subclasses set
    ``name``, implement :meth:`make_level` and are dataclasses too, declaring only their own
    hyper-parameters as fields: the fields below are the shared ones (``__init__`` arguments by keyword, the
    run's ``params``).

    ``widths``, ``windows``: one per level (``None``: the defaults); ``epochs`` is fixed (no early stopping on
    any split).
    """

    name: ClassVar[str] = "reconstruction"

    widths: Sequence[int] | None = param(
        None, low=4, high=1024, help="token width per level, multiples of 4 and of heads (null: 64 or 128)"
    )
    layers: int = param(2, low=1, high=16, help="transformer layers per level")
    heads: int = param(4, low=1, high=32, help="attention heads")
    ff_mult: int = param(2, low=1, high=8, help="feed-forward width as a multiple of the token width")
    windows: Sequence[int] | None = param(
        None, low=1, help="odd attention window per level, below its grid side (null: ~3/16 of the side)"
    )
    jitter_scale: float = param(4.0, low=0, high=100, help="feature jitter: noise std per token, × ‖f‖ / C")
    jitter_prob: float = param(1.0, low=0, high=1, help="feature jitter: share of the images jittered")
    epochs: int = param(27, low=1, high=10000, help="training epochs (fixed: no early stopping)")
    batch_size: int = param(4, low=1, high=1024, help="images per optimizer step")
    lr: float = param(1e-3, low=0, high=1, low_inclusive=False, help="Adam learning rate")
    seed: int = param(0, low=0, high=MAX_SEED, help="seeds the initial weights, the batches and the jitter")
    device: str = device_param()
    lr_schedule: str = param("cosine", choices=LR_SCHEDULES, help="learning rate over the training")

    def check_together(self) -> None:
        n = len(self.level_channels)
        for what, val in (("widths", self.widths), ("windows", self.windows)):
            if val is not None and len(val) != n:
                raise ReconadError(f"{what} must give one value per level ({n}), got {val}")
        bad = [w for w in self.widths or self.default_widths() if w % 4 or w % self.heads]
        if bad:
            raise ReconadError(
                f"{self.name}: token widths must be multiples of 4 and of heads={self.heads}, got {bad[0]}"
            )
        if any(w % 2 == 0 for w in self.windows or ()):
            raise ReconadError(f"{self.name}: windows must be odd, got {self.windows}")

    # --- what subclasses provide -------------------------------------------------------------------------
    def make_level(self, shape: LevelShape) -> TokenReconstructor:
        """The reconstruction network of one level."""
        raise NotImplementedError

    def default_widths(self) -> list[int]:
        """Per-level token width when ``widths`` is None: the CPU recipe (see docs/rlr.md)."""
        return [64 if c <= 64 else 128 for c in self.level_channels]

    # --- the unified model's parts -----------------------------------------------------------------------
    def map_grids(self, features: Tensor) -> list[tuple[int, int]]:
        """Each level's own grid (one map per level)."""
        return self.level_grids_of(features)

    def tokens(self, features: Tensor) -> list[Tensor]:
        """``[N, C, h, w]`` → per level ``[N, h_l·w_l, C_l]`` raw tokens on the level's own grid.

        The extractor upsampled coarser levels (bilinear, ``align_corners=False``) to the finest grid; per
        axis the pseudo-inverse of that linear map undoes it exactly (:func:`unsampling_matrix`), so each
        level is seen at its own resolution, where its window sizes and token count were meant."""
        h, w = features.shape[-2:]
        out, start = [], 0
        for c, g in zip(self.level_channels, self.level_grids, strict=True):
            x = features[:, start : start + c].float()
            start += c
            ratio = self.level_grids[0] // g
            if ratio > 1:
                rows = unsampling_matrix(h, h // ratio).to(x.device)
                cols = unsampling_matrix(w, w // ratio).to(x.device)
                x = rows @ x @ cols.T
            out.append(x.flatten(2).transpose(1, 2).contiguous())
        return out

    def make_nets(self, grids: list[tuple[int, int]]) -> list[nn.Module]:
        widths = self.widths or self.default_widths()
        windows = self.windows or [default_window(min(hw)) for hw in grids]
        for window, hw in zip(windows, grids, strict=True):
            if window >= min(hw):
                raise ReconadError(
                    f"{self.name}: a {window}×{window} attention window does not fit a {hw[0]}×{hw[1]} level "
                    "grid (each token needs keys outside its window): use a larger image size or windows"
                )
        return [
            self.make_level(LevelShape(c, wd, hw, win, self.layers, self.heads, self.ff_mult))
            for c, wd, hw, win in zip(self.level_channels, widths, grids, windows, strict=True)
        ]

    def prepare(self, tokens: list[Tensor]) -> None:
        """Each level's channel mean and standard deviation over the training tokens."""
        assert self.nets_ is not None
        for net, x in zip(self.nets_, tokens, strict=True):
            flat = x.reshape(-1, x.shape[-1]).double()
            net.feature_mean.copy_(flat.mean(dim=0).float())
            net.feature_std.copy_(flat.std(dim=0).clamp_min(1e-6).float())

    def token_errors(self, net: nn.Module, tokens: Tensor) -> Tensor:
        """:func:`reconstruction_error` of the level's standardised tokens."""
        return reconstruction_error(*self.reconstruct(net, tokens))

    def reconstruct(self, net: nn.Module, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """The level's standardised tokens and their reconstruction."""
        x = net.standardise(tokens)
        return x, net(x)
