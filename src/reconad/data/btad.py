"""BTAD (beanTech Anomaly Detection) layout: ``<cat>/train/ok``, ``<cat>/test/ok``, ``<cat>/test/ko`` and
``<cat>/ground_truth/ko/<stem>.<ext>`` (categories ``01``, ``02``, ``03``; images and masks BMP or PNG)."""

from __future__ import annotations

from pathlib import Path

from reconad.data.imageio import IMAGE_SUFFIXES, list_images, scan_images, show_path, subfolders
from reconad.data.sample import CategoryData, Sample
from reconad.errors import ReconadError


def _is_category(folder: Path) -> bool:
    return (folder / "train" / "ok").is_dir()


def _mask_for(gt_dir: Path, stem: str) -> Path | None:
    for suffix in sorted(IMAGE_SUFFIXES):
        if (gt_dir / f"{stem}{suffix}").is_file():
            return gt_dir / f"{stem}{suffix}"
    return None


def load_category(folder: Path) -> CategoryData:
    """One BTAD category folder; a defective image without a mask gets ``mask_path=None``."""
    name = folder.resolve().name
    train = [Sample(p, 0, name) for p in list_images(folder / "train" / "ok")]
    test: list[Sample] = [Sample(p, 0, name) for p in scan_images(folder / "test" / "ok")]
    for p in scan_images(folder / "test" / "ko"):
        test.append(Sample(p, 1, name, "ko", _mask_for(folder / "ground_truth" / "ko", p.stem)))
    if not test:
        raise ReconadError(f"no test images in {show_path(folder / 'test')} (expected ok/ and ko/)")
    return CategoryData(name, train, test)


def load(root: Path, seed: int = 0) -> list[CategoryData]:
    """Every category under ``root`` (the dataset root), or ``root`` itself if it is one category folder.
    ``seed`` is unused: BTAD has a fixed split."""
    root = Path(root)
    if _is_category(root):
        return [load_category(root)]
    cats = [load_category(f) for f in subfolders(root) if _is_category(f)]
    if not cats:
        raise ReconadError(
            f"no BTAD layout at {show_path(root)}: expected <category>/train/ok and <category>/test/ko"
        )
    return cats
