"""MVTec AD layout: ``<cat>/train/good``, ``<cat>/test/<defect>``,
``<cat>/ground_truth/<defect>/<stem>_mask.png`` (or ``<stem>.<ext>``). Other data sets keep the same shape
under another name for the good folder (BTAD: ``ok``; see :mod:`reconad.data.btad`)."""

from __future__ import annotations

from pathlib import Path

from reconad.data.imageio import IMAGE_SUFFIXES, list_images, scan_images, show_path, subfolders
from reconad.data.sample import CategoryData, Sample
from reconad.errors import ReconadError


def _is_category(folder: Path, good: str) -> bool:
    return (folder / "train" / good).is_dir()


def _mask_for(gt_dir: Path, stem: str) -> Path | None:
    for name in (f"{stem}_mask.png", *(f"{stem}{suffix}" for suffix in sorted(IMAGE_SUFFIXES))):
        if (gt_dir / name).is_file():
            return gt_dir / name
    return None


def load_category(folder: Path, good: str = "good", layout: str = "MVTec AD") -> CategoryData:
    """One category folder (``good``: the name of its good-image folders); a defective image without a
    mask gets ``mask_path=None``."""
    name = folder.resolve().name
    train = [Sample(p, 0, name) for p in list_images(folder / "train" / good)]
    if not (folder / "test").is_dir():
        raise ReconadError(f"{layout} category {show_path(folder)} has no test/ folder")
    test: list[Sample] = []
    for defect_dir in subfolders(folder / "test"):
        defect = defect_dir.name
        for p in scan_images(defect_dir):
            if defect == good:
                test.append(Sample(p, 0, name))
            else:
                mask = _mask_for(folder / "ground_truth" / defect, p.stem)
                test.append(Sample(p, 1, name, defect, mask))
    if not test:
        raise ReconadError(f"no test images in {show_path(folder / 'test')}")
    return CategoryData(name, train, test)


def load(root: Path, seed: int = 0, good: str = "good", layout: str = "MVTec AD") -> list[CategoryData]:
    """Every category under ``root`` (the dataset root), or ``root`` itself if it is one category folder.
    ``seed`` is unused: the split is fixed."""
    root = Path(root)
    if _is_category(root, good):
        return [load_category(root, good, layout)]
    cats = [load_category(f, good, layout) for f in subfolders(root) if _is_category(f, good)]
    if not cats:
        raise ReconadError(
            f"no {layout} layout at {show_path(root)}: expected <category>/train/{good} and "
            "<category>/test/<defect>"
        )
    return cats
