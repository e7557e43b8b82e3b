"""Does ``reconad fit`` scale with the line? Wall seconds and peak resident memory of ``reconad fit MODEL``
on N good images, and where the time goes.

    python benchmarks/fit_scale.py --images ../shared/data/mvtec_ad/bottle/train/good --n 500 2000 \
        [--models sgfr patchcore] [--work /tmp/fit_scale] [--size 0] [--profile] [-- EXTRA FIT FLAGS]

The N images are the source images repeated in turn, each repeat a different variant: as is, flipped left
to right, top to bottom, both, then seeded crops of 90 % of each side (``--size S`` also shrinks them to S
px on the long side first, a faster decode). They are written once under ``--work`` (``pool-SIZE``; larger
N reuse the smaller N's images) and linked into one ``folder:`` data set per N (``nN/good/``; the folder
format holds a seeded share out for testing, so the fit sees a little fewer); ``--work`` is deleted at the
end unless ``--keep``. Each fit runs in its own subprocess (``--no-cache``); its peak RSS is the kernel's
``ru_maxrss`` for that process (``os.wait4``). ``--profile`` also runs the
fit in this process under cProfile and prints the cumulative seconds of each stage: decode, resize,
backbone, feature cache, spool, model fit and the good images' out-of-sample scores.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from reconad.data.imageio import scan_images

#: Stage → the functions whose cumulative time it is (module path fragment, function name).
STAGES = {
    "decode (on its threads)": [("reconad/pipeline", "map_on_cores")],
    "resize": [("data/imageio", "resize_images")],
    "backbone": [("features/extractor", "__call__")],
    "feature cache": [("features/cache", name) for name in ("get", "put", "file_digest")],
    "spool": [("features/store", "append"), ("features/store", "__getitem__")],
    "model fit (all data)": [("reconad/pipeline", "fit_models")],
    "good images left out": [("reconad/pipeline", "left_out_scores")],
    "fit total": [("reconad/pipeline", "fit")],
}


def variant(image: Image.Image, k: int, rng: np.random.Generator) -> Image.Image:
    """The ``k``-th variant of an image: as is, three flips, then seeded 90 % crops."""
    if k < 4:
        out = image.transpose(Image.FLIP_LEFT_RIGHT) if k & 1 else image
        return out.transpose(Image.FLIP_TOP_BOTTOM) if k & 2 else out
    w, h = image.size
    cw, ch = int(0.9 * w), int(0.9 * h)
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return image.crop((x, y, x + cw, y + ch))


def make_images(source: Path, n: int, out: Path, size: int) -> Path:
    """``n`` good images under ``out/good``: links to the first ``n`` of a pool beside ``out`` (the source
    repeated, each repeat a variant; made once, so that larger ``n`` reuse the smaller ones' images)."""
    paths = scan_images(source)
    pool, good = out.parent / f"pool-{size}", out / "good"
    pool.mkdir(parents=True, exist_ok=True)
    good.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        made, link = pool / f"{i:06d}.png", good / f"{i:06d}.png"
        if not made.exists():
            image = Image.open(paths[i % len(paths)]).convert("RGB")
            if size:
                image.thumbnail((size, size))
            rng = np.random.default_rng(i)  # each image's crop seeded by its number
            variant(image, i // len(paths), rng).save(made, compress_level=1)
        if not link.exists():
            link.symlink_to(made)
    return out


def measured(cmd: list[str], stdout: Path | None = None) -> tuple[float, int]:
    """Run ``cmd`` (its stdout into the file ``stdout`` if given); its wall seconds and peak RSS in KiB (the
    kernel's ``ru_maxrss`` for that process, ``os.wait4``). Exits with the command line if it fails."""
    with open(stdout or os.devnull, "w") as sink:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=sink if stdout else None)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"failed ({status}): {' '.join(cmd)}")
    return seconds, usage.ru_maxrss


def timed_fit(model: str, data: str, run: Path, extra: list[str]) -> dict[str, float]:
    """Wall seconds and peak RSS (GB) of one ``reconad fit`` subprocess on ``data`` (``FORMAT:PATH``)."""
    cmd = [sys.executable, "-m", "reconad", "--quiet", "fit", model, "--data", data]
    seconds, peak_kib = measured([*cmd, "--out", str(run), "--no-cache", "--force", *extra])
    config = json.loads((run / "run.json").read_text())
    return {
        "seconds": round(seconds, 1),
        "peak_rss_gb": round(peak_kib / 1e6, 2),
        "peak_rss_bytes": peak_kib * 1024,
        "feature_seconds": round(config["feature_seconds"], 1),
        "model_fit_seconds": round(config["model_fit_seconds"], 1),
    }


def profile_fit(model: str, data: Path, run: Path, extra: list[str]) -> dict[str, float]:
    """Cumulative seconds per stage (:data:`STAGES`) of one fit in this process, under cProfile."""
    from reconad.cli import app

    profiler = cProfile.Profile()
    args = ["--quiet", "fit", model, "--data", f"folder:{data}", "--out", str(run), "--no-cache", "--force"]
    profiler.runcall(app, [*args, *extra], standalone_mode=False)
    stats = pstats.Stats(profiler).stats  # (file, line, name) → (calls, ncalls, tottime, cumtime, callers)
    stages = {}
    for stage, wanted in STAGES.items():
        stages[stage] = round(
            sum(
                entry[3]
                for (file, _, name), entry in stats.items()
                if any(part in file.replace(os.sep, "/") and name == fn for part, fn in wanted)
            ),
            1,
        )
    return stages


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--images", type=Path, required=True, help="a folder of good images")
    parser.add_argument("--n", type=int, nargs="+", default=[500, 2000])
    parser.add_argument("--models", nargs="+", default=["sgfr", "patchcore"])
    parser.add_argument("--work", type=Path, default=None, help="where the images go (default: a temp dir)")
    parser.add_argument("--size", type=int, default=0, help="shrink the images to this long side first")
    parser.add_argument("--profile", action="store_true", help="also profile one in-process fit per N")
    parser.add_argument("--keep", action="store_true", help="keep --work")
    args, extra = parser.parse_known_args()
    extra = [x for x in extra if x != "--"]
    work = args.work or Path(tempfile.mkdtemp(prefix="fit_scale-"))
    try:
        for n in args.n:
            data = make_images(args.images, n, work / f"n{n}", args.size)
            for model in args.models:
                row = {
                    "n_images": n,
                    "model": model,
                    **timed_fit(model, f"folder:{data}", work / "run", extra),
                }
                if args.profile:
                    row["stages_s"] = profile_fit(model, data, work / "run", extra)
                print(json.dumps(row), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
