"""What the distributed tests run under torchrun (``python -m torch.distributed.run ... THIS TASK OUT``): each
process does TASK and writes what the test checks to ``OUT/rank{R}.json`` (and safetensors files)."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from reconad import distributed
from reconad.models.base import create_model


def gather(world: distributed.World) -> dict:
    """Rows ``r, r + W, …`` on process ``r`` come back whole and in order on every process."""
    ok = {}
    for total in (7, 1, 2 * distributed.GATHER_ROWS * world.size + 3):
        rows = torch.arange(total, dtype=torch.float32).repeat_interleave(6).view(total, 2, 3)
        mine = rows[world.rank :: world.size]
        ok[total] = torch.equal(distributed.gather_rows(mine, total, world), rows)
    shared = distributed.broadcast({"epoch": 3, "rank": world.rank}, world)
    return {"gather": ok, "broadcast": shared, "mean": distributed.mean(float(world.rank), world)}


SMALL = {"level_channels": (8, 16), "level_grids": (8, 4), "widths": [16, 16], "device": "cpu"}


def features(n: int = 8) -> torch.Tensor:
    """The same small generated features ``[n, 24, 8, 8]`` on every process."""
    return torch.randn(n, 24, 8, 8, generator=torch.Generator().manual_seed(0))


def weights_digest(model) -> str:
    """A hash of every weight's bytes: equal digests, bit-identical weights."""
    h = hashlib.sha256()
    for v in model.nets_.state_dict().values():
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def save_weights(model, file: Path) -> None:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(file))


def train(world: distributed.World, out: Path, jitter: str) -> dict:
    """3 epochs of RLR, 2 images per process and step (``jitter`` "off" or "on"); rank 0 saves the weights.
    Every process records its weights' digest after every step (one step per epoch: 4 images, 2 processes)."""
    n = 8 if jitter == "off" else 4
    params = {"jitter_scale": 0.0} if jitter == "off" else {"epochs": 6}
    model = create_model("rlr", **SMALL, **{"epochs": 3, "batch_size": 2, **params})
    digests: list[str] = []
    model.fit(features(n), world=world, progress=lambda *_: digests.append(weights_digest(model)))
    if world.main:
        save_weights(model, out / f"ddp-{jitter}.safetensors")
    return {"digests": digests, "losses": model.loss_history_}


def resume(world: distributed.World, out: Path) -> dict:
    """4 epochs straight, and 2 epochs with checkpoints then a resume to 4: the same weights."""

    def model(epochs: int):
        return create_model("rlr", **SMALL, epochs=epochs, batch_size=2, lr_schedule="constant")

    straight = model(4).fit(features(), world=world)
    model(2).fit(features(), checkpoint_dir=out / "ckpt", world=world)
    resumed = model(4).fit(features(), checkpoint_dir=out / "ckpt", resume=True, world=world)
    return {
        "equal": weights_digest(straight) == weights_digest(resumed),
        "losses": [straight.loss_history_, resumed.loss_history_],
    }


TASKS = {
    "gather": lambda world, out: gather(world),
    "train-jitter-off": lambda world, out: train(world, out, "off"),
    "train-jitter-on": lambda world, out: train(world, out, "on"),
    "resume": resume,
}


def main() -> None:
    task, out = sys.argv[1], Path(sys.argv[2])
    world = distributed.start("cpu")
    assert world is not None, "not started by torchrun"
    result = TASKS[task](world, out)
    (out / f"rank{world.rank}.json").write_text(json.dumps(result))
    distributed.stop()


if __name__ == "__main__":
    main()
