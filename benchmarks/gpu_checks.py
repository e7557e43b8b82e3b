"""The GPU checks: does ``--device cuda`` work end to end for every model, and what does it buy? For a machine
with a CUDA GPU (never needed by the tests); prints one JSON document of figures.

    python benchmarks/gpu_checks.py --data mvtec:../shared/data/mvtec_ad [--category bottle] \
        [--epochs 5] [--out /tmp/gpu_checks]

1. Features: the backbone on the GPU against the CPU on the same images (largest difference) and the
   backbone's images/s on each.
2. PatchCore and SGFR: the same fitted model predicting with its search on the CPU and on the GPU (FAISS-GPU
   where installed, else the exact torch search): score agreement and images/s.
3. RLR and UniAD: training on the GPU with mixed precision (bf16 autocast) for ``--epochs``: the
   losses (they must fall), seconds per epoch, pixel AUROC of the result.
4. End to end: ``reconad fit rlr --device cuda`` and ``reconad test --device cuda`` in subprocesses, and
   with 2+ GPUs ``torchrun --nproc-per-node N -m reconad fit rlr --device cuda`` (NCCL).

Without the data folder it runs on generated parts (``reconad.data.synthetic``). Without a GPU it says so and
exits with code 1.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch


def timed(fn: Any, *args: Any, repeat: int = 2) -> tuple[Any, float]:
    """``fn(*args)`` and the best of ``repeat`` wall times (CUDA synchronised)."""
    best, out = float("inf"), None
    for _ in range(repeat):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn(*args)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return out, best


def reconad(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "reconad", "--quiet", *map(str, args)], capture_output=True, text=True
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", required=True, help="FORMAT:PATH, e.g. mvtec:../shared/data/mvtec_ad")
    parser.add_argument("--category", default="bottle")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("/tmp/gpu_checks"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_checks: no CUDA GPU here (torch.cuda.is_available() is False): nothing to check")

    from reconad import pipeline
    from reconad.data import load_resized, load_sources
    from reconad.data.synthetic import make_parts
    from reconad.features.extractor import FeatureExtractor
    from reconad.models.bank.knn import faiss_has_gpu

    args.out.mkdir(parents=True, exist_ok=True)
    data_spec = args.data
    if not Path(data_spec.split(":", 1)[1]).exists():
        part = make_parts(args.out / "parts", n_train=60, n_test_good=12, n_test_bad=24, size=256, seed=0)
        data_spec, args.category = f"mvtec:{part.parent}", part.name
    data = load_sources([data_spec], [args.category])
    figures: dict[str, Any] = {
        "gpu": torch.cuda.get_device_name(),
        "gpus": torch.cuda.device_count(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "faiss_gpu": faiss_has_gpu(),
        "data": data_spec,
        "category": args.category,
    }

    # 1. features
    cpu, gpu = FeatureExtractor(device="cpu"), FeatureExtractor(device="cuda")
    images = torch.from_numpy(np.stack([load_resized(s, 256)[0] for s in data[0].test[:32]]))
    f_cpu, t_cpu = timed(cpu, images)
    gpu(images[:4])  # warm-up (cuDNN picks its kernels)
    f_gpu, t_gpu = timed(gpu, images, repeat=3)
    figures["features"] = {
        "max_abs_diff": float((f_cpu - f_gpu).abs().max()),
        "max_abs_value": float(f_cpu.abs().max()),
        "cpu_images_per_second": round(len(images) / t_cpu, 1),
        "gpu_images_per_second": round(len(images) / t_gpu, 1),
    }
    print(json.dumps({"features": figures["features"]}), flush=True)

    # 2. PatchCore and SGFR: search on the CPU against the GPU
    test_feats = pipeline.extract(data[0].test, gpu).features
    for name in ("patchcore", "sgfr"):
        run = pipeline.fit(name, data, cpu)
        model = run.model_for(args.category)
        s_cpu, t_cpu = timed(model.predict, test_feats[:32], repeat=1)
        model.to("cuda")
        model.predict(test_feats[:4])  # warm-up
        s_gpu, t_gpu = timed(model.predict, test_feats[:32])
        figures[name] = {
            "max_abs_score_diff": float((s_cpu - s_gpu).abs().max()),
            "max_score": float(s_cpu.max()),
            "score_correlation": float(np.corrcoef(s_cpu.ravel().numpy(), s_gpu.ravel().numpy())[0, 1]),
            "cpu_model_images_per_second": round(32 / t_cpu, 1),
            "gpu_model_images_per_second": round(32 / t_gpu, 1),
        }
        print(json.dumps({name: figures[name]}), flush=True)

    # 3. the unified models: training on the GPU (mixed precision)
    for name in ("rlr", "uniad"):
        start = time.perf_counter()
        run = pipeline.fit(name, data, gpu, params={"epochs": args.epochs, "device": "cuda"})
        seconds = time.perf_counter() - start
        result = pipeline.evaluate(run, data, gpu)[args.category]
        losses = run.models["unified"].loss_history_
        figures[name] = {
            "losses": [round(x, 4) for x in losses],
            "loss_falls": losses[-1] < losses[0],
            "fit_seconds": round(seconds, 1),
            "model_fit_seconds_per_epoch": round(run.config["model_fit_seconds"] / args.epochs, 2),
            "pixel_auroc": result.metrics["pixel_auroc"],
            "image_auroc": result.metrics["image_auroc"],
        }
        print(json.dumps({name: figures[name]}), flush=True)

    # 4. the command line, end to end
    run_dir = args.out / "run-rlr"
    fit = reconad(
        "fit", "rlr", "--data", data_spec, "--category", args.category, "--out", run_dir,
        "--device", "cuda", "--param", f"epochs={args.epochs}", "--no-cache",
    )  # fmt: skip
    test = reconad("test", run_dir, "--device", "cuda", "--json", args.out / "rlr.json")
    metrics = json.loads((args.out / "rlr.json").read_text())["mean"] if test.returncode == 0 else None
    figures["cli"] = {
        "fit_exit": fit.returncode,
        "test_exit": test.returncode,
        "fit_says": fit.stdout.strip()[-300:] or fit.stderr.strip()[-300:],
        "test_metrics": metrics,
    }
    n = torch.cuda.device_count()
    if n >= 2:
        ddp_dir = args.out / "run-rlr-ddp"
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}",
            "-m", "reconad", "--quiet", "fit", "rlr", "--data", data_spec, "--category", args.category,
            "--out", str(ddp_dir), "--device", "cuda", "--param", f"epochs={args.epochs}",
        ]  # fmt: skip
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True)
        config = json.loads((ddp_dir / "run.json").read_text()) if done.returncode == 0 else {}
        figures["torchrun_nccl"] = {
            "exit": done.returncode,
            "seconds": round(time.perf_counter() - start, 1),
            "distributed": config.get("distributed"),
            "stderr_tail": done.stderr.strip()[-500:] if done.returncode else "",
        }
    else:
        figures["torchrun_nccl"] = "skipped: one GPU (NCCL needs a GPU per process)"
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
