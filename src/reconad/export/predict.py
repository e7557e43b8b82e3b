"""Score images with an exported reconad model; needs only onnxruntime, numpy and Pillow.

    python predict.py IMAGE_OR_DIR ... --out OUT [--category C]

writes ``OUT/scores.csv`` (path, score, is_anomalous, overlay, error) and a heat-map overlay per image, as
``reconad predict`` does. Images are decoded (by the run's decoding in the manifest: the levels of >8-bit
data, the pixel limit; 16-bit colour files need imagecodecs) and resized exactly as the library does
(``image_runtime.py``, beside this script); the graph does the rest, from pixels to maps and scores. A graph
whose SHA-256 differs from ``manifest.json`` is refused; an unreadable image is skipped, named and given a row
with its error (exit code 1).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

# Images are decoded, resized and encoded a thread per core (:func:`on_cores`): numpy's BLAS threads on top of
# them (the resize's small products) fight over the same cores, 20× slower under load; one thread each.
for _blas in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_blas, "1")

import numpy as np  # noqa: E402  (after the BLAS thread count)
from PIL import Image  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from image_runtime import (  # noqa: E402  (this script's own folder first)
    AspectWatch,
    Decoding,
    ImageFileError,
    collect_images,
    heatmap_overlay,
    overlay_name,
    read_image,
    resize_image,
    show_path,
    size_hw,
)

FORMAT_VERSION = 1  # the newest manifest format this script reads


class UsageError(Exception):
    """A mistake to report in one line with exit code 2."""


def load_manifest(folder: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError) as err:
        raise UsageError(f"{show_path(folder)} holds no readable manifest.json ({err})") from None
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise UsageError(f"manifest format {manifest['format_version']} is newer than this script reads")
    return manifest


def check_graph(folder: Path, manifest: dict[str, Any], graph: str) -> Path:
    """The graph's path, once its SHA-256 matches the manifest's."""
    path = folder / graph
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError as err:
        raise UsageError(f"cannot read graph {show_path(path)}: {err.strerror or err}") from None
    if digest.hexdigest() != manifest["graphs"][graph]["sha256"]:
        raise UsageError(f"graph {show_path(path)} does not match its SHA-256 in manifest.json: refusing it")
    return path


def choose_category(manifest: dict[str, Any], category: str | None) -> str:
    names = list(manifest["categories"])
    if category is None:
        if len(names) > 1:
            raise UsageError(f"the export has several categories ({', '.join(names)}): pass --category")
        return names[0]
    if category not in names:
        raise UsageError(f"the export has no category {category!r} (it has {', '.join(names)})")
    return category


def bilinear_resize_map(amap: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """A float map resized to ``hw`` with bilinear interpolation (``align_corners=False``, no antialias)."""
    out = amap
    for axis, n_out in enumerate(hw):
        n_in = out.shape[axis]
        if n_in == n_out:
            continue
        src = np.maximum((np.arange(n_out, dtype=np.float32) + 0.5) * np.float32(n_in / n_out) - 0.5, 0)
        i0 = src.astype(np.int64)
        i1 = np.minimum(i0 + 1, n_in - 1)
        shape = [1, 1]
        shape[axis] = n_out
        frac = (src - i0).reshape(shape)
        out = np.take(out, i0, axis=axis) * (1 - frac) + np.take(out, i1, axis=axis) * frac
    return out


def overlay_png(image: np.ndarray, amap: np.ndarray, threshold: float, normal_level: float) -> bytes:
    """The heat-map overlay of ``image`` as PNG bytes, its map resized to the image first."""
    full = bilinear_resize_map(amap, image.shape[:2])
    png = io.BytesIO()
    Image.fromarray(heatmap_overlay(image, full, threshold, normal_level)).save(png, "PNG", compress_level=1)
    return png.getvalue()


def write_atomic(path: Path, data: bytes) -> None:
    """``data`` appears at ``path`` only complete (a temporary file beside it, then a rename), with the
    permissions the umask gives a new file (``mkstemp`` makes it 0600)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def on_cores(fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
    """``[fn(x) for x in items]`` on a thread per core (decoding and encoding free the GIL)."""
    with ThreadPoolExecutor(max_workers=max(1, min(len(items), os.cpu_count() or 1))) as pool:
        return list(pool.map(fn, items))


def predict(
    folder: Path, inputs: Sequence[Path], out: Path, category: str | None, batch_size: int
) -> tuple[int, list[str]]:
    """Score every image; returns (images scored, messages of the images skipped)."""
    import onnxruntime as ort

    manifest = load_manifest(folder)
    category = choose_category(manifest, category)
    cat = manifest["categories"][category]
    graph = check_graph(folder, manifest, cat["graph"])
    if out.exists() and not out.is_dir():
        raise UsageError(f"{show_path(out)} exists and is not a folder")
    paths = collect_images(inputs)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # decoding shares the cores
    session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    size, threshold, normal = size_hw(manifest["image_size"]), cat["threshold"], cat["normal_level"]
    decoding = Decoding.of_features(manifest["features"])  # as the run decodes: >8-bit levels, pixel limit
    aspect = AspectWatch(size, lambda note: print(f"note: {note}", file=sys.stderr))
    out.mkdir(parents=True, exist_ok=True)

    def load(path: Path) -> tuple[np.ndarray, np.ndarray] | str:
        try:
            image = read_image(path, decoding)
        except ImageFileError as err:
            return str(err)
        return image, resize_image(image, size)

    rows: list[tuple[str, str, str, str, str]] = []
    skipped: list[str] = []
    taken: set[str] = set()
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        loaded = on_cores(load, chunk)
        good = [x for x in loaded if not isinstance(x, str)]
        for path, x in zip(chunk, loaded):
            if not isinstance(x, str):
                aspect(show_path(path), x[0].shape[:2])
        results: Any = iter(())
        if good:
            maps, scores = session.run(None, {"images": np.stack([small for _, small in good])})
            pairs = [(image, amap) for (image, _), amap in zip(good, maps)]
            pngs = on_cores(lambda pair: overlay_png(*pair, threshold, normal), pairs)
            results = zip(scores, pngs)
        for path, x in zip(chunk, loaded):  # a row per image in input order; an unreadable one says why
            if isinstance(x, str):
                skipped.append(x)
                rows.append((str(path), "", "", "", x))
                continue
            score, png = next(results)
            name = overlay_name(path, taken)
            write_atomic(out / name, png)
            rows.append((str(path), f"{float(score):.6g}", str(int(score > threshold)), name, ""))
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["path", "score", "is_anomalous", "overlay", "error"])
    writer.writerows(rows)
    write_atomic(out / "scores.csv", text.getvalue().encode("utf-8", "surrogateescape"))
    return len(rows) - len(skipped), skipped


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="+", type=Path, help="images or folders of images")
    parser.add_argument("--out", "-o", type=Path, required=True, help="folder for overlays and scores.csv")
    parser.add_argument("--category", help="which category's graph (needed if the export has several)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per graph run")
    args = parser.parse_args(argv)
    try:
        n, skipped = predict(HERE, args.inputs, args.out, args.category, max(1, args.batch_size))
    except (UsageError, ImageFileError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"scored {n} images → {show_path(args.out / 'scores.csv')}")
    for message in skipped:
        print(f"skipped {message}", file=sys.stderr)
    if skipped:
        print(f"{len(skipped)} of {n + len(skipped)} images could not be read", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
