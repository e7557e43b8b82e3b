"""Magnetic Tile Defects: ``MT_Free/Imgs/*.jpg`` and ``MT_<Defect>/Imgs/*.jpg``, each with a same-stem
``.png`` mask. No official split: a seeded 80 % of MT_Free trains; the other 20 % and every defective image
test."""

from __future__ import annotations

from pathlib import Path

from reconad.data.folder import split_good
from reconad.data.imageio import list_images, scan_images, show_path, subfolders
from reconad.data.sample import CategoryData, Sample
from reconad.errors import ReconadError

CATEGORY = "magnetic_tile"
_JPEG = (".jpg", ".jpeg")


def _find_root(root: Path) -> Path:
    if (root / "MT_Free" / "Imgs").is_dir():
        return root
    inner = [d for d in subfolders(root) if (d / "MT_Free" / "Imgs").is_dir()]  # the repo's own top folder
    if len(inner) == 1:
        return inner[0]
    raise ReconadError(f"no Magnetic Tile Defects layout at {show_path(root)}: expected MT_Free/Imgs/*.jpg")


def load(root: Path, seed: int = 0) -> list[CategoryData]:
    """The single category ``magnetic_tile``; defect = class folder name without ``MT_``, lower-cased."""
    root = _find_root(Path(root))
    train_paths, test_free = split_good(list_images(root / "MT_Free" / "Imgs", suffixes=_JPEG), 0.2, seed)
    train = [Sample(p, 0, CATEGORY) for p in train_paths]
    test = [Sample(p, 0, CATEGORY) for p in test_free]
    for d in subfolders(root):
        if not d.name.startswith("MT_") or d.name == "MT_Free":
            continue
        defect = d.name[3:].lower()
        for p in scan_images(d / "Imgs", suffixes=_JPEG) if (d / "Imgs").is_dir() else []:
            mask = p.with_suffix(".png")
            test.append(Sample(p, 1, CATEGORY, defect, mask if mask.is_file() else None))
    if len(test) == len(test_free):
        raise ReconadError(f"no defective images (MT_<Defect>/Imgs/*.jpg) in {show_path(root)}")
    return [CategoryData(CATEGORY, train, test)]
