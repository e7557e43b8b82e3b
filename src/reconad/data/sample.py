"""The record every dataset adapter yields: where an image is, what it is, and where its mask is."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Sample:
    """One image on disk. Pixels are read lazily (see :mod:`reconad.data.imageio`)."""

    path: Path
    label: int  # 0 = good, 1 = anomalous
    category: str
    defect: str = "good"
    mask_path: Path | None = None  # None: no mask (good images, or a dataset without masks)


@dataclass
class CategoryData:
    """One product category of one data source: good training images and a labelled test split."""

    name: str
    train: list[Sample]
    test: list[Sample] = field(default_factory=list)
    source: str = ""  # the "FORMAT:PATH" it came from
