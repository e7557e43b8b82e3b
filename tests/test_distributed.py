"""Training on several processes with torch.distributed: 2 processes on loopback with gloo (CPU), started
by torchrun as a user would, on small generated features."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

WORKER = Path(__file__).with_name("distributed_worker.py")


def torchrun_command(*args: object, nproc: int = 2) -> list[str]:
    """``torchrun --standalone --nproc-per-node NPROC ARGS`` (a free loopback port)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    return [*cmd, *map(str, args)]


def torchrun_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path), **extra}


def torchrun(*args: object, nproc: int = 2, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run :func:`torchrun_command`, output captured."""
    cmd = torchrun_command(*args, nproc=nproc)
    return subprocess.run(cmd, env=torchrun_env(), capture_output=True, text=True, timeout=timeout)


def results(out: Path, nproc: int = 2) -> list[dict]:
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(nproc)]


def test_each_process_keeps_its_rows_of_the_one_effective_batch():
    """In one process, no torchrun (the quick loop's check): a plain process is in no world; in a world of 2
    each process trains DistributedSampler's share of the images and keeps its rows of the jitter drawn for
    the whole effective batch, so together they draw what one process draws."""
    from reconad import distributed
    from reconad.models.trained.trainer import feature_jitter, positions

    assert distributed.launched() is None and distributed.current() is None
    x = torch.randn(4, 5, 3, generator=torch.Generator().manual_seed(0))
    whole = feature_jitter(x, 1.0, 0.5, torch.Generator().manual_seed(1))
    worlds = [distributed.World(rank, 2, rank, "gloo") for rank in range(2)]
    for w in worlds:
        mine = feature_jitter(x[w.rank :: 2], 1.0, 0.5, torch.Generator().manual_seed(1), w)
        assert torch.equal(mine, whole[w.rank :: 2]), w.rank
    assert [positions(5, w).tolist() for w in worlds] == [[0, 2, 4], [1, 3, 0]]  # padded by its first


@pytest.mark.slow  # torchrun: 2 processes that import torch
def test_features_are_gathered_whole_and_in_order(tmp_path):
    done = torchrun(WORKER, "gather", tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    for r in results(tmp_path):
        assert all(r["gather"].values()), r
        assert r["broadcast"] == {"epoch": 3, "rank": 0}  # rank 0's object everywhere
        assert r["mean"] == pytest.approx(0.5)


def one_process(**params):
    """The same training as the worker's, in this (plain) process."""
    from distributed_worker import SMALL

    from reconad.models.base import create_model

    return create_model("rlr", **SMALL, **params)


def assert_same_model(ddp_file: Path, single, features: torch.Tensor) -> None:
    """Every weight within 1e-5 of the one-process model's, and so its predictions, except the attention
    key biases: softmax ignores a shift shared by all keys, so their gradient is zero in exact arithmetic
    and only float noise, which Adam turns into steps of up to ``lr`` in both runs alike (they drift apart
    by up to ~4e-4 here) without changing any output."""
    ddp = load_file(str(ddp_file))
    for key, value in single.state_dict().items():
        if not key.endswith(".k.bias"):
            torch.testing.assert_close(ddp[key], value, rtol=0, atol=1e-5, msg=key)
    loaded = type(single).from_state(single.get_config(), ddp)
    torch.testing.assert_close(loaded.predict(features), single.predict(features), rtol=0, atol=1e-5)


@pytest.mark.slow  # torchrun
def test_two_processes_train_the_weights_of_one_with_the_same_effective_batch(tmp_path):
    done = torchrun(WORKER, "train-jitter-off", tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    from distributed_worker import features

    single = one_process(epochs=3, batch_size=4, jitter_scale=0.0).fit(features(8))  # 2 × 2 per step
    assert_same_model(tmp_path / "ddp-off.safetensors", single, features(8))
    r0, r1 = results(tmp_path)
    assert r0["losses"] == r1["losses"] and r0["losses"] == pytest.approx(single.loss_history_, abs=1e-5)


@pytest.mark.slow  # torchrun
def test_with_jitter_every_process_holds_the_same_weights_after_every_step_and_the_loss_falls(tmp_path):
    done = torchrun(WORKER, "train-jitter-on", tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    r0, r1 = results(tmp_path)
    assert len(r0["digests"]) == 6 and r0["digests"] == r1["digests"]  # 4 images: one step per epoch
    assert len(set(r0["digests"])) == 6  # the weights moved every step
    assert r0["losses"][-1] < r0["losses"][0]
    from distributed_worker import features

    single = one_process(epochs=6, batch_size=4).fit(features(4))  # the same noise draws, in one process
    assert_same_model(tmp_path / "ddp-on.safetensors", single, features(4))


@pytest.mark.slow  # torchrun
def test_resume_under_torchrun_ends_with_the_uninterrupted_weights(tmp_path):
    done = torchrun(WORKER, "resume", tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    for r in results(tmp_path):
        assert r["equal"], r
        assert r["losses"][0] == r["losses"][1]


def rank_pid(job: str, rank: int) -> int | None:
    """The pid of the worker of rank ``rank`` in the torchrun job whose environment holds ``job``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        wanted = (f"RECONAD_TEST_JOB={job}", f"RANK={rank}", f"LOCAL_RANK={rank}")  # a worker, not torchrun
        if all(w.encode() in env for w in wanted):
            return int(entry.name)
    return None


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
def test_a_killed_process_leaves_a_whole_checkpoint_and_resume_finishes_a_run_that_predicts(tmp_path, parts):
    """``reconad fit rlr`` under torchrun: rank 1 killed mid-training ends the job with one line from rank 0,
    the last checkpoint stays readable, ``--resume`` finishes the run, and the run predicts like any other."""
    import uuid

    from conftest import invoke
    from safetensors.torch import load_file

    run = tmp_path / "run"
    args = [
        "-m", "reconad", "--quiet", "fit", "rlr", "--data", f"mvtec:{parts}", "--out", run,
        "--image-size", 64, "--holdout", 0.2, "--no-cache", "--param", "epochs=100",
        "--param", "batch_size=2", "--param", "widths=[16,16]", "--param", "device=cpu",
    ]  # fmt: skip
    job = uuid.uuid4().hex
    env = torchrun_env(RECONAD_TEST_JOB=job)
    proc = subprocess.Popen(torchrun_command(*args), env=env, stderr=subprocess.PIPE, text=True)
    meta = tmp_path / ".run.checkpoints" / "rlr-checkpoint.json"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if json.loads(meta.read_text())["epoch"] >= 2:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    victim = rank_pid(job, 1)
    assert victim is not None and proc.poll() is None, "training ended before a rank could be killed"
    os.kill(victim, signal.SIGKILL)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode != 0
    ours = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(ours) == 1 and "--resume" in ours[0], stderr[-3000:]  # rank 0's (torchrun adds its report)
    epoch = json.loads(meta.read_text())["epoch"]
    assert 2 <= epoch < 100
    assert load_file(str(meta.parent / json.loads(meta.read_text())["weights"]))  # whole and readable
    assert not run.exists()

    done = torchrun(*args, "--resume", timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    config = json.loads((run / "run.json").read_text())
    assert config["distributed"] == {
        "world_size": 2, "backend": "gloo", "batch_size_per_process": 2, "effective_batch": 4, "lr": 1e-3,
    }  # fmt: skip
    assert not meta.parent.exists()  # rank 0 removed the checkpoints once the run was saved
    result = invoke("predict", run, parts / "test", "--out", tmp_path / "pred")
    assert result.exit_code == 0, result.output
    assert len((tmp_path / "pred" / "scores.csv").read_text().splitlines()) == 1 + 10
