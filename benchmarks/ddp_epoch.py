"""Wall time of RLR training epochs on the CPU: one process against a torchrun job of N (gloo).

    python benchmarks/ddp_epoch.py --data mvtec:../shared/data/mvtec_ad [--category bottle] \
        [--epochs 2] [--nproc 2] [--work /tmp/ddp_epoch]

Both train the same model on the same cached features (a first plain fit fills the cache) with the same
effective batch: ``batch_size`` 4 in one process, ``4 / N`` in each of N. The figure is the run's
``model_fit_seconds`` (training plus the held-back scoring; feature extraction excluded), divided by the
epochs. One process runs twice: with torch's default threads (every core) and with cores / N threads;
torchrun gives each of its N processes ``OMP_NUM_THREADS`` = cores / N, so the job uses the whole machine.
On a few cores N processes are not expected to be faster: they split the same cores and add a gradient
all-reduce per step.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path


def fit_command(data: str, category: str, out: Path, epochs: int, batch: int) -> list[str]:
    return [
        "-m", "reconad", "--quiet", "fit", "rlr", "--data", data, "--category", category, "--out", str(out),
        "--param", f"epochs={epochs}", "--param", f"batch_size={batch}", "--param", "device=cpu",
    ]  # fmt: skip


def timed_run(cmd: list[str], out: Path, env: dict[str, str]) -> dict[str, float]:
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env)
    config = json.loads((out / "run.json").read_text())
    return {"wall_seconds": time.perf_counter() - start, "model_fit_seconds": config["model_fit_seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", required=True, help="FORMAT:PATH, e.g. mvtec:../shared/data/mvtec_ad")
    parser.add_argument("--category", default="bottle")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("/tmp/ddp_epoch"))
    args = parser.parse_args()
    if 4 % args.nproc:
        sys.exit("--nproc must divide the effective batch, 4")
    cores = os.cpu_count() or 1
    env = dict(os.environ)
    plain = [sys.executable, *fit_command(args.data, args.category, args.work / "one", args.epochs, 4)]
    subprocess.run(  # fill the feature cache, so that both timed runs read the same features
        [sys.executable, *fit_command(args.data, args.category, args.work / "warm", 1, 4)], check=True
    )
    one = timed_run(plain, args.work / "one", env)
    threads = str(max(1, cores // args.nproc))
    one_narrow = timed_run(plain, args.work / "one", {**env, "OMP_NUM_THREADS": threads})
    torchrun = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}",
        *fit_command(args.data, args.category, args.work / "many", args.epochs, 4 // args.nproc),
    ]  # fmt: skip
    many = timed_run(torchrun, args.work / "many", {**env, "OMP_NUM_THREADS": threads})
    result = {
        "cores": cores,
        "epochs": args.epochs,
        "one_process": {**one, "seconds_per_epoch": one["model_fit_seconds"] / args.epochs},
        f"one_process_{threads}_threads": {
            **one_narrow,
            "seconds_per_epoch": one_narrow["model_fit_seconds"] / args.epochs,
        },
        f"{args.nproc}_processes": {**many, "seconds_per_epoch": many["model_fit_seconds"] / args.epochs},
        "speed_up": round(one["model_fit_seconds"] / many["model_fit_seconds"], 3),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
