"""An exported model's graph body: its head (``model.export_head()``: features ``[N, C, h, w]`` to patch
scores ``[N, h, w]`` or level maps, as the fitted model's ``predict``, with operations ONNX has) and the
library's scoring on top (:class:`MapsAndScores`: resizing, Gaussian blur, image score).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from reconad.features.tiles import TileGrid
from reconad.scoring import image_scores, map_operator, tiled_maps


class MapsAndScores(nn.Module):
    """Patch scores (or level maps) → anomaly maps ``[N, H, W]`` and image scores ``[N]``, as
    :func:`reconad.scoring.anomaly_maps` computes them: each map's resize and the Gaussian blur as one matrix
    per axis (:func:`~reconad.scoring.map_operator`), averaged over the maps, then the image score. ``grids``:
    the ``(h, w)`` of each map the head returns (one for patch scores); ``image_size``: ``(H, W)``, or an
    int for a square; ``align_corners``: the model's."""

    def __init__(
        self,
        head: nn.Module,
        grids: list[tuple[int, int]],
        image_size: int | tuple[int, int],
        scoring: dict[str, Any],
        align_corners: bool = False,
    ):
        super().__init__()
        self.head = head
        self.reduce = scoring["reduce"]
        sigma = float(scoring["sigma"])
        self.levels = len(grids)
        out_h, out_w = (image_size, image_size) if isinstance(image_size, int) else image_size
        for i, (h, w) in enumerate(grids):
            cols = map_operator(out_w, w, sigma, align_corners)
            self.register_buffer(f"rows{i}", map_operator(out_h, h, sigma, align_corners))
            self.register_buffer(f"cols_t{i}", cols.T.contiguous())

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        out = self.head(features)
        levels = [out] if isinstance(out, Tensor) else out
        each = [getattr(self, f"rows{i}") @ x @ getattr(self, f"cols_t{i}") for i, x in enumerate(levels)]
        maps = each[0] if self.levels == 1 else torch.stack(each).mean(dim=0)
        return maps, image_scores(maps, self.reduce)


class TiledMapsAndScores(nn.Module):
    """A tiled run's patch scores ``[N, T·h, w]`` → anomaly maps ``[N, H, W]`` of its canvas and image scores
    ``[N]``, as :func:`reconad.scoring.tiled_maps` computes them (the same code, traced)."""

    def __init__(
        self, head: nn.Module, tiles: TileGrid, scoring: dict[str, Any], align_corners: bool
    ) -> None:
        super().__init__()
        self.head, self.tiles, self.align_corners = head, tiles, align_corners
        self.sigma, self.reduce = float(scoring["sigma"]), scoring["reduce"]

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        maps = tiled_maps(self.head(features), self.tiles, self.sigma, self.align_corners)
        return maps, image_scores(maps, self.reduce)


def maps_and_scores(
    model: Any,
    grid: tuple[int, int],
    image_size: int | tuple[int, int],
    scoring: dict[str, Any],
    tiles: TileGrid | None = None,
) -> nn.Module:
    """The fitted ``model``'s head (its ``export_head()``) with the library's maps and image scores on top;
    ``grid``: the feature grid ``(h, w)``; ``tiles``: a tiled run's grid (its maps stitched on the canvas)."""
    if tiles is not None:
        return TiledMapsAndScores(model.export_head(), tiles, scoring, model.align_corners)
    grids = [tuple(hw) for hw in model.level_hw_] if getattr(model, "unified", False) else [grid]
    return MapsAndScores(model.export_head(), grids, image_size, scoring, model.align_corners)
