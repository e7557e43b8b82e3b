"""VisA, native layout: ``split_csv/1cls.csv`` (columns object, split, label, image, mask; paths relative to
the root) with ``<cat>/Data/Images/{Normal,Anomaly}`` and ``<cat>/Data/Masks/Anomaly``.

Without the CSV, each ``<cat>/Data`` folder is read directly and a seeded 10 % of its normal images (the share
the 1cls split holds out) joins every anomalous image in the test split.
"""

from __future__ import annotations

import csv
from pathlib import Path

from reconad.data.folder import split_good
from reconad.data.imageio import list_images, scan_images, show_path, subfolders
from reconad.data.sample import CategoryData, Sample
from reconad.errors import ReconadError

SPLIT_CSV = Path("split_csv") / "1cls.csv"
_COLUMNS = {"object", "split", "label", "image", "mask"}
DEFECT = "anomaly"  # VisA's 1cls split has no defect types


def _existing(root: Path, rel: str, csv_path: Path, line: int) -> Path:
    path = root / rel.strip()
    if not path.is_file():
        raise ReconadError(f"{show_path(csv_path)} line {line}: file {show_path(path)} not found")
    return path


def _from_csv(root: Path) -> list[CategoryData]:
    csv_path = root / SPLIT_CSV
    cats: dict[str, CategoryData] = {}
    try:
        with open(csv_path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = _COLUMNS - set(reader.fieldnames or [])
            if missing:
                raise ReconadError(f"{show_path(csv_path)} lacks column(s) {', '.join(sorted(missing))}")
            for row in reader:
                line = reader.line_num
                name, split, label = row["object"].strip(), row["split"].strip(), row["label"].strip()
                if split not in ("train", "test") or label not in ("normal", "anomaly"):
                    raise ReconadError(
                        f"{show_path(csv_path)} line {line}: expected split train/test and label "
                        f"normal/anomaly, got {split!r}, {label!r}"
                    )
                image = _existing(root, row["image"], csv_path, line)
                cat = cats.setdefault(name, CategoryData(name, [], []))
                if label == "normal":
                    (cat.train if split == "train" else cat.test).append(Sample(image, 0, name))
                else:
                    if split == "train":
                        raise ReconadError(f"{show_path(csv_path)} line {line}: an anomalous training image")
                    mask = (
                        _existing(root, row["mask"], csv_path, line) if (row["mask"] or "").strip() else None
                    )
                    cat.test.append(Sample(image, 1, name, DEFECT, mask))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ReconadError(f"cannot read {show_path(csv_path)}: {e}") from None
    for cat in cats.values():
        if not cat.train:
            raise ReconadError(f"{show_path(csv_path)}: category {cat.name!r} has no training images")
    return [cats[k] for k in sorted(cats)]


def _from_folders(root: Path, seed: int) -> list[CategoryData]:
    cats = []
    for folder in [root] if (root / "Data").is_dir() else subfolders(root):
        images = folder / "Data" / "Images"
        if not (images / "Normal").is_dir():
            continue
        name = folder.resolve().name
        train_paths, test_good = split_good(list_images(images / "Normal"), 0.1, seed)
        test = [Sample(p, 0, name) for p in test_good]
        masks = folder / "Data" / "Masks" / "Anomaly"
        for p in scan_images(images / "Anomaly") if (images / "Anomaly").is_dir() else []:
            mask = masks / f"{p.stem}.png"
            test.append(Sample(p, 1, name, DEFECT, mask if mask.is_file() else None))
        cats.append(CategoryData(name, [Sample(p, 0, name) for p in train_paths], test))
    return cats


def load(root: Path, seed: int = 0) -> list[CategoryData]:
    """Every VisA category under ``root`` (or ``root`` itself if it holds ``Data/``); ``seed`` only matters
    without ``split_csv/1cls.csv``."""
    root = Path(root)
    cats = _from_csv(root) if (root / SPLIT_CSV).is_file() else _from_folders(root, seed)
    if not cats:
        raise ReconadError(
            f"no VisA layout at {show_path(root)}: expected split_csv/1cls.csv or "
            "<category>/Data/Images/Normal"
        )
    return cats
