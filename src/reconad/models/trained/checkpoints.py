"""The level networks' state dict (one path, for saved runs and for checkpoints) and the per-epoch checkpoints
of a unified model's training.

After every epoch a checkpoint is written atomically: weights, Adam state and the generator's RNG state to
``NAME-epochNNNN.safetensors``, then ``NAME-checkpoint.json`` (epoch, hyper-parameters, a fingerprint of the
training data, the losses so far) that names it. Resuming restores all of it, so a resumed run ends with
exactly the weights an uninterrupted one would have.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from reconad.atomic import atomic_file, atomic_path
from reconad.errors import ReconadError

#: 2: the nets and features of state format 2 (:attr:`UnifiedModel.state_format`); others are refused.
CHECKPOINT_FORMAT = 2
#: Hyper-parameters that may differ between an interrupted run and its resumption.
RESUMABLE_CHANGES = ("epochs", "device")


def nets_state(nets: nn.Module) -> dict[str, Tensor]:
    """The networks' weights and buffers as ``net.KEY`` CPU tensors (a run's and a checkpoint's weights)."""
    return {f"net.{k}": v.detach().cpu().contiguous() for k, v in nets.state_dict().items()}


def load_nets_state(nets: nn.Module, state: dict[str, Tensor]) -> None:
    """Load the ``net.KEY`` entries of ``state`` (written by :func:`nets_state`) into ``nets``."""
    nets.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("net.")})


def fingerprint(levels: Sequence[Tensor]) -> list[float]:
    """A cheap identity of the training data (shape + sums), so a resume on different data is refused."""
    out: list[float] = [float(levels[0].shape[0])]
    for x in levels:
        x64 = x.double()
        out += [float(x64.sum()), float(x64.pow(2).sum())]
    return out


@dataclass(frozen=True)
class Checkpoints:
    """The checkpoints of one training run in ``directory``: ``model`` (its name) names the files; ``config``
    (its hyper-parameters), ``data`` (the :func:`fingerprint` of its features) and ``world_size`` must
    match to resume."""

    directory: Path
    model: str
    config: dict[str, Any]
    data: list[float]
    world_size: int = 1  # processes of the torchrun job that trains (a resume needs as many)

    @property
    def meta_path(self) -> Path:
        return self.directory / f"{self.model}-checkpoint.json"

    def _resumable_config(self) -> dict[str, Any]:
        return {k: v for k, v in self.config.items() if k not in RESUMABLE_CHANGES}

    def save(
        self,
        epoch: int,
        nets: nn.Module,
        optimizer: torch.optim.Optimizer,
        generator: torch.Generator,
        losses: list[float],
    ) -> None:
        """Weights, Adam state and RNG state to ``NAME-epochNNNN.safetensors``, then the JSON that names it
        (the JSON replace is the commit point), then the previous epoch's file is removed."""
        tensors = nets_state(nets)
        for pid, st in optimizer.state_dict()["state"].items():
            for key, val in st.items():
                tensors[f"optim.{pid}.{key}"] = torch.as_tensor(val).detach().cpu().contiguous()
        tensors["rng"] = generator.get_state()
        weights = f"{self.model}-epoch{epoch:04d}.safetensors"
        with atomic_path(self.directory / weights) as tmp:
            save_file(tensors, str(tmp))
        meta = {
            "format": CHECKPOINT_FORMAT,
            "model": self.model,
            "epoch": epoch,
            "epochs": self.config["epochs"],
            "weights": weights,
            "config": self._resumable_config(),
            "data": self.data,
            "losses": losses,
        }
        if self.world_size != 1:
            meta["world_size"] = self.world_size
        path = self.meta_path
        old = json.loads(path.read_text())["weights"] if path.exists() else None
        with atomic_file(path) as f:
            json.dump(meta, f, indent=1)
        if old and old != weights:
            with contextlib.suppress(OSError):
                (self.directory / old).unlink()

    def read(self) -> tuple[dict[str, Any], dict[str, Tensor]] | None:
        """The last checkpoint's JSON and tensors, checked against this run (None: no checkpoint)."""
        path = self.meta_path
        if not path.exists():
            return None
        try:
            meta = json.loads(path.read_text())
            tensors = load_file(str(self.directory / meta["weights"]))
        except (OSError, ValueError, KeyError) as err:
            raise ReconadError(f"cannot resume from {path}: {err}") from None
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise ReconadError(f"cannot resume from {path}: written by an older reconad (start afresh)")
        config = json.loads(json.dumps(self._resumable_config()))
        if meta.get("model") != self.model or meta.get("config") != config:
            raise ReconadError(f"cannot resume from {path}: it was written with other hyper-parameters")
        pairs = zip(meta["data"], self.data, strict=True)
        if not all(math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6) for a, b in pairs):
            raise ReconadError(f"cannot resume from {path}: it was trained on other features")
        written = meta.get("world_size", 1)
        if written != self.world_size:
            raise ReconadError(
                f"cannot resume from {path}: it was written by a job of {written} process(es), this one has "
                f"{self.world_size} (the effective batch would change): resume with {written}"
            )
        return meta, tensors

    def apply(
        self,
        found: tuple[dict[str, Any], dict[str, Tensor]],
        nets: nn.Module,
        optimizer: torch.optim.Optimizer,
        generator: torch.Generator,
        device: torch.device,
    ) -> tuple[int, list[float]]:
        """Put what :meth:`read` found into ``nets``, ``optimizer`` and ``generator``; returns its epoch
        and losses."""
        meta, tensors = found
        load_nets_state(nets, tensors)
        fresh = optimizer.state_dict()
        state: dict[int, dict[str, Tensor]] = {}
        for key, val in tensors.items():
            if key.startswith("optim."):
                _, pid, name = key.split(".", 2)
                state.setdefault(int(pid), {})[name] = val.to(device) if name != "step" else val
        optimizer.load_state_dict({"state": state, "param_groups": fresh["param_groups"]})
        generator.set_state(tensors["rng"])
        return int(meta["epoch"]), [float(x) for x in meta["losses"]]
