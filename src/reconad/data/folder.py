"""A plain folder: ``good/`` (required), optional ``defective/`` (images, or ``defective/<defect>/``
sub-folders) and optional ``masks/`` matched to defective images by file stem (``<stem>.*`` or
``<stem>_mask.*``, also mirrored as ``masks/<defect>/<stem>.*``). A seeded fraction of the good images is
held out for testing."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from reconad.data.imageio import list_images, scan_images, show_path, subfolders
from reconad.data.sample import CategoryData, Sample
from reconad.errors import ReconadError


def split_good(paths: list[Path], test_fraction: float, seed: int) -> tuple[list[Path], list[Path]]:
    """A seeded split ``(train, test)`` of ``paths`` with ``round(test_fraction * n)`` test items (at least
    one item always stays in train); both halves keep the input order."""
    if not 0.0 <= test_fraction < 1.0:
        raise ReconadError(f"test fraction must be in [0, 1), got {test_fraction}")
    n = len(paths)
    n_test = min(int(round(test_fraction * n)), max(n - 1, 0))
    test_idx = set(np.random.default_rng(seed).permutation(n)[:n_test].tolist())
    return [p for i, p in enumerate(paths) if i not in test_idx], [
        p for i, p in enumerate(paths) if i in test_idx
    ]


def _mask_index(masks_dir: Path) -> dict[tuple[str, str], Path]:
    """``(relative parent, stem)`` → mask path, with a trailing ``_mask`` removed from the stem."""
    index: dict[tuple[str, str], Path] = {}
    for p in scan_images(masks_dir) if masks_dir.is_dir() else []:
        stem = p.stem[: -len("_mask")] if p.stem.endswith("_mask") else p.stem
        index.setdefault((p.parent.relative_to(masks_dir).as_posix(), stem), p)
    return index


def load(root: Path, seed: int = 0, test_fraction: float = 0.2) -> list[CategoryData]:
    """One category named after ``root``: ``good/``, ``defective/`` and ``masks/`` (see the module doc)."""
    root = Path(root)
    if not (root / "good").is_dir():
        raise ReconadError(
            f"no good/ folder in {show_path(root)} (expected good/, optional defective/ and masks/)"
        )
    name = root.resolve().name
    train_paths, test_good = split_good(list_images(root / "good"), test_fraction, seed)
    train = [Sample(p, 0, name) for p in train_paths]
    test = [Sample(p, 0, name) for p in test_good]
    bad_dir = root / "defective"
    masks = _mask_index(root / "masks")
    groups = [("defective", scan_images(bad_dir, recursive=False))] if bad_dir.is_dir() else []
    groups += [(d.name, scan_images(d)) for d in subfolders(bad_dir)]
    for defect, paths in groups:
        for p in paths:
            rel = p.parent.relative_to(bad_dir).as_posix()
            mask = masks.get((rel, p.stem)) or masks.get((".", p.stem))
            test.append(Sample(p, 1, name, defect, mask))
    return [CategoryData(name, train, test)]
