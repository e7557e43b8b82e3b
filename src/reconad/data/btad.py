"""BTAD (beanTech Anomaly Detection): MVTec AD's layout with ``ok`` for the good folders and one defect,
``ko`` — ``<cat>/train/ok``, ``<cat>/test/ok``, ``<cat>/test/ko``, ``<cat>/ground_truth/ko/<stem>.<ext>``
(categories ``01``, ``02``, ``03``; images and masks BMP or PNG)."""

from __future__ import annotations

from pathlib import Path

from reconad.data import mvtec
from reconad.data.sample import CategoryData


def load(root: Path, seed: int = 0) -> list[CategoryData]:
    """Every category under ``root``, or ``root`` itself if it is one category. ``seed`` is unused."""
    return mvtec.load(root, seed, good="ok", layout="BTAD")
