"""The cost of each pixel: accuracy, decisions, fit seconds, predict images/s and peak memory against the
area of the model's input, so that a user can choose an image size (or tiles).

    python benchmarks/pixel_cost.py --data mvtec:../shared/data/mvtec_ad [--data FORMAT:PATH ...] \\
        [--make-hires DIR [--hires-size 2048] [--hires-counts 40 10 20] [--hires-defect-px 8 32]] \\
        [--config 256="--image-size 256" --config 512="--image-size 512" ...] \\
        [--model sgfr --model patchcore] [--category C ...] --out OUT

A configuration is a name and the extra ``reconad fit`` flags it stands for (``--config NAME="FLAGS"``), so
any fit option can be measured: ``--config native="--image-size 1024 --keep-aspect"``, and tiles once
``reconad fit`` has them. ``--make-hires DIR`` writes the synthetic high-resolution set there
(``reconad.data.synthetic.make_hires``: 2048 px parts, one square category and one 3:1, defects 8–32 px
across; kept and reused while its arguments are the same) and adds it as a data source.

For each category of each source, each configuration and each model, one row, every command a subprocess:

- ``reconad fit`` (``--no-cache``: features computed, as a first fit does): wall s, and the child's peak
  RSS (``ru_maxrss``, ``fit_scale.measured``);
- ``reconad test --json``: image AUROC, pixel AUROC, AUPRO, and the false rejects and escapes on the test
  images at the run's own threshold;
- ``reconad predict`` on the category's test images: images/s as ``predict`` counts it (decode, backbone,
  model, maps and overlays; loading excluded), its wall s and peak RSS.

The input's area is the run's ``features.image_size`` (h × w, after ``--keep-aspect``). ``OUT`` gets
``results.json`` (rewritten after every row), ``results.md`` (the table) and ``runs/CATEGORY/CONFIG/MODEL``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fit_scale import measured, timed_fit

from reconad import __version__
from reconad.bench import verdicts_cell
from reconad.data import load_sources
from reconad.data.synthetic import make_hires
from reconad.options import check_image_size
from reconad.report.html import fmt

RECONAD = [sys.executable, "-m", "reconad", "--quiet"]
RATE = re.compile(r"\(([\d.]+) images/s\)")  # reconad predict's own count, in its last line
COLUMNS = (
    "category",
    "config",
    "input w×h",
    "pixels",
    "model",
    "image AUROC",
    "pixel AUROC",
    "AUPRO",
    "false rejects · escapes",
    "fit s",
    "predict img/s",
    "peak RSS MiB fit / predict",
)


def parse_config(text: str) -> tuple[str, list[str]]:
    """``NAME=FLAGS`` → ``(NAME, [flag, ...])`` (the flags split as a shell would)."""
    name, sep, flags = text.partition("=")
    if not sep or not name or "/" in name:
        raise argparse.ArgumentTypeError(
            f'--config {text!r}: expected NAME="FLAGS", e.g. 512="--image-size 512"'
        )
    return name, shlex.split(flags)


def hires_source(root: Path, size: int, counts: list[int], px: list[float], seed: int = 0) -> str:
    """The synthetic high-resolution set under ``root`` as a data source; generated unless ``root`` holds
    one made with the same arguments (``hires.json``)."""
    wanted = {"size": size, "counts": counts, "defect_px": px, "seed": seed}
    stamp = root / "hires.json"
    if not (stamp.is_file() and json.loads(stamp.read_text()) == wanted):
        print(f"generating the high-resolution set → {root}", flush=True)
        make_hires(root, *counts, size=size, defect_px=tuple(px), seed=seed)
        stamp.write_text(json.dumps(wanted))
    return f"mvtec:{root}"


def measure(
    spec: str, category: Any, config: list[str], model: str, run: Path, scratch: Path
) -> dict[str, Any]:
    """One row: fit, test and predict ``model`` on ``category`` of ``spec`` with the fit flags ``config``."""
    fit = timed_fit(model, spec, run, ["--category", category.name, *config])
    scratch.mkdir(parents=True, exist_ok=True)
    measured([*RECONAD, "test", str(run), "--json", str(scratch / "test.json")], scratch / "test.log")
    doc = json.loads((scratch / "test.json").read_text())["categories"][category.name]
    paths = [str(s.path) for s in category.test]
    cmd = [*RECONAD, "predict", str(run), *paths, "--out", str(scratch / "predict"), "--force"]
    seconds, peak_kib = measured(cmd, scratch / "predict.log")
    rate = RATE.findall((scratch / "predict.log").read_text())
    h, w = check_image_size(json.loads((run / "run.json").read_text())["features"]["image_size"])
    shutil.rmtree(scratch)
    return {
        "input_hw": [h, w],
        "pixels": h * w,
        **{k: doc[k] for k in ("image_auroc", "pixel_auroc", "pixel_aupro", "n_test")},
        "verdicts": doc["verdicts"],
        "fit_seconds": fit["seconds"],
        "fit_peak_rss_mib": round(fit["peak_rss_bytes"] / 2**20, 1),
        "feature_seconds": fit["feature_seconds"],
        "model_fit_seconds": fit["model_fit_seconds"],
        "predict_images": len(paths),
        "predict_images_per_second": float(rate[-1]) if rate else None,
        "predict_wall_seconds": round(seconds, 1),
        "predict_peak_rss_mib": round(peak_kib / 1024, 1),
    }


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """``results.md``: one line per (category, config, model) row."""
    lines = [
        "# The cost of each pixel",
        "",
        f"`{meta['command']}`",
        "",
        f"{meta['date']} · commit `{meta['commit']}` · reconad {meta['reconad_version']} · "
        f"{meta['machine']['cpu_count']} CPUs, {meta['machine']['platform']}",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|---|---|---|---:|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        speed = r["predict_images_per_second"]
        cells = (
            r["category"],
            r["config"],
            f"{r['input_hw'][1]}×{r['input_hw'][0]}",
            f"{r['pixels']:,}",
            r["model"],
            fmt(r["image_auroc"]),
            fmt(r["pixel_auroc"]),
            fmt(r["pixel_aupro"]),
            verdicts_cell(r["verdicts"]),
            f"{r['fit_seconds']:.1f}",
            "—" if speed is None else f"{speed:.1f}",
            f"{r['fit_peak_rss_mib']:,.0f} / {r['predict_peak_rss_mib']:,.0f}",
        )
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "False rejects · escapes: at the run's own threshold (`docs/operating.md`), on the test images.",
    ]
    return "\n".join(lines) + "\n"


def _meta(args: argparse.Namespace) -> dict[str, Any]:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout
    return {
        "command": shlex.join(["python", *sys.argv]),
        "configs": dict(args.config),
        "models": args.model,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": commit.strip() or None,
        "reconad_version": __version__,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
        "peak_rss": "ru_maxrss of each command's own process (os.wait4)",
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", action="append", default=[], help="FORMAT:PATH (repeat)")
    parser.add_argument(
        "--make-hires", type=Path, help="write (or reuse) the synthetic high-resolution set here"
    )
    parser.add_argument("--hires-size", type=int, default=2048, help="its longer side")
    parser.add_argument(
        "--hires-counts", type=int, nargs=3, default=[40, 10, 20], metavar=("TRAIN", "GOOD", "BAD")
    )
    parser.add_argument("--hires-defect-px", type=float, nargs=2, default=[8, 32], metavar=("LOW", "HIGH"))
    parser.add_argument("--config", type=parse_config, action="append", help='NAME="FIT FLAGS" (repeat)')
    parser.add_argument("--model", action="append", help="default: sgfr and patchcore")
    parser.add_argument("--category", action="append", help="only these categories (default: all)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.config = args.config or [parse_config("256=--image-size 256"), parse_config("512=--image-size 512")]
    args.model = args.model or ["sgfr", "patchcore"]
    specs = list(args.data)
    if args.make_hires:
        specs.append(hires_source(args.make_hires, args.hires_size, args.hires_counts, args.hires_defect_px))
    if not specs:
        parser.error("give --data FORMAT:PATH or --make-hires DIR")
    meta, rows = _meta(args), []
    args.out.mkdir(parents=True, exist_ok=True)
    for spec in specs:
        for category in load_sources([spec]):
            if args.category and category.name not in args.category:
                continue
            for name, flags in args.config:
                for model in args.model:
                    run = args.out / "runs" / category.name / name / model
                    row = measure(spec, category, flags, model, run, args.out / "scratch")
                    rows.append(
                        {"data": spec, "category": category.name, "config": name, "model": model, **row}
                    )
                    print(json.dumps(rows[-1]), flush=True)
                    doc = {"pixel_cost": 1, "meta": meta, "rows": rows}
                    (args.out / "results.json").write_text(json.dumps(doc, indent=2))
                    (args.out / "results.md").write_text(markdown(rows, meta))
    print(markdown(rows, meta))


if __name__ == "__main__":
    main()
