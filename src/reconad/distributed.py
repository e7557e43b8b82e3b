"""Training on several processes and machines with torch.distributed, started by torchrun.

``torchrun --nproc-per-node N [--nnodes M ...] -m reconad fit rlr ...`` starts one process per GPU (or per
CPU slot) and tells each its place in the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``/``MASTER_PORT``). :func:`start` reads it and joins the process group: NCCL on CUDA, gloo on
the CPU, plus a gloo group for the exchanges of CPU tensors (features, resume state) when the main one is
NCCL. A plain process, or a world of one, gets ``None`` and never touches torch.distributed: the one-process
path has no distributed code in it.

A process that torchrun stops (it stops them all when one fails) raises :class:`JobStopped` from its
``SIGTERM`` handler, and a collective whose peer has gone raises it too, so the command ends with one line
while every file it writes stays whole (they are written atomically, by rank 0 only).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from reconad.errors import ReconadError

#: How long a process waits for the others at a collective before the job fails (a peer that hangs).
TIMEOUT = timedelta(minutes=30)
#: What gloo and NCCL errors say when a peer has gone.
PEER_GONE = ("Connection", "connection", "peer", "Socket", "socket", "NCCL", "gloo", "timed out", "Timeout")
GATHER_ROWS = 64  # feature rows (images) exchanged per collective in :func:`gather_rows`


class JobStopped(ReconadError):
    """Another process of the job failed (or torchrun was interrupted): this one stops too."""


@dataclass(frozen=True)
class World:
    """This process's place in a distributed job: ``rank`` of ``size`` processes, ``local_rank`` on its
    machine (its GPU), and the process group's ``backend``."""

    rank: int
    size: int
    local_rank: int
    backend: str

    @property
    def main(self) -> bool:
        """Rank 0: the one process that shows progress and writes checkpoints and the run."""
        return self.rank == 0

    def describe(self, batch_size: int, lr: float) -> dict[str, Any]:
        """What a run records of the job that trained it (``batch_size``: per process; ``lr`` as given)."""
        return {
            "world_size": self.size,
            "backend": self.backend,
            "batch_size_per_process": batch_size,
            "effective_batch": batch_size * self.size,
            "lr": lr,
        }


def launched() -> tuple[int, int, int] | None:
    """``(rank, world size, local rank)`` when torchrun started this process in a world of more than one."""
    try:
        rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    except (KeyError, ValueError):
        return None
    return (rank, size, int(os.environ.get("LOCAL_RANK", rank))) if size > 1 else None


_world: World | None = None
_cpu_group: Any = None  # a gloo group beside an NCCL one; None: the default group is gloo already


def current() -> World | None:
    """The world :func:`start` joined, or None in a plain process."""
    return _world


def start(device: str = "cpu") -> World | None:
    """Join the job torchrun started (NCCL for ``device`` cuda, gloo otherwise); None where there is none.

    On CUDA each process takes the GPU of its local rank (:func:`device_for`)."""
    global _world, _cpu_group
    place = launched()
    if place is None:
        return None
    if _world is not None:
        return _world
    rank, size, local_rank = place
    cuda = torch.device(device).type == "cuda"
    if cuda:
        if not torch.cuda.is_available():
            raise ReconadError(f"--device {device}: no CUDA GPU is available here (use --device cpu)")
        if local_rank >= torch.cuda.device_count():
            raise ReconadError(
                f"local rank {local_rank} has no GPU: this machine has {torch.cuda.device_count()} "
                "(use --nproc-per-node at most that)"
            )
        torch.cuda.set_device(local_rank)
    backend = "nccl" if cuda else "gloo"
    try:
        dist.init_process_group(backend, timeout=TIMEOUT)
        _cpu_group = dist.new_group(backend="gloo", timeout=TIMEOUT) if cuda else None
    except (RuntimeError, ValueError) as err:
        raise ReconadError(f"cannot join the torchrun job as rank {rank} of {size}: {err}") from None
    _world = World(rank, size, local_rank, backend)
    signal.signal(signal.SIGTERM, _stopped_by_launcher)
    return _world


def _stopped_by_launcher(signum: int, frame: Any) -> None:
    raise JobStopped("the job was stopped: another of its processes failed, or torchrun was interrupted")


def stop() -> None:
    """Leave the process group (after a last barrier, so no process exits while another still needs it)."""
    global _world, _cpu_group
    if _world is None:
        return
    try:
        dist.barrier(group=_cpu_group)
    finally:
        dist.destroy_process_group()
        _world, _cpu_group = None, None
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def abandon() -> None:
    """This process is leaving with its own error: ignore torchrun's ``SIGTERM`` from now on, so that the
    one line it prints is the last thing it says (no second traceback while it exits)."""
    if _world is not None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


@contextmanager
def job(device: str, stopped_hint: Callable[[], str] = str) -> Iterator[World | None]:
    """A command's life in a torchrun job: join it (:func:`start`; None outside torchrun, where nothing
    changes), and leave it (:func:`stop`) when the block ends. When another process fails, rank 0 ends with
    one :class:`JobStopped` line (plus ``stopped_hint()``: what the user can do) and the others end quietly
    (exit code 1); on this process's own error it says that error and nothing more (:func:`abandon`)."""
    world = start(device)
    try:
        yield world
    except JobStopped as stopped:
        abandon()
        if world is not None and not world.main:
            raise SystemExit(1) from None  # rank 0 says it, once
        raise JobStopped(f"{stopped}{stopped_hint()}") from None
    except BaseException:
        abandon()
        raise
    stop()


def device_for(world: World | None, device: str) -> str:
    """The device a process trains on: ``cuda:LOCAL_RANK`` for a CUDA job, ``device`` otherwise."""
    if world is not None and torch.device(device).type == "cuda":
        return f"cuda:{world.local_rank}"
    return device


@contextmanager
def collective(what: str) -> Iterator[None]:
    """Turn a failed collective (a peer gone: gloo's closed connection, NCCL's abort) into
    :class:`JobStopped` saying what was under way."""
    try:
        yield
    except RuntimeError as error:
        network = isinstance(error, getattr(dist, "DistError", ())) or any(w in str(error) for w in PEER_GONE)
        if not network:
            raise  # not the network: an error of this process
        gist = str(error).split("] ", 1)[-1].split(". ")[0]  # gloo: "[file:line] Read error …: by peer. …"
        raise JobStopped(f"another process of the job stopped during {what} ({gist})") from None


def gather_rows(local: Tensor, total: int, world: World) -> Tensor:
    """All ``total`` rows on every process, in order, where process ``r`` holds rows ``r, r + W, …``
    (``local``, ``[≤ ⌈total/W⌉, ...]``, CPU). Exchanged :data:`GATHER_ROWS` rows per process at a time."""
    share = -(-total // world.size)
    out = torch.empty((total, *local.shape[1:]), dtype=local.dtype)
    counts = [len(range(r, total, world.size)) for r in range(world.size)]
    with collective("the exchange of features"):
        for start in range(0, share, GATHER_ROWS):
            stop_ = min(share, start + GATHER_ROWS)
            block = local.new_zeros((stop_ - start, *local.shape[1:]))
            mine = local[start:stop_]
            block[: len(mine)] = mine
            parts = [torch.empty_like(block) for _ in range(world.size)]
            dist.all_gather(parts, block.contiguous(), group=_cpu_group)
            for r, part in enumerate(parts):
                n = max(0, min(counts[r], stop_) - start)
                out[r + start * world.size :: world.size][:n] = part[:n]
    return out


def broadcast(obj: Any, world: World) -> Any:
    """``obj`` of rank 0 on every process (small things: a checkpoint's state, a decision)."""
    box = [obj if world.main else None]
    with collective("the exchange of the training state"):
        dist.broadcast_object_list(box, src=0, group=_cpu_group)
    return box[0]


def mean(value: float, world: World) -> float:
    """The mean of ``value`` over the processes (the epoch's loss of the whole job)."""
    t = torch.tensor([value], dtype=torch.float64)
    with collective("training"):
        dist.all_reduce(t, group=_cpu_group)
    return float(t) / world.size
