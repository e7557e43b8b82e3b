"""Multi-level patch features from a frozen backbone: the one input every model sees."""

from __future__ import annotations

import copy
import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reconad.errors import ReconadError
from reconad.features.backbone import create_feature_backbone
from reconad.features.tiles import TileGrid
from reconad.image_runtime import DECODING, Decoding, stored_size
from reconad.options import DEFAULTS, TILE_CANVAS, FitOptions, check_image_size, check_layers

#: How images reach the backbone (decoding and resizing, :mod:`reconad.data.imageio`); part of the cache key,
#: so a change to it never mixes old and new features.
PREPROCESSING = "rgb8|torch-bilinear-antialias|border-zeros"
#: How the 3×3 average treats the border: the zero padding counts (``AvgPool2d(3, 1, 1)``, as the official
#: PatchCore and RLR code). Stored in a run's features config; a run without it was fitted on other features.
BORDER = "zeros"


def bilinear_matrix(
    n_out: int, n_in: int, dtype: torch.dtype = torch.float64, align_corners: bool = False
) -> Tensor:
    """The ``[n_out, n_in]`` matrix of 1-D linear resizing as ``F.interpolate`` does it: one axis of a
    bilinear resize, read off by resizing the identity."""
    eye = torch.eye(n_in, dtype=torch.float64).unsqueeze(0)
    out = F.interpolate(eye, size=n_out, mode="linear", align_corners=align_corners)
    return out[0].T.to(dtype)


@lru_cache(maxsize=16)
def unsampling_matrix(n_fine: int, n_level: int) -> Tensor:
    """``[n_level, n_fine]``: the exact inverse of the extractor's bilinear upsampling of a level from
    ``n_level`` to ``n_fine`` along one axis (the pseudo-inverse of :func:`bilinear_matrix`, which has full
    column rank, so ``P @ U = I``), formed in float64, returned in float32."""
    return torch.linalg.pinv(bilinear_matrix(n_fine, n_level)).float()


def check_features_config(config: dict[str, Any], where: str = "the run") -> None:
    """Refuse, in one line, features computed before the border of the 3×3 average counted its zero padding
    (a features config without ``"border": "zeros"``): the model was fitted on other features."""
    if config.get("border") != BORDER:
        raise ReconadError(
            f"{where} was fitted on features of an older reconad (3×3 average without the zero border): "
            "refit it"
        )


class PatchFeatures(nn.Module):
    """The pixels-to-features path as one module: uint8 ``[N, H, W, 3]`` → float ``[N, C, h, w]``.

    Normalise with the backbone's ``mean``/``std`` (given on the 0–255 scale, ``[1, 3, 1, 1]``), run the
    backbone's levels, smooth each with a ``smooth``×``smooth`` local average (the zero padding counts at
    the border), upsample every level to the
    first one's grid (bilinear) and concatenate. :class:`FeatureExtractor` runs it; ``reconad export``
    traces it into the exported graph.
    """

    def __init__(self, backbone: nn.Module, mean: Tensor, std: Tensor, smooth: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.smooth = smooth

    def forward(self, images: Tensor) -> Tensor:
        x = (images.permute(0, 3, 1, 2).float() - self.mean) / self.std
        levels = self.backbone(x)
        out = []
        for level in levels:
            if self.smooth > 1:
                level = F.avg_pool2d(level, self.smooth, stride=1, padding=self.smooth // 2)
            if level.shape[-2:] != levels[0].shape[-2:]:
                level = F.interpolate(level, size=levels[0].shape[-2:], mode="bilinear", align_corners=False)
            out.append(level)
        return torch.cat(out, dim=1)


#: Tiles a tiled run's backbone takes at once (:meth:`FeatureExtractor.__call__`): its memory is the batch's.
TILE_BATCH = 16


class TiledFeatures(nn.Module):
    """:class:`PatchFeatures` of each tile of a canvas: uint8 ``[N, H, W, 3]`` → ``[N, C, T·h, w]``, the
    ``T`` tiles' ``[C, h, w]`` grids one below the other in :attr:`TileGrid.positions` order (a per-patch
    model sees every tile's patches; the scoring stitches them back, :func:`reconad.scoring.tiled_maps`)."""

    def __init__(self, patches: PatchFeatures, grid: TileGrid) -> None:
        super().__init__()
        self.patches, self.grid = patches, grid

    def forward(self, images: Tensor, chunk: int | None = None) -> Tensor:
        """``chunk``: tiles through the backbone at once (None: all, as the exported graph does)."""
        tiles = self.grid.cut(images)
        if chunk is None:  # no loop over the batch: the exported graph keeps its batch axis free
            f = self.patches(tiles)
        else:
            f = torch.cat([self.patches(tiles[a : a + chunk]) for a in range(0, len(tiles), chunk)])
        return f.unflatten(0, (-1, len(self.grid))).transpose(1, 2).flatten(2, 3)


class FeatureExtractor:
    """Images (uint8 ``[N, H, W, 3]``, already resized to ``image_hw``) → patch features ``[N, C, h, w]``.

    Each chosen backbone level is smoothed by a ``smooth``×``smooth`` local average (neighbourhood context,
    as in PatchCore), upsampled to the grid of the first (finest) level and concatenated along channels.
    ``level_channels`` says which channels came from which level (RLR reconstructs each level apart; UniAD
    brings them to one grid). ``decoding`` says how image files become its uint8 pixels (the levels of
    >8-bit data, the pixel limit): part of its config, so a run carries it to every command and the export.

    ``image_size``: an int (a square, as ever), ``"WxH"`` or ``(h, w)``; :attr:`image_hw` is ``(h, w)``,
    :attr:`image_size` the form run.json stores (:func:`~reconad.image_runtime.stored_size`: the int when
    square, so square runs keep their config and cache key).
    """

    def __init__(
        self,
        backbone: str = DEFAULTS.backbone,
        layers: tuple[int, ...] = DEFAULTS.layers,
        image_size: int | str | tuple[int, int] = DEFAULTS.image_size,
        smooth: int = 3,
        weights: str | Path | None = DEFAULTS.weights,
        device: str = DEFAULTS.device,
        decoding: Decoding = DECODING,
        tile: dict[str, Any] | None = None,
    ) -> None:
        self.backbone = backbone
        self.tile = tile
        self.decoding = decoding
        self.layers = check_layers(tuple(layers))
        self.smooth = smooth
        self.weights = str(weights) if weights else None
        try:
            self.device = torch.device(device)
        except RuntimeError as err:
            raise ReconadError(f"--device {device!r}: {err}") from None
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ReconadError(f"--device {device}: no CUDA GPU is available here (use --device cpu)")
        self.model, (mean, std) = create_feature_backbone(
            backbone, self.layers, Path(weights) if weights else None
        )
        self.model.to(self.device)
        self.patches = PatchFeatures(
            self.model,
            torch.tensor(mean, device=self.device).view(1, 3, 1, 1) * 255,
            torch.tensor(std, device=self.device).view(1, 3, 1, 1) * 255,
            smooth,
        ).eval()
        self.net: nn.Module = self.patches
        self.level_channels: tuple[int, ...] = tuple(self.model.feature_info.channels())
        self.resize(image_size)

    def resize(self, image_size: int | str | tuple[int, int]) -> None:
        """Work at another image size from now on (the backbone stays): ``--keep-aspect`` settles the size
        once the training images are known. Sets :attr:`image_hw`, :attr:`image_size` (the stored form),
        :attr:`level_hw` (each level's ``(h, w)`` grid, finest first) and :attr:`level_grids` (each level's
        grid rows, its side when square: the unified models' ``level_grids``, whose ratios they use). A tiled
        extractor's size is its canvas: :attr:`tiles` its grid, each level's grid the tiles' grids stacked."""
        self.tiles: TileGrid | None = None
        if self.tile is None:
            self.image_hw = check_image_size(image_size)
            h, w = self.image_hw
        else:
            self.image_hw = check_image_size(image_size, "the tiled canvas", TILE_CANVAS)
            self.tiles = TileGrid(self.image_hw, int(self.tile["size"]), int(self.tile["overlap"]))
            if self.tiles.size % self.stride:
                raise ReconadError(f"--tile {self.tiles.size} is not a multiple of {self.stride}, the stride")
            h, w = len(self.tiles) * self.tiles.size, self.tiles.size
            self.net = TiledFeatures(self.patches, self.tiles)
        self.image_size = stored_size(self.image_hw)
        # the backbone pads "same": a level's grid is the side over its stride, rounded up
        self.level_hw = tuple((-(-h // r), -(-w // r)) for r in self.model.feature_info.reduction())
        self.level_grids: tuple[int, ...] = tuple(lh for lh, _ in self.level_hw)

    @property
    def stride(self) -> int:
        """The coarsest chosen level's stride: the unit both sides of the image size come in."""
        return max(self.model.feature_info.reduction())

    def check_whole_grids(self) -> None:
        """Fail unless both sides of the image size are multiples of every level's stride. Otherwise the
        levels' grids (each side over the stride, rounded up) do not divide one another, which the models
        that work per level (``level_grids``: RLR, RLR-selfref, UniAD) need; per-patch models take any
        size."""
        stride, level = max(zip(self.model.feature_info.reduction(), self.layers))
        for size in dict.fromkeys(self.image_hw):
            if size % stride:
                lower = max(stride, size // stride * stride)
                raise ReconadError(
                    f"image size {self.image_size} is not a multiple of {stride}, the stride of "
                    f"{self.backbone}'s level {level}, which models working per level need "
                    f"(e.g. {lower} or {lower + stride} for {size})"
                )

    def config(self) -> dict[str, Any]:
        """What defines these features (stored in runs; keys the cache); ``decoding`` only where it is not
        the default (8-bit runs keep the config, and the cache key, they always had)."""
        config = {
            "backbone": self.backbone,
            "layers": list(self.layers),
            "image_size": self.image_size,
            "smooth": self.smooth,
            "weights": self.weights,
            "border": BORDER,
        }
        if self.decoding != DECODING:
            config["decoding"] = self.decoding.to_json()
        if self.tile is not None:
            config["tile"] = self.tile
        return config

    def with_decoding(self, decoding: Decoding) -> FeatureExtractor:
        """The same extractor (the backbone shared, not reloaded) decoding images by ``decoding``."""
        other = copy.copy(self)
        other.decoding = decoding
        return other

    @classmethod
    def from_options(cls, options: FitOptions, decoding: Decoding | None = None) -> FeatureExtractor:
        """The extractor of a fit's options (:class:`reconad.options.FitOptions`); ``decoding``: the one the
        fit measured (default: the options'). Tiled, its canvas is one tile until the fit measures it."""
        return cls(
            options.backbone,
            options.layers,
            options.image_size if options.tile is None else options.tile,
            weights=options.weights,
            device=options.device,
            decoding=decoding or options.decoding(),
            tile=options.tiling(),
        )

    @classmethod
    def from_config(cls, config: dict[str, Any], device: str = "cpu") -> FeatureExtractor:
        """The extractor a run was fitted with (``run.config["features"]``, as :meth:`config` wrote it: the
        image size an int when square, ``"WxH"`` when not); a one-line error to refit where they are not
        this version's features (:func:`check_features_config`)."""
        check_features_config(config)
        return cls(
            backbone=config["backbone"],
            layers=tuple(config["layers"]),
            image_size=config["image_size"],
            smooth=config["smooth"],
            weights=config.get("weights"),
            device=device,
            decoding=Decoding.of_features(config),
            tile=config.get("tile"),
        )

    def key(self) -> str:
        """A short digest of :meth:`config` plus the weights' identity, for the feature cache."""
        ident = json.dumps(self.config(), sort_keys=True) + PREPROCESSING
        if self.weights:
            stat = Path(self.weights).stat()
            ident += f"{stat.st_size}:{stat.st_mtime_ns}"
        return hashlib.sha256(ident.encode()).hexdigest()[:16]

    @property
    def channels(self) -> int:
        return sum(self.level_channels)

    @torch.inference_mode()
    def __call__(self, images: Tensor) -> Tensor:
        """uint8 ``[N, H, W, 3]`` → float32 ``[N, C, h, w]`` on the CPU (tiled: :data:`TILE_BATCH` tiles at a
        time through the backbone)."""
        images = images.to(self.device)
        if self.tiles is None:
            return self.net(images).float().cpu()
        return self.net(images, TILE_BATCH).float().cpu()
