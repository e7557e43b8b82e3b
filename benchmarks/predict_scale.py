"""Does ``reconad predict`` keep its memory flat over a large folder? Peak resident memory after 1,000 and
after 10,000 images of one ``reconad predict`` process, and its images/s.

    python benchmarks/predict_scale.py --images ../shared/data/mvtec_ad/bottle/test [--n 10000] \
        [--run RUN] [--work /tmp/predict_scale] [--model patchcore] [--resize 256]

The input folder holds ``--n`` symbolic links to the source images, repeated in turn (each link has its own
name, so every image gets its own overlay). Without ``--run`` a model is fitted first on the MVTec AD
category above the source folder (``reconad fit MODEL``). ``reconad predict`` then runs in a subprocess
while this script reads its ``VmRSS`` and ``VmHWM`` (peak) from ``/proc/PID/status`` five times a second
and counts the overlays written so far; it reports the peak when the count first reaches 1,000 (or
``--checkpoint``) and the last one seen before the process ends. Linux only. Overlays take about 1 MB each
for 900 px images: ``--work`` needs ~10 GB free for 10,000 (it is deleted at the end unless ``--keep``);
``--resize 256`` scores 256 px copies instead, several times faster on a small machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from reconad.data.imageio import scan_images


def status_kib(pid: int) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` of a live process, in KiB (empty once it has ended)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return {k: int(v) for k, v in re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", text, re.M)}


def count_overlays(folder: Path) -> int:
    """Overlays written so far (finished files only: the temporary ones start with a dot)."""
    try:
        with os.scandir(folder) as entries:
            return sum(1 for e in entries if e.name.endswith("_overlay.png") and not e.name.startswith("."))
    except OSError:
        return 0


def make_inputs(source: Path, folder: Path, n: int, resize: int | None) -> int:
    """``n`` symlinks to the images under ``source`` (or to copies resized to ``resize`` px, written beside
    ``folder``), repeated in turn; returns how many distinct images."""
    images = scan_images(source)
    if not images:
        sys.exit(f"no images under {source}")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    if resize:
        from PIL import Image

        small = folder.with_name("sources")
        small.mkdir(exist_ok=True)
        for i, path in enumerate(images):
            Image.open(path).convert("RGB").resize((resize, resize)).save(small / f"{i:04d}.png")
        images = sorted(small.iterdir())
    for i in range(n):
        src = images[i % len(images)].resolve()
        (folder / f"img_{i:05d}{src.suffix}").symlink_to(src)
    return len(images)


def reconad(*args: object) -> list[str]:
    return [sys.executable, "-m", "reconad", "--quiet", *map(str, args)]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=Path, required=True, help="a folder of images, e.g. bottle/test")
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--checkpoint", type=int, default=1_000)
    parser.add_argument("--run", type=Path, help="a run folder (default: fit --model on the category)")
    parser.add_argument("--model", default="patchcore")
    parser.add_argument("--work", type=Path, default=Path("/tmp/predict_scale"))
    parser.add_argument("--resize", type=int, help="score copies resized to this many px (faster)")
    parser.add_argument("--keep", action="store_true", help="keep the inputs and overlays")
    args = parser.parse_args()

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    run = args.run
    if run is None:
        run = work / f"run-{args.model}"
        category = args.images.resolve().parent
        if not (run / "run.json").is_file():
            fit = reconad("fit", args.model, "--data", f"mvtec:{category}", "--out", run)
            subprocess.run(fit, check=True)
    distinct = make_inputs(args.images, work / "inputs", args.n, args.resize)
    out = work / "predictions"
    shutil.rmtree(out, ignore_errors=True)

    samples: list[tuple[float, int, dict[str, int]]] = []
    proc = subprocess.Popen(
        reconad("predict", run, work / "inputs", "--out", out), stdout=subprocess.PIPE, text=True
    )
    start = time.perf_counter()

    def watch() -> None:
        while proc.poll() is None:
            kib = status_kib(proc.pid)
            if kib:
                samples.append((time.perf_counter() - start, count_overlays(out), kib))
            time.sleep(0.2)

    watcher = threading.Thread(target=watch)
    watcher.start()
    stdout, _ = proc.communicate()
    watcher.join()
    if proc.returncode != 0:
        sys.exit(f"reconad predict failed with exit code {proc.returncode}")
    at_checkpoint = next((s for s in samples if s[1] >= args.checkpoint), None)
    last = samples[-1]
    rate = re.search(r"\(([\d.]+) images/s\)", stdout)
    result = {
        "images": args.n,
        "distinct_images": distinct,
        "source": str(args.images),
        "resized_to": args.resize,
        "run": str(run),
        "seconds": round(time.perf_counter() - start, 1),
        "images_per_second": float(rate.group(1)) if rate else None,
        "peak_mib_after_checkpoint": at_checkpoint and round(at_checkpoint[2]["VmHWM"] / 1024, 1),
        "checkpoint_images": at_checkpoint and at_checkpoint[1],
        "peak_mib_at_end": round(last[2]["VmHWM"] / 1024, 1),
        "rss_mib_at_end": round(last[2]["VmRSS"] / 1024, 1),
        "images_at_last_sample": last[1],
        "rss_mib_every_1000": {
            str(k): round(next(s for s in samples if s[1] >= k)[2]["VmRSS"] / 1024, 1)
            for k in range(1000, args.n + 1, 1000)
            if any(s[1] >= k for s in samples)
        },
    }
    if at_checkpoint:
        result["peak_growth"] = round(last[2]["VmHWM"] / at_checkpoint[2]["VmHWM"] - 1, 4)
    print(stdout.strip())
    print(json.dumps(result, indent=2))
    if not args.keep:
        shutil.rmtree(work / "inputs", ignore_errors=True)
        shutil.rmtree(work / "sources", ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
