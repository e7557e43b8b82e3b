"""The options of a fit, declared once: their defaults (the CLI shows these), checks and meaning.

``reconad fit``, ``reconad bench`` and ``reconad demo`` build one :class:`FitOptions` from their flags and
pass it on by name; the feature extractor (``FeatureExtractor.from_options``), the feature cache and
:func:`reconad.pipeline.fit` read what they need from it. Torch-free, so the CLI can show its help without
loading torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from reconad.errors import ReconadError
from reconad.image_runtime import BIT_DEPTHS, MAX_PIXELS, Decoding, size_hw
from reconad.operating import DEFAULT_FALSE_REJECT, check_rate
from reconad.params import MAX_SEED, check_value

#: Image sizes features are computed at (inclusive): below, a 16-stride level is a 2×2 grid; above, the
#: features of a few hundred images (40 MB each at 2048 px, default levels) no longer fit in memory.
IMAGE_SIZES = (32, 2048)
#: The longest side of a tiled run's canvas (``--tile``): its features grow with the tiles, not the backbone's
#: input, which stays the tile.
TILE_CANVAS = 16384


def check_image_size(
    size: int | str | Sequence[int], what: str = "image_size", high: int = IMAGE_SIZES[1]
) -> tuple[int, int]:
    """``(height, width)`` of ``size``: an int ``N`` (``N×N``), the text ``"N"`` or ``"WxH"`` (as the flag
    and run.json spell it, :func:`~reconad.image_runtime.size_hw`) or an ``(h, w)`` pair; each side an
    integer from ``IMAGE_SIZES[0]`` to ``high`` (a tiled canvas: :data:`TILE_CANVAS`); a one-line error
    naming ``what`` otherwise."""
    if isinstance(size, str):
        try:
            size = size_hw(size)
        except ValueError as err:
            raise ReconadError(f"{what}: {err}") from None
    if isinstance(size, int) or not isinstance(size, Sequence) or len(size) != 2:
        side = check_value(what, size, int, low=IMAGE_SIZES[0], high=high)
        return side, side
    h, w = (check_value(what, s, int, low=IMAGE_SIZES[0], high=high) for s in size)
    return h, w


def aspect_size(longest: int, aspect: float, stride: int, what: str = "--keep-aspect") -> tuple[int, int]:
    """``(height, width)`` of ``--image-size N --keep-aspect``: the longer side ``longest``, the other from
    ``aspect`` (width / height) rounded to a multiple of ``stride`` (the coarsest level's, at least one)."""
    short = max(stride, round(longest / max(aspect, 1 / aspect) / stride) * stride)
    hw = (short, longest) if aspect >= 1 else (longest, short)
    if short < IMAGE_SIZES[0]:
        raise ReconadError(
            f"{what}: the training images' aspect {aspect:.3g} gives {hw[1]}x{hw[0]}, a side below "
            f"{IMAGE_SIZES[0]} px: raise --image-size or give --image-size WxH"
        )
    return hw


def check_layers(layers: tuple[int, ...], what: str = "layers") -> tuple[int, ...]:
    """``layers`` if they are backbone levels >= 0 in increasing order (the first is the finest grid, the one
    the others are upsampled to); a one-line error naming ``what`` otherwise."""
    layers = tuple(check_value(what, list(layers), tuple[int, ...], low=0))
    if list(layers) != sorted(set(layers)):
        raise ReconadError(f"{what} must be backbone levels in increasing order, e.g. 2,3; got {layers}")
    return layers


def parse_layers(text: str, what: str = "--layers") -> tuple[int, ...]:
    """``"2,3"`` → ``(2, 3)``, checked (:func:`check_layers`)."""
    try:
        values = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise ReconadError(f"{what} {text!r}: expected comma-separated integers, e.g. 2,3") from None
    return check_layers(values, what)


def check_holdout(fraction: float, what: str = "holdout") -> float:
    """The fraction of good training images held back to set the threshold: in (0, 1)."""
    return check_value(what, fraction, float, low=0, high=1, low_inclusive=False, high_inclusive=False)


def check_bit_depth(bits: int | None, what: str = "bit_depth") -> int | None:
    """None (measure the range on the good training images) or one of :data:`BIT_DEPTHS`."""
    if bits is not None and bits not in BIT_DEPTHS:
        raise ReconadError(f"{what} must be one of {', '.join(map(str, BIT_DEPTHS))}, got {bits!r}")
    return bits


def check_seed(seed: int, what: str = "seed") -> int:
    """A seed: an integer in [0, 2³¹ − 1]."""
    return check_value(what, seed, int, low=0, high=MAX_SEED)


def check_memory_budget(gigabytes: float, what: str = "memory_budget") -> float:
    """The features a per-category fit holds in memory, in GB: above 0."""
    return check_value(what, gigabytes, float, low=0, low_inclusive=False)


@dataclass(frozen=True)
class FitOptions:
    """How a fit is run, besides the model and its hyper-parameters: the features (backbone, its weights,
    image size, levels, device), how image files are decoded (the bit depth of >8-bit data, or None: its
    range measured on the good training images; the pixel limit), where they are cached, the good images
    held back from a unified model (fraction, seed), the threshold (the false-reject rate it targets),
    whether a per-category model keeps one bank for every category (``unified``), and the memory budget:
    the GB of features a per-category fit holds at once (more are spooled to a temporary file and read in
    chunks; set it with ``--memory-budget``, the spool's folder with ``TMPDIR``). Checked on construction;
    errors name the command-line flag."""

    backbone: str = "tf_efficientnet_lite0"
    weights: Path | None = None
    image_size: tuple[int, int] = (256, 256)  # (height, width); given as N, "N", "WxH" or (h, w)
    keep_aspect: bool = False
    layers: tuple[int, ...] = (2, 3)
    holdout: float = 0.1
    seed: int = 0
    false_reject: float = DEFAULT_FALSE_REJECT
    cache_dir: Path | None = None
    no_cache: bool = False
    device: str = "cpu"
    unified: bool = False
    bit_depth: int | None = None
    max_pixels: int = MAX_PIXELS
    memory_budget: float = 4.0
    tile: int | None = None  # S: tiles of S × S px at native resolution (times ``scale``); None: whole images
    tile_overlap: int | None = None  # P: pixels adjacent tiles share; None: S // 8
    scale: float = 1.0  # F: the canvas is the good images' native size times F

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_size", check_image_size(self.image_size, "--image-size"))
        if self.keep_aspect and self.image_size[0] != self.image_size[1]:
            raise ReconadError(
                "--keep-aspect takes --image-size N (the longer side; the other follows the training "
                f"images), not {self.image_size[1]}x{self.image_size[0]}"
            )
        object.__setattr__(self, "layers", check_layers(tuple(self.layers), "--layers"))
        check_holdout(self.holdout, "--holdout")
        check_rate(self.false_reject, "--false-reject")
        check_seed(self.seed, "--seed")
        check_bit_depth(self.bit_depth, "--bit-depth")
        check_value("--max-pixels", self.max_pixels, int, low=1)
        check_memory_budget(self.memory_budget, "--memory-budget")
        self._check_tiles()

    def _check_tiles(self) -> None:
        """``--tile`` within :data:`IMAGE_SIZES`, ``--tile-overlap`` below half of it (default ``S // 8``),
        ``--scale`` in (0, 8]; neither of the last two nor ``--keep-aspect`` without tiles or beside them."""
        check_value("--scale", self.scale, float, low=0, high=8, low_inclusive=False)
        if self.tile is None:
            if self.tile_overlap is not None or self.scale != 1.0:
                raise ReconadError("--tile-overlap and --scale go with --tile S")
            return
        check_value("--tile", self.tile, int, low=IMAGE_SIZES[0], high=IMAGE_SIZES[1])
        if self.keep_aspect:
            raise ReconadError("--tile works at the images' own aspect: leave out --keep-aspect")
        overlap = self.tile // 8 if self.tile_overlap is None else self.tile_overlap
        check_value("--tile-overlap", overlap, int, low=0, high=self.tile // 2, high_inclusive=False)
        object.__setattr__(self, "tile_overlap", overlap)

    def tiling(self) -> dict[str, Any] | None:
        """The features config's ``tile`` (run.json) of ``--tile``, ``--tile-overlap``, ``--scale``; None
        without tiles."""
        if self.tile is None:
            return None
        return {"size": self.tile, "overlap": self.tile_overlap, "scale": self.scale}

    def decoding(self) -> Decoding:
        """How image files are decoded: ``--bit-depth``'s levels (none given: the default, until the fit
        measures them) and ``--max-pixels``."""
        if self.bit_depth is None:
            return Decoding(max_pixels=self.max_pixels)
        return Decoding.of_bit_depth(self.bit_depth, self.max_pixels)

    @classmethod
    def from_flags(cls, flags: dict[str, Any]) -> FitOptions:
        """The options of a command's flags (its ``locals()``: each field by its name, ``layers`` as the
        text ``--layers`` takes, ``image_size`` as ``--image-size``'s ``N`` or ``WxH``), checked."""
        given = {f.name: flags[f.name] for f in fields(cls) if f.name in flags}
        return cls(**{**given, "layers": parse_layers(flags["layers"])})

    def sized(self, hw: tuple[int, int]) -> FitOptions:
        """The same options at the image size ``(h, w)`` that ``--keep-aspect`` settled on."""
        return replace(self, image_size=hw, keep_aspect=False)

    def on(self, device: str) -> FitOptions:
        """The same options on another device (a torchrun process's own GPU)."""
        return self if device == self.device else replace(self, device=device)


#: The defaults, for the CLI's option declarations.
DEFAULTS = FitOptions()
