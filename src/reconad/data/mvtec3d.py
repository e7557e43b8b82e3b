"""MVTec 3D-AD layout, RGB only: ``<cat>/{train,validation,test}/<defect>/rgb/NNN.png``, masks in ``gt/``.

Training uses ``train/good`` only (the dataset's protocol); ``validation/good`` is left out so that callers
can treat it as held-back good images if they wish. Good test images get ``mask_path=None`` (their gt is
all zero anyway).
"""

from __future__ import annotations

from pathlib import Path

from reconad.data.imageio import list_images, scan_images, show_path, subfolders
from reconad.data.sample import CategoryData, Sample
from reconad.errors import ReconadError


def _is_category(folder: Path) -> bool:
    return (folder / "train" / "good" / "rgb").is_dir()


def load_category(folder: Path) -> CategoryData:
    """One MVTec 3D-AD category folder (RGB images and their masks)."""
    name = folder.resolve().name
    train = [Sample(p, 0, name) for p in list_images(folder / "train" / "good" / "rgb")]
    if not (folder / "test").is_dir():
        raise ReconadError(f"MVTec 3D-AD category {show_path(folder)} has no test/ folder")
    test: list[Sample] = []
    for defect_dir in subfolders(folder / "test"):
        defect = defect_dir.name
        for p in scan_images(defect_dir / "rgb") if (defect_dir / "rgb").is_dir() else []:
            if defect == "good":
                test.append(Sample(p, 0, name))
            else:
                mask = defect_dir / "gt" / p.name
                test.append(Sample(p, 1, name, defect, mask if mask.is_file() else None))
    if not test:
        raise ReconadError(
            f"no test images in {show_path(folder / 'test')} (expected test/<defect>/rgb/*.png)"
        )
    return CategoryData(name, train, test)


def load(root: Path, seed: int = 0) -> list[CategoryData]:
    """Every category under ``root``, or ``root`` itself if it is one category. ``seed`` is unused."""
    root = Path(root)
    if _is_category(root):
        return [load_category(root)]
    cats = [load_category(f) for f in subfolders(root) if _is_category(f)]
    if not cats:
        raise ReconadError(
            f"no MVTec 3D-AD layout at {show_path(root)}: expected <category>/train/good/rgb and "
            "<category>/test/<defect>/rgb"
        )
    return cats
