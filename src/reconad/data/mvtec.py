"""MVTec AD layout: ``<cat>/train/good``, ``<cat>/test/<defect>``,
``<cat>/ground_truth/<defect>/<stem>_mask.png``."""

from __future__ import annotations

from pathlib import Path

from reconad.data.imageio import list_images, scan_images, show_path, subfolders
from reconad.data.sample import CategoryData, Sample
from reconad.errors import ReconadError


def _is_category(folder: Path) -> bool:
    return (folder / "train" / "good").is_dir()


def _mask_for(gt_dir: Path, stem: str) -> Path | None:
    for name in (f"{stem}_mask.png", f"{stem}.png"):
        if (gt_dir / name).is_file():
            return gt_dir / name
    return None


def load_category(folder: Path) -> CategoryData:
    """One MVTec AD category folder; a defective image without a mask gets ``mask_path=None``."""
    name = folder.resolve().name
    train = [Sample(p, 0, name) for p in list_images(folder / "train" / "good")]
    if not (folder / "test").is_dir():
        raise ReconadError(f"MVTec AD category {show_path(folder)} has no test/ folder")
    test: list[Sample] = []
    for defect_dir in subfolders(folder / "test"):
        defect = defect_dir.name
        for p in scan_images(defect_dir):
            if defect == "good":
                test.append(Sample(p, 0, name))
            else:
                mask = _mask_for(folder / "ground_truth" / defect, p.stem)
                test.append(Sample(p, 1, name, defect, mask))
    if not test:
        raise ReconadError(f"no test images in {show_path(folder / 'test')}")
    return CategoryData(name, train, test)


def load(root: Path, seed: int = 0) -> list[CategoryData]:
    """Every category under ``root`` (the dataset root), or ``root`` itself if it is one category folder.
    ``seed`` is unused: MVTec AD has a fixed split."""
    root = Path(root)
    if _is_category(root):
        return [load_category(root)]
    cats = [load_category(f) for f in subfolders(root) if _is_category(f)]
    if not cats:
        raise ReconadError(
            f"no MVTec AD layout at {show_path(root)}: expected <category>/train/good and "
            "<category>/test/<defect>"
        )
    return cats
