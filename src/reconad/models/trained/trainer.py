"""The training loop of the unified feature-reconstruction models (RLR, RLR-selfref, UniAD).

The clean (standardised) features are the target; the input is the same features plus feature jitter
(Gaussian noise drawn in raw feature units, per-token std ``jitter_scale · ‖f_raw‖ / C`` as the official
recipe, applied with probability ``jitter_prob``, then standardised with the features, i.e. divided by
``feature_std``: the same noise whatever space the network works in); the loss is
``MSE + mean(1 − cosine)`` per level, summed over levels; Adam, fixed epochs, a constant or cosine learning
rate. Every random draw comes from one generator seeded with ``seed`` whose state the checkpoints save, so a
resumed run ends with exactly the weights an uninterrupted one would have.

In a torchrun job (``world``, :mod:`reconad.distributed`) the loss module is wrapped in
DistributedDataParallel (gradients averaged over the processes after every step, so every process holds the
same weights) and each process takes its part of every epoch's order through a DistributedSampler:
``batch_size`` images per process and step, an effective batch of ``batch_size × W``. Every process draws the
same permutation and the jitter noise of the whole effective batch from the one seeded generator and uses its
own rows, so W processes follow the draws of one process training with the effective batch (the same model
up to float rounding) and one generator state, saved by rank 0, resumes them all. On CUDA the forward runs
under autocast (bf16, or fp16 with gradient scaling where the GPU has no bf16); on the CPU in float32.

A model may bring its own loss, optimizer and gradient clipping (:class:`Recipe`; UniAD: MSE on raw features,
AdamW, clipped gradients), and ``lr_schedule="step"`` keeps ``lr`` until the last fifth of the steps, then
``lr / 10`` (UniAD's StepLR).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data.distributed import DistributedSampler

from reconad import distributed
from reconad.distributed import World
from reconad.models.trained.checkpoints import Checkpoints

#: ``progress(epoch, epochs, mean_loss)``, called after every epoch.
Progress = Callable[[int, int, float], None]
#: How the learning rate moves over training (see :func:`learning_rate`).
LR_SCHEDULES = ("constant", "cosine", "step")
#: ``"step"``: the learning rate times 0.1 from this fraction of the steps on (UniAD's StepLR: epoch 800 of
#: 1000).
STEP_AT = 0.8


class TrainingParams(Protocol):
    """The hyper-parameters the trainer reads (a :class:`~reconad.models.trained.unified.UnifiedModel`
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
    ``lr · ½(1 + cos(π·step/total))`` (``"cosine"``, annealed towards zero over the training), or ``lr`` and
    ``lr / 10`` from :data:`STEP_AT` of the steps on (``"step"``).

    It depends only on the step index, so a resumed run follows the same schedule."""
    if schedule == "cosine":
        return lr * 0.5 * (1.0 + math.cos(math.pi * step / max(total, 1)))
    if schedule == "step":
        return lr * 0.1 if step >= STEP_AT * total else lr
    return lr


def feature_jitter(
    x: Tensor, scale: float, prob: float, generator: torch.Generator, world: World | None = None
) -> Tensor:
    """``x`` (``[B, N, C]``) plus Gaussian noise of per-token std ``scale · ‖x_token‖ / C``, each image
    jittered with probability ``prob``. Noise is drawn on the CPU from ``generator`` (the same on any
    device). In a ``world`` of W processes the noise of all ``B·W`` images of the step is drawn and this
    process keeps rows ``rank, rank + W, …`` (its images' places in the effective batch)."""
    if scale <= 0 or prob <= 0:
        return x
    b, _, c = x.shape
    if world is None:
        noise = torch.randn(x.shape, generator=generator).to(x.device)
        keep = (torch.rand(b, generator=generator) < prob).to(x.device, x.dtype).view(b, 1, 1)
    else:
        rows = slice(world.rank, None, world.size)
        noise = torch.randn((b * world.size, *x.shape[1:]), generator=generator)[rows].to(x.device)
        keep = (torch.rand(b * world.size, generator=generator) < prob)[rows]
        keep = keep.to(x.device, x.dtype).view(b, 1, 1)
    return x + noise * (x.norm(dim=-1, keepdim=True) / c) * scale * keep


#: ``loss(nets, batch, generator, world)``: the training loss of one batch; ``batch`` holds each level's rows
#: of the step, on the device.
LossFn = Callable[[nn.ModuleList, list[Tensor], torch.Generator, World | None], Tensor]


@dataclass(frozen=True)
class Recipe:
    """What a model may set of the training step; ``None`` keeps RLR's: the jittered standardised
    reconstruction loss (:class:`BatchLoss`), Adam at ``lr``, no gradient clipping."""

    loss: LossFn | None = None
    optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer] | None = None
    clip_norm: float | None = None  # the gradients' largest global L2 norm


#: Buffers (the feature standardisation) are equal everywhere and fixed: DDP need not send them every step
#: (``forward_sync_buffers`` replaces ``broadcast_buffers`` in newer torch).
NO_BUFFER_SYNC = (
    {"forward_sync_buffers": False}
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters
    else {"broadcast_buffers": False}
)


class BatchLoss(nn.Module):
    """The training loss of one batch, summed over levels: the module DistributedDataParallel wraps (the
    level tokens stay outside it, on the CPU; only each batch moves to the device)."""

    def __init__(
        self,
        nets: nn.ModuleList,
        levels: Sequence[Tensor],
        params: TrainingParams,
        device: torch.device,
        world: World | None,
        loss: LossFn | None = None,
    ) -> None:
        super().__init__()
        self.nets, self.levels, self.params, self.device, self.world = nets, levels, params, device, world
        self.loss = loss

    def forward(self, idx: Tensor, generator: torch.Generator) -> Tensor:
        if self.loss is not None:  # the model's own (:class:`Recipe`)
            return self.loss(self.nets, [x[idx].to(self.device) for x in self.levels], generator, self.world)
        p = self.params
        loss = torch.zeros((), device=self.device)
        for net, x in zip(self.nets, self.levels, strict=True):
            raw = x[idx].to(self.device)
            clean = net.standardise(raw)
            noisy = feature_jitter(raw, p.jitter_scale, p.jitter_prob, generator, self.world)
            rec = net(net.standardise(noisy))
            cos = F.cosine_similarity(rec, clean, dim=-1, eps=1e-6)
            loss = loss + F.mse_loss(rec, clean) + (1 - cos).mean()
        return loss


class Precision:
    """How a step computes: float32 on the CPU; on CUDA autocast to bf16, or to fp16 with gradient
    scaling where the GPU has no bf16."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        bf16 = self.cuda and torch.cuda.is_bf16_supported()
        self.dtype = torch.bfloat16 if bf16 else torch.float16
        self.scaler = torch.amp.GradScaler("cuda") if self.cuda and not bf16 else None

    def autocast(self) -> AbstractContextManager:
        return torch.autocast("cuda", dtype=self.dtype) if self.cuda else nullcontext()

    def step(self, loss: Tensor, optimizer: torch.optim.Optimizer, clip_norm: float | None = None) -> None:
        """Backward and optimizer step (scaled where fp16 needs it), the gradients first clipped to a global
        L2 norm of ``clip_norm`` when given."""
        if self.scaler is None:
            loss.backward()
            clip_gradients(optimizer, clip_norm)
            optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            if clip_norm is not None:
                self.scaler.unscale_(optimizer)
            clip_gradients(optimizer, clip_norm)
            self.scaler.step(optimizer)
            self.scaler.update()


def clip_gradients(optimizer: torch.optim.Optimizer, clip_norm: float | None) -> None:
    """Scale the gradients of every parameter ``optimizer`` steps to a global L2 norm of at most
    ``clip_norm`` (``None``: leave them)."""
    if clip_norm is not None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, clip_norm)


def positions(n: int, world: World | None) -> Tensor:
    """The places in each epoch's order of ``n`` images that this process trains on: all of them in one
    process; in a world of W, DistributedSampler's share (``rank, rank + W, …`` of the order padded to a
    multiple of W by repeating its first places, as DistributedSampler pads)."""
    if world is None:
        return torch.arange(n)
    sampler = DistributedSampler(range(n), num_replicas=world.size, rank=world.rank, shuffle=False)
    return torch.tensor(list(sampler), dtype=torch.long)


def restore(
    checkpoints: Checkpoints,
    nets: nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    device: torch.device,
    world: World | None,
) -> tuple[int, list[float]] | None:
    """The last checkpoint's state into ``nets``, ``optimizer`` and ``generator`` (its epoch and losses; None
    where there is none). In a world, rank 0 reads it and every process gets the same state."""
    found = checkpoints.read() if world is None or world.main else None
    if world is not None:
        found = distributed.broadcast(found, world)
    return None if found is None else checkpoints.apply(found, nets, optimizer, generator, device)


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
    world: World | None = None,
    recipe: Recipe | None = None,
) -> None:
    """Train ``nets`` (one per level, each with a ``standardise`` method) to reconstruct the level tokens
    ``levels`` (raw, ``[N, tokens, C_l]`` each; target and input pass through ``standardise``) from their
    jittered copies; the mean loss of every epoch is appended to ``losses``. With ``checkpoints`` a checkpoint
    is written after every epoch (by rank 0 in a ``world``), and ``resume=True`` continues from the last one
    (``losses`` then starts with its losses).
    ``recipe``: a model's own loss, optimizer and gradient clipping (:class:`Recipe`; default RLR's)."""
    recipe = recipe or Recipe()
    if recipe.optimizer is not None:
        optimizer = recipe.optimizer(nets.parameters())
    else:
        optimizer = torch.optim.Adam(nets.parameters(), lr=params.lr)
    generator = torch.Generator().manual_seed(params.seed)
    writer = world is None or world.main
    start = 0
    if checkpoints is not None:
        if writer:
            checkpoints.directory.mkdir(parents=True, exist_ok=True)
        restored = restore(checkpoints, nets, optimizer, generator, device, world) if resume else None
        if restored is not None:
            start, losses[:] = restored
    n = levels[0].shape[0]
    mine = positions(n, world)
    steps = math.ceil(len(mine) / params.batch_size)
    loss_of = BatchLoss(nets, levels, params, device, world, recipe.loss)
    if world is not None:  # DDP starts every process from rank 0's weights (a resumed rank 0's too)
        with distributed.collective("the start of training"):
            loss_of = DistributedDataParallel(loss_of, device_ids=None, **NO_BUFFER_SYNC)
    precision = Precision(device)
    nets.train()
    for epoch in range(start, params.epochs):
        order = torch.randperm(n, generator=generator)
        if world is not None:
            order = order[mine]
        total, batches = 0.0, 0
        for i in range(0, len(order), params.batch_size):
            idx = order[i : i + params.batch_size]
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(
                    params.lr, params.lr_schedule, epoch * steps + batches, params.epochs * steps
                )
            with precision.autocast():
                loss = loss_of(idx, generator)
            optimizer.zero_grad(set_to_none=True)
            with distributed.collective("training") if world is not None else nullcontext():
                precision.step(loss, optimizer, recipe.clip_norm)
            total += float(loss.detach())
            batches += 1
        losses.append(total / batches if world is None else distributed.mean(total / batches, world))
        if checkpoints is not None and writer:
            checkpoints.save(epoch + 1, nets, optimizer, generator, losses)
        if progress is not None:
            progress(epoch + 1, params.epochs, losses[-1])
    nets.eval()
