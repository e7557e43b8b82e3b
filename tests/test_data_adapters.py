"""Dataset adapters on small generated trees: splits, labels, defects, masks, and clear layout errors."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reconad.data import btad, folder, mtd, mvtec, mvtec3d, visa
from reconad.errors import ReconadError


def _img(path: Path, value: int = 128, mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (8, 6), value if mode == "L" else (value, value, value)).save(path)
    return path


def _by_defect(samples) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in samples:
        out[s.defect] = out.get(s.defect, 0) + 1
    return out


# --- MVTec AD ---------------------------------------------------------------------------------------------


def _mvtec_category(
    root: Path,
    name: str = "bottle",
    good: str = "good",
    defect: str = "crack",
    suffix: str = ".png",
    mask_name: str = "{stem}_mask.png",
) -> Path:
    """MVTec AD's shape (BTAD's too, with ``good="ok"``): 5 train, 2 good test, 3 defective (2 masked)."""
    cat = root / name
    for i in range(5):
        _img(cat / "train" / good / f"{i:03d}{suffix}")
    for i in range(2):
        _img(cat / "test" / good / f"{i:03d}{suffix}")
    for i in range(3):
        _img(cat / "test" / defect / f"{i:03d}{suffix}")
        if i < 2:  # the third one has no mask
            _img(cat / "ground_truth" / defect / mask_name.format(stem=f"{i:03d}"), 255, "L")
    return cat


def test_mvtec_dataset_root_and_category(tmp_path):
    _mvtec_category(tmp_path, "bottle")
    _mvtec_category(tmp_path, "cable")
    (tmp_path / "license.txt").write_text("x")
    cats = mvtec.load(tmp_path)
    assert [c.name for c in cats] == ["bottle", "cable"]
    one = mvtec.load(tmp_path / "bottle")
    assert len(one) == 1 and one[0].name == "bottle"
    c = one[0]
    assert len(c.train) == 5 and all(s.label == 0 and s.mask_path is None for s in c.train)
    assert _by_defect(c.test) == {"good": 2, "crack": 3}
    bad = [s for s in c.test if s.label == 1]
    assert [s.mask_path.name if s.mask_path else None for s in bad] == ["000_mask.png", "001_mask.png", None]
    assert all(s.defect == "good" and s.mask_path is None for s in c.test if s.label == 0)


def test_mvtec_errors(tmp_path):
    with pytest.raises(ReconadError, match="no MVTec AD layout"):
        mvtec.load(tmp_path)
    (tmp_path / "c" / "train" / "good").mkdir(parents=True)
    with pytest.raises(ReconadError, match="no images .*good"):
        mvtec.load(tmp_path / "c")
    _img(tmp_path / "c" / "train" / "good" / "000.png")
    with pytest.raises(ReconadError, match="no test/ folder"):
        mvtec.load(tmp_path / "c")
    (tmp_path / "c" / "test" / "good").mkdir(parents=True)
    with pytest.raises(ReconadError, match="no test images"):
        mvtec.load(tmp_path / "c")


# --- MVTec 3D-AD ------------------------------------------------------------------------------------------


def test_mvtec3d(tmp_path):
    cat = tmp_path / "tire"
    for i in range(4):
        _img(cat / "train" / "good" / "rgb" / f"{i:03d}.png")
    _img(cat / "validation" / "good" / "rgb" / "000.png")
    _img(cat / "test" / "good" / "rgb" / "000.png")
    _img(cat / "test" / "good" / "gt" / "000.png", 0, "L")
    for i in range(2):
        _img(cat / "test" / "cut" / "rgb" / f"{i:03d}.png")
        _img(cat / "test" / "cut" / "gt" / f"{i:03d}.png", 255, "L")
    (cat / "test" / "cut" / "xyz").mkdir()
    for root in (tmp_path, cat):
        (c,) = mvtec3d.load(root)
        assert c.name == "tire" and len(c.train) == 4  # validation/good is not used for training
        assert _by_defect(c.test) == {"good": 1, "cut": 2}
        assert all(s.mask_path == s.path.parent.parent / "gt" / s.path.name for s in c.test if s.label)
    with pytest.raises(ReconadError, match="no MVTec 3D-AD layout"):
        mvtec3d.load(tmp_path / "tire" / "test")


# --- Magnetic Tile Defects --------------------------------------------------------------------------------


def _mtd_tree(root: Path, n_free: int = 20) -> None:
    for i in range(n_free):
        _img(root / "MT_Free" / "Imgs" / f"exp0_num_{i}.jpg", 100, "L")
        _img(root / "MT_Free" / "Imgs" / f"exp0_num_{i}.png", 0, "L")
    for cls, n in (("MT_Crack", 3), ("MT_Blowhole", 2)):
        for i in range(n):
            _img(root / cls / "Imgs" / f"exp1_num_{i}.jpg", 100, "L")
            _img(root / cls / "Imgs" / f"exp1_num_{i}.png", 255, "L")


def test_mtd_split(tmp_path):
    _mtd_tree(tmp_path)
    (c,) = mtd.load(tmp_path, seed=0)
    assert c.name == "magnetic_tile" and len(c.train) == 16
    assert _by_defect(c.test) == {"good": 4, "crack": 3, "blowhole": 2}
    assert all(p.path.suffix == ".jpg" for p in c.train + c.test)  # masks are never taken as images
    assert all(s.mask_path == s.path.with_suffix(".png") for s in c.test if s.label)
    train_paths = {s.path for s in c.train}
    assert train_paths.isdisjoint(s.path for s in c.test)
    assert train_paths == {s.path for s in mtd.load(tmp_path, seed=0)[0].train}  # deterministic
    assert train_paths != {s.path for s in mtd.load(tmp_path, seed=1)[0].train}


def test_mtd_nested_root_and_errors(tmp_path):
    _mtd_tree(tmp_path / "Magnetic-tile-defect-datasets.")
    assert len(mtd.load(tmp_path)[0].test) == 9
    with pytest.raises(ReconadError, match="no Magnetic Tile Defects layout"):
        mtd.load(tmp_path / "elsewhere")
    only_free = tmp_path / "free_only"
    _img(only_free / "MT_Free" / "Imgs" / "a.jpg")
    with pytest.raises(ReconadError, match="no defective images"):
        mtd.load(only_free)


# --- VisA -------------------------------------------------------------------------------------------------


def _visa_tree(root: Path, mask_value: int = 1) -> list[dict[str, str]]:
    rows = []
    for cat in ("candle", "pcb1"):
        base = root / cat / "Data"
        for i in range(6):
            rel = f"{cat}/Data/Images/Normal/{i:04d}.JPG"
            _img(root / rel)
            rows.append(
                {"object": cat, "split": "train" if i < 5 else "test", "label": "normal", "image": rel}
            )
        for i in range(2):
            rel = f"{cat}/Data/Images/Anomaly/{i:03d}.JPG"
            _img(root / rel)
            mrel = f"{cat}/Data/Masks/Anomaly/{i:03d}.png"
            _img(root / mrel, mask_value, "L")
            rows.append({"object": cat, "split": "test", "label": "anomaly", "image": rel, "mask": mrel})
        assert base.is_dir()
    return rows


def _write_csv(root: Path, rows: list[dict[str, str]], fields=("object", "split", "label", "image", "mask")):
    (root / "split_csv").mkdir(exist_ok=True)
    with open(root / "split_csv" / "1cls.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def test_visa_csv(tmp_path):
    _write_csv(tmp_path, _visa_tree(tmp_path))
    cats = visa.load(tmp_path)
    assert [c.name for c in cats] == ["candle", "pcb1"]
    for c in cats:
        assert len(c.train) == 5 and _by_defect(c.test) == {"good": 1, "anomaly": 2}
        bad = [s for s in c.test if s.label]
        assert all(s.mask_path is not None and s.mask_path.is_file() for s in bad)
    from reconad.data.imageio import read_mask

    assert read_mask(bad[0].mask_path, (6, 8)).all()  # a 0/1-coded mask reads as foreground


def test_visa_csv_errors(tmp_path):
    rows = _visa_tree(tmp_path)
    _write_csv(tmp_path, rows, fields=("object", "split", "image"))
    with pytest.raises(ReconadError, match="lacks column"):
        visa.load(tmp_path)
    _write_csv(
        tmp_path, rows + [{"object": "candle", "split": "train", "label": "normal", "image": "gone.JPG"}]
    )
    with pytest.raises(ReconadError, match=r"line \d+: file .*gone.JPG not found"):
        visa.load(tmp_path)
    _write_csv(
        tmp_path, rows + [{"object": "candle", "split": "val", "label": "normal", "image": rows[0]["image"]}]
    )
    with pytest.raises(ReconadError, match="expected split"):
        visa.load(tmp_path)


def test_visa_without_csv(tmp_path):
    _visa_tree(tmp_path, 255)
    cats = visa.load(tmp_path, seed=3)
    assert [c.name for c in cats] == ["candle", "pcb1"]
    assert all(len(c.train) == 5 and _by_defect(c.test) == {"good": 1, "anomaly": 2} for c in cats)
    (one,) = visa.load(tmp_path / "candle")
    assert one.name == "candle"
    with pytest.raises(ReconadError, match="no VisA layout"):
        visa.load(tmp_path / "candle" / "Data" / "Masks")


# --- BTAD -------------------------------------------------------------------------------------------------


def test_btad_dataset_root_and_category(tmp_path):
    # BTAD's own mixes of image / mask formats: 01 bmp / png, 02 png / png, 03 bmp / bmp
    _mvtec_category(tmp_path, "01", "ok", "ko", ".bmp", "{stem}.png")
    _mvtec_category(tmp_path, "03", "ok", "ko", ".bmp", "{stem}.bmp")
    cats = btad.load(tmp_path)
    assert [c.name for c in cats] == ["01", "03"]
    for c, mask_suffix in zip(cats, (".png", ".bmp"), strict=True):
        assert len(c.train) == 5 and all(s.label == 0 for s in c.train)
        assert _by_defect(c.test) == {"good": 2, "ko": 3}
        bad = [s for s in c.test if s.label == 1]
        masks = [s.mask_path.name if s.mask_path else None for s in bad]
        assert masks == [f"000{mask_suffix}", f"001{mask_suffix}", None]
    one = btad.load(tmp_path / "03")
    assert len(one) == 1 and one[0].name == "03"


def test_btad_errors(tmp_path):
    with pytest.raises(ReconadError, match="no BTAD layout"):
        btad.load(tmp_path)
    (tmp_path / "01" / "train" / "ok").mkdir(parents=True)
    with pytest.raises(ReconadError, match="no images .*ok"):
        btad.load(tmp_path)
    _img(tmp_path / "01" / "train" / "ok" / "0000.bmp")
    (tmp_path / "01" / "test" / "ok").mkdir(parents=True)
    (tmp_path / "01" / "test" / "ko").mkdir(parents=True)
    with pytest.raises(ReconadError, match="no test images"):
        btad.load(tmp_path / "01")


# --- plain folder -----------------------------------------------------------------------------------------


def test_folder(tmp_path):
    root = tmp_path / "widget"
    for i in range(10):
        _img(root / "good" / f"g{i}.png")
    _img(root / "defective" / "d0.png")
    _img(root / "defective" / "d1.png")
    _img(root / "defective" / "scratch" / "s0.png")
    _img(root / "masks" / "d0_mask.png", 255, "L")
    _img(root / "masks" / "scratch" / "s0.png", 255, "L")
    (c,) = folder.load(root, seed=0)
    assert c.name == "widget" and len(c.train) == 8
    assert _by_defect(c.test) == {"good": 2, "defective": 2, "scratch": 1}
    masks = {s.path.name: s.mask_path.relative_to(root).as_posix() if s.mask_path else None for s in c.test}
    assert masks["d0.png"] == "masks/d0_mask.png" and masks["d1.png"] is None
    assert masks["s0.png"] == "masks/scratch/s0.png"
    (c2,) = folder.load(root, seed=1)
    assert {s.path for s in c.train} != {s.path for s in c2.train}
    assert {s.path for s in c.train} == {s.path for s in folder.load(root, seed=0)[0].train}


def test_folder_errors(tmp_path):
    with pytest.raises(ReconadError, match="no good/ folder"):
        folder.load(tmp_path)
    (tmp_path / "good").mkdir()
    with pytest.raises(ReconadError, match="no images"):
        folder.load(tmp_path)  # an empty training folder
    _img(tmp_path / "good" / "only.png")
    (c,) = folder.load(tmp_path)
    assert len(c.train) == 1 and c.test == []  # one image: it trains


def test_split_good_fractions():
    paths = [Path(f"{i}.png") for i in range(952)]
    train, test = folder.split_good(paths, 0.2, seed=0)
    assert (len(train), len(test)) == (762, 190) and set(train).isdisjoint(test)
    assert train == sorted(train, key=lambda p: int(p.stem))  # input order kept
    with pytest.raises(ReconadError, match="test fraction"):
        folder.split_good(paths, 1.0, 0)


def test_mask_and_image_sizes_match_in_generated_trees(tmp_path):
    from reconad.data.imageio import load_resized

    _mtd_tree(tmp_path)
    (c,) = mtd.load(tmp_path)
    for s in c.test:
        img, mask = load_resized(s, 16)
        assert img.shape == (16, 16, 3)
        assert (mask is None) == (s.label == 0)
        if mask is not None:
            assert mask.all()
    assert np.asarray(Image.open(c.train[0].path)).ndim == 2  # grayscale on disk, RGB after load
