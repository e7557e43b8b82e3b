"""What the distributed tests run under torchrun (``python -m torch.distributed.run ... THIS TASK OUT``): each
process does TASK and writes what the test checks to ``OUT/rank{R}.json`` (and safetensors files)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from reconad import distributed


def gather(world: distributed.World) -> dict:
    """Rows ``r, r + W, …`` on process ``r`` come back whole and in order on every process."""
    ok = {}
    for total in (7, 1, 2 * distributed.GATHER_ROWS * world.size + 3):
        rows = torch.arange(total, dtype=torch.float32).repeat_interleave(6).view(total, 2, 3)
        mine = rows[world.rank :: world.size]
        ok[total] = torch.equal(distributed.gather_rows(mine, total, world), rows)
    shared = distributed.broadcast({"epoch": 3, "rank": world.rank}, world)
    return {"gather": ok, "broadcast": shared, "mean": distributed.mean(float(world.rank), world)}


TASKS = {"gather": gather}


def main() -> None:
    task, out = sys.argv[1], Path(sys.argv[2])
    world = distributed.start("cpu")
    assert world is not None, "not started by torchrun"
    result = TASKS[task](world)
    (out / f"rank{world.rank}.json").write_text(json.dumps(result))
    distributed.stop()


if __name__ == "__main__":
    main()
