"""reconad against anomalib's PatchCore on the same machine, in the same run, with the same backbone weights.

    pip install -e '.[compare]'      # anomalib 2.7.x, in its own virtual environment
    python benchmarks/vs_anomalib.py --data mvtec:../shared/data/mvtec_ad --category bottle \
        [--data mvtec3d:../shared/data/mvtec_3d --category tire ...] [--ratio 0.01] \
        [--extra-ratio bottle=0.1] --out vs-anomalib

For each category and coreset ratio: anomalib's PatchCore (``Engine.fit`` + ``Engine.predict``, its normal
user path) and reconad's PatchCore at the same ratio; per category also reconad's SGFR at its defaults. Each
fit + test runs in its own process, so one method's memory never counts towards another's. Per run:

- **fit s**: wall time from building the backbone to a fitted model on disk (reconad: ``pipeline.fit`` with no
  feature cache + ``save_run``, as ``reconad fit --no-cache``; anomalib: the model, its weights, the
  ``Engine`` and ``Engine.fit``, whose checkpoint callback writes the model).
- **test img/s**: test images over the wall time from file names to anomaly maps and image scores of the
  whole test split (decode, resize, backbone, model, maps; masks read too), no metric computed.
- **peak RSS**: ``VmHWM`` of the process after fitting, and after testing with the mark reset in between
  (``/proc/self/clear_refs``); the test peak includes what the process still holds from fitting.
- **metrics**: the five of ``reconad.metrics`` on each run's maps and scores, against the same masks
  (reconad's, resized to the image size), and the four anomalib also has from anomalib's metric classes
  (``anomalib_peer.anomalib_metrics``): ``check`` is their largest difference.

Writes ``DIR/results.json`` and ``DIR/results.md`` (per-run figures and the ratios reconad / anomalib), and
keeps each run's log and model under ``DIR/runs/``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
COMPARED = ("image_auroc", "pixel_auroc", "pixel_aupro", "image_f1_max")


# ---------------------------------------------------------------- inside one run's process


def vm_hwm_bytes() -> int:
    """Peak resident memory of this process since start or the last :func:`reset_hwm`."""
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) * 1024


def reset_hwm() -> None:
    Path("/proc/self/clear_refs").write_text("5")


@dataclass
class Outcome:
    """What one fit + test produced (maps and scores in the order of reconad's test split)."""

    fit_seconds: float
    fit_rss: int
    test_seconds: float
    maps: np.ndarray
    scores: np.ndarray
    info: dict[str, Any]


def reconad_run(job: dict[str, Any], work: Path) -> Outcome:
    """Fit and test one reconad model as ``reconad fit --no-cache`` and ``reconad test`` do."""
    from reconad import pipeline
    from reconad.data import load_sources
    from reconad.features.extractor import FeatureExtractor
    from reconad.runs import save_run
    from reconad.runtime import keep_freed_memory

    keep_freed_memory()  # as the reconad CLI does at start-up
    data = load_sources(job["data"], [job["category"]], seed=job["seed"])
    start = time.perf_counter()
    extractor = FeatureExtractor(job["backbone"], tuple(job["layers"]), job["image_size"])
    run = pipeline.fit(
        job["model"], data, extractor, params=job["params"], holdout=job["holdout"], seed=job["seed"]
    )
    save_run(run, work / "run")
    fit_seconds, fit_rss = time.perf_counter() - start, vm_hwm_bytes()
    reset_hwm()

    start = time.perf_counter()
    test = data[0].test
    ext = pipeline.extract(test, extractor, with_masks=True)
    model = run.model_for(job["category"])
    maps, scores = pipeline.score_features(
        model, ext.features, job["image_size"], run.config["scoring"], [job["category"]] * len(test)
    )
    test_seconds = time.perf_counter() - start
    bank = getattr(model, "bank_", None)
    info = {
        "bank_size": None if bank is None else len(bank),
        "n_train": run.categories[job["category"]]["n_train"],
    }
    return Outcome(fit_seconds, fit_rss, test_seconds, maps.numpy(), scores.numpy(), info)


def anomalib_run(job: dict[str, Any], work: Path) -> Outcome:
    """Fit and test anomalib's PatchCore on the images reconad's model is fitted on."""
    from anomalib.engine import Engine
    from anomalib_peer import SamplesDataModule, patchcore
    from lightning.pytorch.callbacks import Callback

    from reconad.data import load_sources
    from reconad.pipeline import split_holdout

    class Collect(Callback):
        """Keeps each predicted batch's maps, scores and paths (not its images)."""

        def __init__(self) -> None:
            self.paths: list[str] = []
            self.maps: list[torch.Tensor] = []
            self.scores: list[torch.Tensor] = []

        def on_predict_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
            self.paths += list(outputs.image_path)
            self.maps.append(
                outputs.anomaly_map.detach().reshape(len(outputs.image_path), *outputs.anomaly_map.shape[-2:])
            )
            self.scores.append(outputs.pred_score.detach().reshape(-1))

    data = load_sources(job["data"], [job["category"]], seed=job["seed"])[0]
    train, _ = split_holdout(data.train, job["holdout"], job["seed"])  # the images reconad's model sees
    datamodule = SamplesDataModule(data.name, train, data.test, num_workers=job["num_workers"])
    torch.manual_seed(job["seed"])
    start = time.perf_counter()
    model = patchcore(job["backbone"], job["layers"], job["image_size"], job["params"]["coreset_ratio"])
    collect = Collect()
    engine = Engine(
        default_root_dir=work / "anomalib",
        accelerator="cpu",
        callbacks=[collect],
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,  # no validation split: nothing to calibrate with post-processing off
    )
    engine.fit(model=model, datamodule=datamodule)
    fit_seconds, fit_rss = time.perf_counter() - start, vm_hwm_bytes()
    reset_hwm()

    start = time.perf_counter()
    engine.predict(model=model, datamodule=datamodule, return_predictions=False)
    test_seconds = time.perf_counter() - start
    order = {str(s.path): i for i, s in enumerate(data.test)}
    where = np.argsort([order[p] for p in collect.paths])
    maps = torch.cat(collect.maps).numpy()[where]
    scores = torch.cat(collect.scores).numpy()[where]
    info = {"bank_size": len(model.model.memory_bank), "n_train": len(train)}
    return Outcome(fit_seconds, fit_rss, test_seconds, maps, scores, info)


def worker(job: dict[str, Any]) -> None:
    """One fit + test in this process; writes ``result.json`` beside the run's files."""
    from reconad.data import load_image_and_mask, load_sources
    from reconad.metrics import METRIC_KEYS, evaluate

    work = Path(job["work"])
    side = anomalib_run if job["side"] == "anomalib" else reconad_run
    outcome = side(job, work)
    test_rss = vm_hwm_bytes()

    test = load_sources(job["data"], [job["category"]], seed=job["seed"])[0].test
    size = job["image_size"]
    masks = np.stack(
        [
            m if m is not None else np.zeros((size, size), bool)
            for _, m in (load_image_and_mask(s, size) for s in test)
        ]
    )
    labels = np.array([s.label for s in test])
    metrics = evaluate(labels, outcome.scores, masks, outcome.maps)
    from anomalib_peer import anomalib_metrics  # beside this script

    theirs = anomalib_metrics(labels, outcome.scores, masks, outcome.maps)
    result = {
        "fit_seconds": outcome.fit_seconds,
        "test_seconds": outcome.test_seconds,
        "n_test": len(test),
        "test_images_per_second": len(test) / outcome.test_seconds,
        "peak_rss_fit_bytes": outcome.fit_rss,
        "peak_rss_test_bytes": test_rss,
        "metrics": {k: metrics[k] for k in METRIC_KEYS},
        "anomalib_metrics": theirs,
        "check": max(abs(metrics[k] - theirs[k]) for k in COMPARED),
        **outcome.info,
    }
    (work / "result.json").write_text(json.dumps(result, indent=2))


# ---------------------------------------------------------------- the orchestrating process


def plan(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every run, in order: per category anomalib's and reconad's PatchCore at ``--ratio`` and reconad's
    SGFR; then the ``--extra-ratio`` PatchCores."""
    extra: dict[str, list[float]] = {}
    for spec in args.extra_ratio:
        cat, _, ratio = spec.partition("=")
        extra.setdefault(cat, []).append(float(ratio))
    common = {
        "data": args.data,
        "backbone": args.backbone,
        "layers": [int(x) for x in args.layers.split(",")],
        "image_size": args.image_size,
        "seed": args.seed,
        "holdout": args.holdout,
        "num_workers": args.anomalib_workers,
    }
    runs = [(cat, args.ratio) for cat in args.category]
    runs += [(cat, ratio) for cat in args.category for ratio in extra.get(cat, [])]  # the long ones last
    jobs = []
    for cat, ratio in runs:
        params = {"coreset_ratio": ratio}
        for side in ("anomalib", "reconad"):
            jobs.append({**common, "category": cat, "side": side, "model": "patchcore", "params": params})
        if ratio == args.ratio and not args.no_sgfr:
            jobs.append({**common, "category": cat, "side": "reconad", "model": "sgfr", "params": {}})
    for job in jobs:
        ratio = job["params"].get("coreset_ratio")
        job["name"] = f"{job['category']}.{job['side']}-{job['model']}" + (f".{ratio:g}" if ratio else "")
    return jobs


def launch(job: dict[str, Any], runs: Path) -> dict[str, Any]:
    """Run ``job`` in a child process; its result plus the child's own peak RSS (``wait4``) and the
    machine's 5-minute load average before and after."""
    work = runs / job["name"]
    work.mkdir(parents=True, exist_ok=True)
    job = {**job, "work": str(work)}
    load_before = os.getloadavg()[1]
    with open(work / "log.txt", "w") as log:
        child = subprocess.Popen(
            [sys.executable, __file__, "--worker", json.dumps(job)], stdout=log, stderr=subprocess.STDOUT
        )
        try:
            _, status, usage = os.wait4(child.pid, 0)
        except BaseException:  # interrupted or terminated: take the run down too
            child.kill()
            child.wait()
            raise
    code = os.waitstatus_to_exitcode(status)
    child.returncode = code
    if code != 0:
        raise SystemExit(f"{job['name']} failed (exit {code}); see {work / 'log.txt'}")
    result = json.loads((work / "result.json").read_text())
    return {
        **result,
        "peak_rss_process_bytes": usage.ru_maxrss * 1024,
        "load_average_5min": [load_before, os.getloadavg()[1]],  # before and after: the machine is shared
    }


def machine() -> dict[str, Any]:
    names = re.findall(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
    cpu = names[0].strip() if names else "?"
    mem = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1)) * 1024
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory_bytes": mem,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
    }


def versions() -> dict[str, str]:
    from importlib.metadata import version

    out = {name: version(name) for name in ("reconad", "anomalib", "torch", "timm", "lightning", "faiss-cpu")}
    try:
        out["commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        out["commit"] = "?"
    return out


def ratios(results: dict[str, dict], jobs: list[dict]) -> list[dict[str, Any]]:
    """Each reconad run against anomalib's run of the same category and ratio (SGFR: the first ratio)."""
    rows = []
    for job in jobs:
        if job["side"] != "reconad":
            continue
        ratio = job["params"].get("coreset_ratio")
        peer = next(
            j
            for j in jobs
            if j["side"] == "anomalib"
            and j["category"] == job["category"]
            and (ratio is None or j["params"]["coreset_ratio"] == ratio)
        )
        ours, theirs = results[job["name"]], results[peer["name"]]
        rows.append(
            {
                "run": job["name"],
                "against": peer["name"],
                "fit_seconds": ours["fit_seconds"] / theirs["fit_seconds"],
                "test_images_per_second": ours["test_images_per_second"] / theirs["test_images_per_second"],
                "peak_rss_fit_bytes": ours["peak_rss_fit_bytes"] / theirs["peak_rss_fit_bytes"],
                "peak_rss_test_bytes": ours["peak_rss_test_bytes"] / theirs["peak_rss_test_bytes"],
                "metric_differences": {
                    k: ours["metrics"][k] - theirs["metrics"][k]
                    for k in ours["metrics"]
                    if ours["metrics"][k] is not None and theirs["metrics"][k] is not None
                },
            }
        )
    return rows


def markdown(doc: dict[str, Any]) -> str:
    mb = 1 / 2**20
    lines = [
        "| run | bank | fit s | test img/s | peak RSS fit MB | peak RSS test MB | image AUROC "
        "| pixel AUROC | AUPRO@0.3 | image F1-max | pixel AP | check | load |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, r in doc["runs"].items():
        m = r["metrics"]
        lines.append(
            f"| {name} | {r['bank_size'] or '—'} | {r['fit_seconds']:.1f} "
            f"| {r['test_images_per_second']:.1f} "
            f"| {r['peak_rss_fit_bytes'] * mb:.0f} | {r['peak_rss_test_bytes'] * mb:.0f} "
            + " ".join(f"| {m[k]:.4f}" for k in m)
            + f" | {r['check']:.1e} | {r['load_average_5min'][0]:.1f}–{r['load_average_5min'][1]:.1f} |"
        )
    lines += [
        "",
        "| reconad run | against | fit s | test img/s | peak RSS fit | peak RSS test | Δ image AUROC "
        "| Δ pixel AUROC | Δ AUPRO | Δ image F1-max | Δ pixel AP |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in doc["ratios"]:
        d = r["metric_differences"]
        lines.append(
            f"| {r['run']} | {r['against']} | {r['fit_seconds']:.2f}× | {r['test_images_per_second']:.2f}× "
            f"| {r['peak_rss_fit_bytes']:.2f}× | {r['peak_rss_test_bytes']:.2f}× "
            + " ".join(f"| {d[k]:+.4f}" for k in d)
            + " |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--data", action="append", default=[], help="FORMAT:PATH, repeatable")
    parser.add_argument("--category", action="append", default=[], help="repeatable")
    parser.add_argument("--out", type=Path, help="folder for results.json, results.md and the runs")
    parser.add_argument("--ratio", type=float, default=0.01, help="coreset ratio of both PatchCores")
    parser.add_argument("--extra-ratio", action="append", default=[], help="CATEGORY=RATIO, also run there")
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--layers", default="2,3")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--holdout", type=float, default=0.1)
    parser.add_argument("--anomalib-workers", type=int, default=0, help="anomalib's DataLoader processes")
    parser.add_argument("--no-sgfr", action="store_true", help="PatchCore only")
    args = parser.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return
    if not (args.data and args.category and args.out):
        parser.error("--data, --category and --out are required")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so a terminated bench stops its run too
    jobs = plan(args)
    doc: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": versions(),
        "load_average_start": os.getloadavg(),
        "runs": {},
    }
    start = time.perf_counter()
    for job in jobs:
        print(f"{job['name']} ...", flush=True)
        doc["runs"][job["name"]] = launch(job, args.out / "runs")
        r = doc["runs"][job["name"]]
        print(
            f"  fit {r['fit_seconds']:.1f} s, test {r['test_images_per_second']:.1f} img/s, "
            f"check {r['check']:.1e}, {json.dumps(r['metrics'])}",
            flush=True,
        )
        (args.out / "results.json").write_text(json.dumps(doc, indent=2))
    doc["ratios"] = ratios(doc["runs"], jobs)
    doc["load_average_end"] = os.getloadavg()
    doc["wall_seconds"] = time.perf_counter() - start
    (args.out / "results.json").write_text(json.dumps(doc, indent=2))
    (args.out / "results.md").write_text(markdown(doc))
    print(markdown(doc))


if __name__ == "__main__":
    main()
