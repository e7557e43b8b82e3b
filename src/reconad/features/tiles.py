"""Tiles at native resolution: an image (its canvas) cut into S × S tiles on a grid, maps stitched back.

The grid along each axis starts at ``0, S − P, 2(S − P), …`` and its last tile is flush with the border, so
every pixel is covered; where tiles overlap, the stitched map is the average of theirs. Cutting and
stitching are slicing and padding of fixed sizes: the library runs them and the exported graph holds them.
``docs/images.md`` (*Tiles*) says what was decided and why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from reconad.errors import ReconadError
from reconad.options import TILE_CANVAS, check_image_size


def tile_starts(n: int, size: int, overlap: int) -> list[int]:
    """Where the tiles of one axis of ``n`` pixels start: every ``size − overlap`` pixels, the last one
    flush with the border (``n − size``); ``[0]`` when ``n == size``."""
    if n < size:
        raise ReconadError(f"a side of {n} px is smaller than the tile ({size} px)")
    step = size - overlap
    starts = list(range(0, n - size, step))
    return [*starts, n - size]


def canvas_hw(native_hw: tuple[int, int], size: int, scale: float) -> tuple[int, int]:
    """The canvas ``(H, W)`` of images of ``native_hw`` scaled by ``scale``; where a side would be smaller
    than the tile, scaled up (the aspect kept) until the shorter side is the tile's ``size``."""
    h, w = native_hw
    factor = max(scale, size / min(h, w))
    hw = (max(size, round(h * factor)), max(size, round(w * factor)))
    if max(hw) > TILE_CANVAS:
        raise ReconadError(
            f"--tile: the canvas {hw[1]}x{hw[0]} has a side above {TILE_CANVAS} px: lower --scale"
        )
    return hw


@dataclass(frozen=True)
class TileGrid:
    """The tiles of a canvas ``(H, W)``: ``size`` × ``size`` pixels each, overlapping by ``overlap``."""

    canvas: tuple[int, int]
    size: int
    overlap: int

    @property
    def rows(self) -> list[int]:
        return tile_starts(self.canvas[0], self.size, self.overlap)

    @property
    def cols(self) -> list[int]:
        return tile_starts(self.canvas[1], self.size, self.overlap)

    @property
    def positions(self) -> list[tuple[int, int]]:
        """Each tile's top-left ``(y, x)``, row by row: the order tiles take in every tensor."""
        return [(y, x) for y in self.rows for x in self.cols]

    def __len__(self) -> int:
        return len(self.rows) * len(self.cols)

    def cover(self) -> np.ndarray:
        """``[H, W]``: how many tiles cover each pixel (at least one)."""
        count = np.zeros(self.canvas, dtype=np.float32)
        for y, x in self.positions:
            count[y : y + self.size, x : x + self.size] += 1
        return count

    def cut(self, images: Tensor) -> Tensor:
        """``[N, H, W, …]`` canvases → ``[N·T, S, S, …]`` tiles, each image's in :attr:`positions` order."""
        s = self.size
        tiles = [images[:, y : y + s, x : x + s] for y, x in self.positions]
        return torch.stack(tiles, dim=1).flatten(0, 1)

    def stitch(self, tiles: Tensor) -> Tensor:
        """``[N·T, S, S]`` tile maps → ``[N, H, W]``: each tile padded into place, summed, divided by
        :meth:`cover` (the overlaps averaged; a map cut by :meth:`cut` comes back exactly)."""
        (h, w), s, t = self.canvas, self.size, len(self)
        per_image = tiles.reshape(-1, t, s, s)
        total = sum(
            F.pad(per_image[:, i], (x, w - s - x, y, h - s - y)) for i, (y, x) in enumerate(self.positions)
        )
        return total / torch.from_numpy(self.cover()).to(tiles.device, tiles.dtype)

    @classmethod
    def of_features(cls, config: dict[str, Any]) -> TileGrid | None:
        """The grid of a run's features config (its canvas: ``image_size``); None for an untiled run."""
        tile = config.get("tile")
        if tile is None:
            return None
        canvas = check_image_size(config["image_size"], "image_size", TILE_CANVAS)
        return cls(canvas, int(tile["size"]), int(tile["overlap"]))
