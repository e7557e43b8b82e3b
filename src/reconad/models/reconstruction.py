"""The shared trainer for feature-reconstruction transformers (RLR, UniAD-style): one network per feature
level, every category trained together (a *unified* model).

Each level is standardised per channel with the mean and standard deviation of its training features
(stored with the weights): the network starts at the right scale, which matters on a short CPU schedule,
and every channel counts alike in the loss and the score. Training: the clean standardised features are the
target; the input is the same features plus feature jitter (Gaussian noise, per-token std
``jitter_scale · ‖f‖ / C``, applied with probability ``jitter_prob``); the loss is ``MSE + mean(1 − cosine)``
per level, summed over levels; Adam, fixed epochs. After every epoch a checkpoint is written atomically
(safetensors for weights, optimizer state and RNG state; JSON for the epoch), so ``fit(..., resume=True)``
continues where an interrupted run stopped and ends with exactly the weights an uninterrupted run would
have (every random draw comes from one seeded generator whose state is saved).

Score: per level, channel-mean squared error + (1 − cosine) between standardised features and their
reconstruction, bilinearly upsampled to the finest grid and averaged over levels.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from reconad.errors import ReconadError
from reconad.models.base import init_config

Progress = Callable[[int, int, float], None]
CHECKPOINT_FORMAT = 1


def sincos_position_2d(hw: tuple[int, int], width: int) -> Tensor:
    """Fixed 2-D sine-cosine position embedding ``[h·w, width]`` (half the channels encode y, half x)."""
    if width % 4:
        raise ValueError(f"width must be a multiple of 4 for a 2-D sine-cosine embedding, got {width}")
    quarter = width // 4
    freq = 1.0 / (10000.0 ** (torch.arange(quarter, dtype=torch.float64) / quarter))
    ys, xs = torch.meshgrid(
        torch.arange(hw[0], dtype=torch.float64), torch.arange(hw[1], dtype=torch.float64), indexing="ij"
    )
    parts = []
    for coord in (ys.reshape(-1, 1), xs.reshape(-1, 1)):
        angle = coord * freq
        parts += [angle.sin(), angle.cos()]
    return torch.cat(parts, dim=1).float()


def default_window(side: int) -> int:
    """The attention window for a grid side: 7 on 32, 5 on 16 (RLR's choices), ~3/16 of the side, odd, ≥ 3."""
    return max(3, 2 * round(side * 3 / 32) + 1)


class TokenReconstructor(nn.Module):
    """One level's network: linear embedding + fixed position embedding → :meth:`encode` → LayerNorm → linear
    projection back to the feature width. Subclasses implement :meth:`encode` (``[B, N, width]`` tokens).
    ``feature_mean`` / ``feature_std`` (buffers, set by the trainer) standardise the level's raw features."""

    def __init__(self, channels: int, width: int, hw: tuple[int, int]) -> None:
        super().__init__()
        self.hw = hw
        self.register_buffer("feature_mean", torch.zeros(channels))
        self.register_buffer("feature_std", torch.ones(channels))
        self.embed = nn.Linear(channels, width)
        self.register_buffer("pos", sincos_position_2d(hw, width), persistent=False)
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, channels)

    def encode(self, tokens: Tensor) -> Tensor:
        raise NotImplementedError

    def standardise(self, features: Tensor) -> Tensor:
        """Raw ``[B, N, C]`` level features → per-channel standardised features (the space of the loss)."""
        return (features - self.feature_mean) / self.feature_std

    def forward(self, features: Tensor) -> Tensor:
        """``[B, N, C]`` standardised (possibly jittered) features → ``[B, N, C]`` reconstruction."""
        return self.out(self.norm(self.encode(self.embed(features) + self.pos)))


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


def reconstruction_error(x: Tensor, rec: Tensor) -> Tensor:
    """Per-token channel-mean squared error + (1 − cosine similarity): ``[..., C]`` → ``[...]``."""
    return (rec - x).pow(2).mean(dim=-1) + 1 - F.cosine_similarity(rec, x, dim=-1, eps=1e-6)


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Write via ``write(tmp_path)`` to a temporary file beside ``path``, then ``os.replace`` it in place."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _fingerprint(levels: Sequence[Tensor]) -> list[float]:
    """A cheap identity of the training data (shape + sums), so a resume on different data is refused."""
    out: list[float] = [float(levels[0].shape[0])]
    for x in levels:
        x64 = x.double()
        out += [float(x64.sum()), float(x64.pow(2).sum())]
    return out


#: How the learning rate moves over training (see :meth:`ReconstructionModel.learning_rate`).
LR_SCHEDULES = ("constant", "cosine")


class ReconstructionModel:
    """Base of the unified feature-reconstruction models. Subclasses set ``name`` and implement
    :meth:`make_level`; the constructor arguments below are shared hyper-parameters.

    ``widths``, ``windows``: one per level (``None``: the defaults); ``epochs`` is fixed (no early stopping on
    any split); ``device="auto"`` trains and predicts on CUDA when available.
    """

    name: ClassVar[str] = "reconstruction"
    unified: ClassVar[bool] = True

    def __init__(
        self,
        level_channels: Sequence[int] = (40, 112),
        level_grids: Sequence[int] = (32, 16),
        widths: Sequence[int] | None = None,
        layers: int = 2,
        heads: int = 4,
        ff_mult: int = 2,
        windows: Sequence[int] | None = None,
        jitter_scale: float = 4.0,
        jitter_prob: float = 1.0,
        epochs: int = 30,
        batch_size: int = 4,
        lr: float = 1e-3,
        seed: int = 0,
        device: str = "auto",
        lr_schedule: str = "cosine",
    ) -> None:
        if lr_schedule not in LR_SCHEDULES:
            raise ReconadError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {lr_schedule!r}")
        self.lr_schedule = lr_schedule
        self.level_channels = [int(c) for c in level_channels]
        self.level_grids = [int(g) for g in level_grids]
        n = len(self.level_channels)
        if len(self.level_grids) != n or n == 0:
            raise ReconadError(
                "level_channels and level_grids must name the same (non-zero) number of levels"
            )
        if any(self.level_grids[0] % g for g in self.level_grids):
            raise ReconadError(f"every level grid must divide the finest one, got {self.level_grids}")
        self.widths = [int(w) for w in widths] if widths is not None else None
        self.windows = [int(w) for w in windows] if windows is not None else None
        for what, val in (("widths", self.widths), ("windows", self.windows)):
            if val is not None and len(val) != n:
                raise ReconadError(f"{what} must give one value per level ({n}), got {val}")
        self.layers, self.heads, self.ff_mult = int(layers), int(heads), int(ff_mult)
        self.jitter_scale, self.jitter_prob = float(jitter_scale), float(jitter_prob)
        self.epochs, self.batch_size, self.lr, self.seed = int(epochs), int(batch_size), float(lr), int(seed)
        self.device = device
        self.nets_: nn.ModuleList | None = None
        self.level_hw_: list[tuple[int, int]] | None = None
        self.loss_history_: list[float] = []

    # --- what subclasses provide -------------------------------------------------------------------------
    def make_level(self, channels: int, width: int, hw: tuple[int, int], window: int) -> TokenReconstructor:
        """The reconstruction network of one level."""
        raise NotImplementedError

    def default_widths(self) -> list[int]:
        """Per-level token width when ``widths`` is None: the CPU recipe (see docs/rlr.md)."""
        return [64 if c <= 64 else 128 for c in self.level_channels]

    # --- helpers -----------------------------------------------------------------------------------------
    def _device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def _check(self, features: Tensor) -> None:
        channels = sum(self.level_channels)
        if features.dim() != 4 or features.shape[1] != channels:
            raise ReconadError(
                f"{self.name} expects features [N, {channels}, h, w], got {list(features.shape)}"
            )
        if self.level_hw_ is not None and self._level_hw(features) != self.level_hw_:
            raise ReconadError(
                f"{self.name} was fitted on {self.level_hw_[0]} patch grids, got {tuple(features.shape[-2:])}"
            )

    def _level_hw(self, features: Tensor) -> list[tuple[int, int]]:
        h, w = features.shape[-2:]
        ratios = [self.level_grids[0] // g for g in self.level_grids]
        if any(h % r or w % r for r in ratios):
            raise ReconadError(f"a {h}×{w} grid cannot be pooled by the level ratios {ratios}")
        return [(h // r, w // r) for r in ratios]

    def split_levels(self, features: Tensor) -> list[Tensor]:
        """``[N, C, h, w]`` → per level ``[N, h_l·w_l, C_l]`` tokens on the level's own grid.

        The extractor upsampled coarser levels (bilinear) to the finest grid; ``avg_pool2d`` by the grid ratio
        is its near-inverse (for 2×: exact up to a [1/8, 3/4, 1/8] blur per axis), recovering the level's own
        resolution, where its window sizes and token count were meant."""
        out, start = [], 0
        for c, g in zip(self.level_channels, self.level_grids, strict=True):
            x = features[:, start : start + c].float()
            start += c
            ratio = self.level_grids[0] // g
            if ratio > 1:
                x = F.avg_pool2d(x, ratio)
            out.append(x.flatten(2).transpose(1, 2).contiguous())
        return out

    def _build(self, level_hw: list[tuple[int, int]]) -> None:
        widths = self.widths or self.default_widths()
        windows = self.windows or [default_window(min(hw)) for hw in level_hw]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            nets = [
                self.make_level(c, wd, hw, win)
                for c, wd, hw, win in zip(self.level_channels, widths, level_hw, windows, strict=True)
            ]
        self.nets_ = nn.ModuleList(nets).to(self._device())
        self.level_hw_ = level_hw

    # --- training ----------------------------------------------------------------------------------------
    def fit(
        self,
        features: Tensor,
        categories: list[str] | None = None,
        checkpoint_dir: Path | None = None,
        resume: bool = False,
        progress: Progress | None = None,
    ) -> ReconstructionModel:
        """Train one network per level on the good ``features`` ``[N, C, h, w]`` of every category at once.

        ``categories`` is accepted for the contract and ignored (the model is unified). With
        ``checkpoint_dir`` a checkpoint is written after every epoch; ``resume=True`` continues from the last
        one there (same data and hyper-parameters required; ``epochs`` may be raised).
        ``progress(epoch, epochs, mean_loss)`` is called after every epoch.
        """
        self._check(features)
        if features.shape[0] == 0:
            raise ReconadError(f"{self.name} needs at least one training image")
        levels = self.split_levels(features)
        self._build(self._level_hw(features))
        assert self.nets_ is not None
        for net, x in zip(self.nets_, levels, strict=True):
            flat = x.reshape(-1, x.shape[-1]).double()
            net.feature_mean.copy_(flat.mean(dim=0).float())
            net.feature_std.copy_(flat.std(dim=0).clamp_min(1e-6).float())
        device = self._device()
        optimizer = torch.optim.Adam(self.nets_.parameters(), lr=self.lr)
        generator = torch.Generator().manual_seed(self.seed)
        fingerprint = _fingerprint(levels)
        start, self.loss_history_ = 0, []
        ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
        if ckpt is not None:
            ckpt.mkdir(parents=True, exist_ok=True)
            if resume:
                start = self._load_checkpoint(ckpt, optimizer, generator, fingerprint)
        n = features.shape[0]
        steps = math.ceil(n / self.batch_size)
        self.nets_.train()
        for epoch in range(start, self.epochs):
            order = torch.randperm(n, generator=generator)
            total, batches = 0.0, 0
            for i in range(0, n, self.batch_size):
                idx = order[i : i + self.batch_size]
                for group in optimizer.param_groups:
                    group["lr"] = self.learning_rate(epoch * steps + batches, self.epochs * steps)
                loss = torch.zeros((), device=device)
                for net, x in zip(self.nets_, levels, strict=True):
                    clean = net.standardise(x[idx].to(device))
                    rec = net(feature_jitter(clean, self.jitter_scale, self.jitter_prob, generator))
                    cos = F.cosine_similarity(rec, clean, dim=-1, eps=1e-6)
                    loss = loss + F.mse_loss(rec, clean) + (1 - cos).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach())
                batches += 1
            self.loss_history_.append(total / batches)
            if ckpt is not None:
                self._save_checkpoint(ckpt, epoch + 1, optimizer, generator, fingerprint)
            if progress is not None:
                progress(epoch + 1, self.epochs, self.loss_history_[-1])
        self.nets_.eval()
        return self

    def learning_rate(self, step: int, total: int) -> float:
        """The learning rate of optimizer step ``step`` of ``total``: ``lr`` throughout (``"constant"``), or
        ``lr · ½(1 + cos(π·step/total))`` (``"cosine"``, annealed towards zero over the ``epochs``).

        It depends only on the step index, so a resumed run follows the same schedule."""
        if self.lr_schedule == "cosine":
            return self.lr * 0.5 * (1.0 + math.cos(math.pi * step / max(total, 1)))
        return self.lr

    # --- checkpoints -------------------------------------------------------------------------------------
    def _ckpt_json(self, ckpt: Path) -> Path:
        return ckpt / f"{self.name}-checkpoint.json"

    def _save_checkpoint(
        self, ckpt: Path, epoch: int, optimizer: torch.optim.Optimizer, generator: torch.Generator, fp: list
    ) -> None:
        """Weights, Adam state and RNG state to ``NAME-epochNNNN.safetensors``, then the JSON that names it
        (the JSON replace is the commit point), then the previous epoch's file is removed."""
        assert self.nets_ is not None
        tensors = {f"net.{k}": v.detach().cpu().contiguous() for k, v in self.nets_.state_dict().items()}
        for pid, st in optimizer.state_dict()["state"].items():
            for key, val in st.items():
                tensors[f"optim.{pid}.{key}"] = torch.as_tensor(val).detach().cpu().contiguous()
        tensors["rng"] = generator.get_state()
        weights = f"{self.name}-epoch{epoch:04d}.safetensors"
        _atomic_write(ckpt / weights, lambda tmp: save_file(tensors, tmp))
        config = {k: v for k, v in self.get_config().items() if k not in ("epochs", "device")}
        meta = {
            "format": CHECKPOINT_FORMAT,
            "model": self.name,
            "epoch": epoch,
            "epochs": self.epochs,
            "weights": weights,
            "config": config,
            "data": fp,
            "losses": self.loss_history_,
        }
        path = self._ckpt_json(ckpt)
        old = json.loads(path.read_text())["weights"] if path.exists() else None
        _atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=1)))
        if old and old != weights:
            with contextlib.suppress(OSError):
                (ckpt / old).unlink()

    def _load_checkpoint(
        self, ckpt: Path, optimizer: torch.optim.Optimizer, generator: torch.Generator, fp: list
    ) -> int:
        """Restore the last finished epoch's state; returns that epoch (0 when there is no checkpoint)."""
        assert self.nets_ is not None
        path = self._ckpt_json(ckpt)
        if not path.exists():
            return 0
        try:
            meta = json.loads(path.read_text())
            tensors = load_file(str(ckpt / meta["weights"]))
        except (OSError, ValueError, KeyError) as err:
            raise ReconadError(f"cannot resume from {path}: {err}") from None
        config = {k: v for k, v in self.get_config().items() if k not in ("epochs", "device")}
        if meta.get("model") != self.name or meta.get("config") != json.loads(json.dumps(config)):
            raise ReconadError(f"cannot resume from {path}: it was written with other hyper-parameters")
        if not all(
            math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6) for a, b in zip(meta["data"], fp, strict=True)
        ):
            raise ReconadError(f"cannot resume from {path}: it was trained on other features")
        device = self._device()
        self.nets_.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
        fresh = optimizer.state_dict()
        state: dict[int, dict[str, Tensor]] = {}
        for key, val in tensors.items():
            if key.startswith("optim."):
                _, pid, name = key.split(".", 2)
                state.setdefault(int(pid), {})[name] = val.to(device) if name != "step" else val
        optimizer.load_state_dict({"state": state, "param_groups": fresh["param_groups"]})
        generator.set_state(tensors["rng"])
        self.loss_history_ = [float(x) for x in meta["losses"]]
        return int(meta["epoch"])

    # --- inference ---------------------------------------------------------------------------------------
    @torch.inference_mode()
    def level_errors(self, features: Tensor, batch_size: int = 16) -> list[Tensor]:
        """Per level, the reconstruction error ``[N, h_l, w_l]`` on the level's own grid."""
        if self.nets_ is None or self.level_hw_ is None:
            raise ReconadError(f"{self.name} is not fitted")
        self._check(features)
        self.nets_.eval()
        device = self._device()
        out: list[list[Tensor]] = [[] for _ in self.nets_]
        for i in range(0, features.shape[0], batch_size):
            levels = self.split_levels(features[i : i + batch_size])
            for k, (net, x, hw) in enumerate(zip(self.nets_, levels, self.level_hw_, strict=True)):
                x = net.standardise(x.to(device))
                out[k].append(reconstruction_error(x, net(x)).view(-1, *hw).float().cpu())
        return [torch.cat(o) for o in out]

    def predict(self, features: Tensor, categories: list[str] | None = None) -> Tensor:
        """Patch anomaly scores ``[N, h, w]`` on the finest grid: the level errors, upsampled and averaged."""
        if features.shape[0] == 0:
            return torch.zeros(0, *features.shape[-2:])
        hw = tuple(features.shape[-2:])
        maps = [
            e if tuple(e.shape[-2:]) == hw else F.interpolate(e[:, None], size=hw, mode="bilinear")[:, 0]
            for e in self.level_errors(features)
        ]
        return torch.stack(maps).mean(dim=0)

    # --- persistence -------------------------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        return init_config(self)

    def state_dict(self) -> dict[str, Tensor]:
        if self.nets_ is None or self.level_hw_ is None:
            raise ReconadError(f"{self.name} is not fitted")
        state = {f"net.{k}": v.detach().cpu().contiguous() for k, v in self.nets_.state_dict().items()}
        state["level_hw"] = torch.tensor(self.level_hw_, dtype=torch.int64)
        state["loss_history"] = torch.tensor(self.loss_history_, dtype=torch.float64)
        return state

    @classmethod
    def from_state(cls, config: dict[str, Any], state: dict[str, Tensor]) -> ReconstructionModel:
        model = cls(**config)
        try:
            model._build([(int(h), int(w)) for h, w in state["level_hw"].tolist()])
            assert model.nets_ is not None
            model.nets_.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("net.")})
        except (KeyError, RuntimeError) as err:
            raise ReconadError(f"{cls.name} state does not match its config: {err}") from None
        model.loss_history_ = [float(x) for x in state.get("loss_history", torch.zeros(0)).tolist()]
        model.nets_.eval()
        return model
