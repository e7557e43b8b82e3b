"""Training on several processes with torch.distributed: 2 processes on loopback with gloo (CPU), started
by torchrun as a user would, on small generated features."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("distributed_worker.py")


def torchrun(*args: object, nproc: int = 2, timeout: float = 120) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node NPROC ARGS`` (a free loopback port), output captured."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    return subprocess.run([*cmd, *map(str, args)], env=env, capture_output=True, text=True, timeout=timeout)


def results(out: Path, nproc: int = 2) -> list[dict]:
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(nproc)]


def test_features_are_gathered_whole_and_in_order(tmp_path):
    done = torchrun(WORKER, "gather", tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    for r in results(tmp_path):
        assert all(r["gather"].values()), r
        assert r["broadcast"] == {"epoch": 3, "rank": 0}  # rank 0's object everywhere
        assert r["mean"] == pytest.approx(0.5)
