"""The training loop of the unified feature-reconstruction models (RLR, UniAD-style).

The clean standardised features are the target; the input is the same features plus feature jitter (Gaussian
noise, per-token std ``jitter_scale · ‖f‖ / C``, applied with probability ``jitter_prob``); the loss is
``MSE + mean(1 − cosine)`` per level, summed over levels; Adam, fixed epochs, a constant or cosine learning
rate. Every random draw comes from one generator seeded with ``seed`` whose state the checkpoints save, so a
resumed run ends with exactly the weights an uninterrupted one would have.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reconad.models.checkpoints import Checkpoints

#: ``progress(epoch, epochs, mean_loss)``, called after every epoch.
Progress = Callable[[int, int, float], None]
#: How the learning rate moves over training (see :func:`learning_rate`).
LR_SCHEDULES = ("constant", "cosine")


class TrainingParams(Protocol):
    """The hyper-parameters the trainer reads (a :class:`~reconad.models.reconstruction.ReconstructionModel`
    has them all)."""

    epochs: int
    batch_size: int
    lr: float
    lr_schedule: str
    jitter_scale: float
    jitter_prob: float
    seed: int


def learning_rate(lr: float, schedule: str, step: int, total: int) -> float:
    """The learning rate of optimizer step ``step`` of ``total``: ``lr`` throughout (``"constant"``), or
    ``lr · ½(1 + cos(π·step/total))`` (``"cosine"``, annealed towards zero over the training).

    It depends only on the step index, so a resumed run follows the same schedule."""
    if schedule == "cosine":
        return lr * 0.5 * (1.0 + math.cos(math.pi * step / max(total, 1)))
    return lr


def feature_jitter(x: Tensor, scale: float, prob: float, generator: torch.Generator) -> Tensor:
    """``x`` (``[B, N, C]``) plus Gaussian noise of per-token std ``scale · ‖x_token‖ / C``, each image
    jittered with probability ``prob``. Noise is drawn on the CPU from ``generator`` (the same on any
    device)."""
    if scale <= 0 or prob <= 0:
        return x
    b, _, c = x.shape
    noise = torch.randn(x.shape, generator=generator).to(x.device)
    keep = (torch.rand(b, generator=generator) < prob).to(x.device, x.dtype).view(b, 1, 1)
    return x + noise * (x.norm(dim=-1, keepdim=True) / c) * scale * keep


def train(
    nets: nn.ModuleList,
    levels: Sequence[Tensor],
    params: TrainingParams,
    *,
    device: torch.device,
    losses: list[float],
    checkpoints: Checkpoints | None = None,
    resume: bool = False,
    progress: Progress | None = None,
) -> None:
    """Train ``nets`` (one per level, each with a ``standardise`` method) to reconstruct the raw level
    tokens ``levels`` (``[N, tokens, C_l]`` each) from their jittered copies; the mean loss of every epoch is
    appended to ``losses``. With ``checkpoints`` a checkpoint is written after every epoch, and
    ``resume=True`` continues from the last one (``losses`` then starts with its losses)."""
    optimizer = torch.optim.Adam(nets.parameters(), lr=params.lr)
    generator = torch.Generator().manual_seed(params.seed)
    start = 0
    if checkpoints is not None:
        checkpoints.directory.mkdir(parents=True, exist_ok=True)
        restored = checkpoints.load(nets, optimizer, generator, device) if resume else None
        if restored is not None:
            start, losses[:] = restored
    n = levels[0].shape[0]
    steps = math.ceil(n / params.batch_size)
    nets.train()
    for epoch in range(start, params.epochs):
        order = torch.randperm(n, generator=generator)
        total, batches = 0.0, 0
        for i in range(0, n, params.batch_size):
            idx = order[i : i + params.batch_size]
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(
                    params.lr, params.lr_schedule, epoch * steps + batches, params.epochs * steps
                )
            loss = torch.zeros((), device=device)
            for net, x in zip(nets, levels, strict=True):
                clean = net.standardise(x[idx].to(device))
                rec = net(feature_jitter(clean, params.jitter_scale, params.jitter_prob, generator))
                cos = F.cosine_similarity(rec, clean, dim=-1, eps=1e-6)
                loss = loss + F.mse_loss(rec, clean) + (1 - cos).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
            batches += 1
        losses.append(total / batches)
        if checkpoints is not None:
            checkpoints.save(epoch + 1, nets, optimizer, generator, losses)
        if progress is not None:
            progress(epoch + 1, params.epochs, losses[-1])
    nets.eval()
