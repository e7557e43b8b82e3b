"""End-to-end speed of an exported folder against ``reconad predict`` on the same images, and the graphs'
sizes on disk.

    python benchmarks/export_speed.py RUN [RUN ...] --images DIR --out OUT [--category C]

For each run: ``reconad export RUN`` (timed), then ``reconad predict RUN DIR`` and the export's
``predict.py DIR``, each as its own process, timed from start to exit (process start, model or graph
loading, decoding, scoring, overlays and scores.csv included), and the CPU seconds each used (user + system:
on a shared machine the wall time measures the other load as much as the command). Both must give the same
verdicts; the scores' largest relative difference is reported. Writes ``OUT/results.json`` after each run
and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

RECONAD = [sys.executable, "-c", "from reconad.cli import run; run()", "--quiet"]


def cpu_seconds() -> float:
    """User + system seconds of every child process waited for so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(command: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds of ``command`` as a process (it must succeed)."""
    cpu, start = cpu_seconds(), time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {' '.join(command)}\n{done.stderr}")
    return time.perf_counter() - start, cpu_seconds() - cpu


def scores(folder: Path) -> dict[str, tuple[float, int]]:
    with open(folder / "scores.csv", newline="", encoding="utf-8") as f:
        return {r["path"]: (float(r["score"]), int(r["is_anomalous"])) for r in csv.DictReader(f)}


def measure(run: Path, images: Path, out: Path, category: list[str]) -> dict:
    name = run.name
    export = out / f"{name}-export"
    chosen = [a for c in category for a in ("--category", c)]
    export_seconds, _ = timed([*RECONAD, "export", str(run), "--out", str(export), *chosen])
    manifest = json.loads((export / "manifest.json").read_text())
    library_seconds, library_cpu = timed(
        [*RECONAD, "predict", str(run), str(images), "--out", str(out / f"{name}-library"), *chosen[:2]]
    )
    script = [sys.executable, str(export / "predict.py"), str(images), "--out", str(out / f"{name}-exported")]
    exported_seconds, exported_cpu = timed([*script, *chosen[:2]])
    lib, ours = scores(out / f"{name}-library"), scores(out / f"{name}-exported")
    assert lib.keys() == ours.keys()
    n = len(lib)
    return {
        "run": str(run),
        "model": manifest["model"],
        "images": n,
        "library_images_per_second": n / library_seconds,
        "export_images_per_second": n / exported_seconds,
        "speed_ratio": library_seconds / exported_seconds,
        "library_cpu_seconds": library_cpu,
        "export_cpu_seconds": exported_cpu,
        "cpu_ratio": library_cpu / exported_cpu,
        "graph_bytes": {g: e["bytes"] for g, e in manifest["graphs"].items()},
        "export_seconds": export_seconds,
        "max_score_rel_diff": max(abs(ours[p][0] / lib[p][0] - 1) for p in lib),
        "same_verdicts": all(ours[p][1] == lib[p][1] for p in lib),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders written by reconad fit")
    parser.add_argument("--images", type=Path, required=True, help="a folder of images to score")
    parser.add_argument("--out", type=Path, required=True, help="folder for exports, predictions, results")
    parser.add_argument(
        "--category", action="append", default=[], help="the category (several-category runs)"
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"cpus": os.cpu_count(), "platform": sys.platform, "command": " ".join(sys.argv)}
    meta["load_average_at_start"] = os.getloadavg()
    rows = []
    for run in args.runs:  # results.json after each run: a long job cut short keeps what it measured
        rows.append(measure(run, args.images, args.out, args.category))
        meta["load_average_at_end"] = os.getloadavg()
        (args.out / "results.json").write_text(json.dumps({"meta": meta, "runs": rows}, indent=2))
    head = (
        "model | images | reconad predict img/s | export img/s | ratio (wall) | ratio (CPU s) | graph MB | "
        "export s | max score diff"
    )
    print(f"| {head} | verdicts |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        mb = sum(r["graph_bytes"].values()) / 1e6
        print(
            f"| {r['model']} | {r['images']} | {r['library_images_per_second']:.1f} | "
            f"{r['export_images_per_second']:.1f} | {r['speed_ratio']:.2f}× | {r['cpu_ratio']:.2f}× | "
            f"{mb:.1f} | {r['export_seconds']:.0f} | {r['max_score_rel_diff']:.1e} | "
            f"{'same' if r['same_verdicts'] else 'DIFFER'} |"
        )


if __name__ == "__main__":
    main()
