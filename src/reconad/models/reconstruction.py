"""The shared base of the feature-reconstruction transformers (RLR and its ablation RLR-selfref): one network
per feature level, every category trained together (a *unified* model).

Each level is standardised per channel with the mean and standard deviation of its training features
(stored with the weights; ``standardise=False`` keeps raw features, as the official code): the network
starts at the right scale, which matters on a short CPU schedule, and every channel counts alike in the loss
and the score. Training (:mod:`reconad.models.trainer`; its feature jitter is drawn in raw units either way)
and its per-epoch checkpoints (:mod:`reconad.models.checkpoints`) live apart.

Score: per level, channel-mean squared error + (1 − cosine) between the (standardised) features and their
reconstruction, on the level's own grid; :func:`reconad.scoring.anomaly_maps` resizes each level's map to the
image and averages them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reconad.distributed import World
from reconad.errors import ReconadError
from reconad.features.extractor import unsampling_matrix
from reconad.models.base import init_config
from reconad.models.checkpoints import Checkpoints, fingerprint, load_nets_state, nets_state
from reconad.models.trainer import LR_SCHEDULES, Progress, train
from reconad.params import MAX_SEED, param, validate


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
    ``feature_mean`` / ``feature_std`` (buffers, set by :meth:`ReconstructionModel.fit`; 0 and 1 when the
    model works on raw features) standardise the level's raw features."""

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


def reconstruction_error(x: Tensor, rec: Tensor) -> Tensor:
    """Per-token channel-mean squared error + (1 − cosine similarity): ``[..., C]`` → ``[...]``."""
    return (rec - x).pow(2).mean(dim=-1) + 1 - F.cosine_similarity(rec, x, dim=-1, eps=1e-6)


@dataclass(eq=False, kw_only=True)
class ReconstructionModel:
    """Base of the unified feature-reconstruction models. Subclasses set ``name``, implement
    :meth:`make_level` and are dataclasses too, declaring only their own hyper-parameters as fields: the
    fields below are the shared ones (``__init__`` arguments by keyword, the run's ``params``).

    ``widths``, ``windows``: one per level (``None``: the defaults); ``epochs`` is fixed (no early stopping on
    any split); ``device="auto"`` trains and predicts on CUDA when available.
    """

    name: ClassVar[str] = "reconstruction"
    unified: ClassVar[bool] = True
    align_corners: ClassVar[bool] = True  # how the level maps are resized to the image (official RLR)
    #: The version of what the saved state means (networks, features, units), stored in a run as
    #: ``model_format``: a run of another format is refused on load with one line to refit
    #: (:func:`reconad.runs.load_run`). 2: zero-border features, exact level split, GELU, separate reference
    #: embedding, raw-unit jitter, per-level maps.
    state_format: ClassVar[int] = 2

    level_channels: Sequence[int] = param(
        (40, 112), low=1, help="channels of each feature level (set from the features)"
    )
    level_grids: Sequence[int] = param(
        (32, 16), low=1, help="grid side of each feature level, finest first (set from the features)"
    )
    widths: Sequence[int] | None = param(
        None, low=4, high=1024, help="token width per level, multiples of 4 and of heads (null: 64 or 128)"
    )
    layers: int = param(2, low=1, high=16, help="transformer layers per level")
    heads: int = param(4, low=1, high=32, help="attention heads")
    ff_mult: int = param(2, low=1, high=8, help="feed-forward width as a multiple of the token width")
    windows: Sequence[int] | None = param(
        None, low=1, help="odd attention window per level, below its grid side (null: ~3/16 of the side)"
    )
    jitter_scale: float = param(4.0, low=0, high=100, help="feature jitter: noise std per token, × ‖f‖ / C")
    jitter_prob: float = param(1.0, low=0, high=1, help="feature jitter: share of the images jittered")
    epochs: int = param(30, low=1, high=10000, help="training epochs (fixed: no early stopping)")
    batch_size: int = param(4, low=1, high=1024, help="images per optimizer step")
    lr: float = param(1e-3, low=0, high=1, low_inclusive=False, help="Adam learning rate")
    seed: int = param(0, low=0, high=MAX_SEED, help="seeds the initial weights, the batches and the jitter")
    device: str = param(
        "auto",
        pattern=r"auto|cpu|cuda(:[0-9]+)?",
        shown="'auto', 'cpu', 'cuda' or 'cuda:N'",
        help="where to train and predict; auto = CUDA when available",
    )
    lr_schedule: str = param("cosine", choices=LR_SCHEDULES, help="learning rate over the training")
    standardise: bool = param(
        True, help="train and score on per-channel standardised features (false: raw features, as the paper)"
    )

    def __post_init__(self) -> None:
        """Check the hyper-parameters (each alone, then together); no learned state yet."""
        validate(self)  # numbers as int/float, sequences as lists
        n = len(self.level_channels)
        if len(self.level_grids) != n:
            raise ReconadError("level_channels and level_grids must name the same number of levels")
        if any(self.level_grids[0] % g for g in self.level_grids):
            raise ReconadError(f"every level grid must divide the finest one, got {self.level_grids}")
        for what, val in (("widths", self.widths), ("windows", self.windows)):
            if val is not None and len(val) != n:
                raise ReconadError(f"{what} must give one value per level ({n}), got {val}")
        bad = [w for w in self.widths or self.default_widths() if w % 4 or w % self.heads]
        if bad:
            raise ReconadError(
                f"{self.name}: token widths must be multiples of 4 and of heads={self.heads}, got {bad[0]}"
            )
        if any(w % 2 == 0 for w in self.windows or ()):
            raise ReconadError(f"{self.name}: windows must be odd, got {self.windows}")
        self._placed: torch.device | None = None  # set by :meth:`to`: overrides ``device``
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
        if self._placed is not None:
            return self._placed
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ReconadError(f"{self.name}: device={self.device!r} but no CUDA GPU is available here")
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

        The extractor upsampled coarser levels (bilinear, ``align_corners=False``) to the finest grid; per
        axis the pseudo-inverse of that linear map undoes it exactly (:func:`unsampling_matrix`), so each
        level is seen at its own resolution, where its window sizes and token count were meant."""
        h, w = features.shape[-2:]
        out, start = [], 0
        for c, g in zip(self.level_channels, self.level_grids, strict=True):
            x = features[:, start : start + c].float()
            start += c
            ratio = self.level_grids[0] // g
            if ratio > 1:
                rows = unsampling_matrix(h, h // ratio).to(x.device)
                cols = unsampling_matrix(w, w // ratio).to(x.device)
                x = rows @ x @ cols.T
            out.append(x.flatten(2).transpose(1, 2).contiguous())
        return out

    def _build(self, level_hw: list[tuple[int, int]]) -> None:
        widths = self.widths or self.default_widths()
        windows = self.windows or [default_window(min(hw)) for hw in level_hw]
        for window, hw in zip(windows, level_hw, strict=True):
            if window >= min(hw):
                raise ReconadError(
                    f"{self.name}: a {window}×{window} attention window does not fit a {hw[0]}×{hw[1]} level "
                    "grid (each token needs keys outside its window): use a larger image size or windows"
                )
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
        world: World | None = None,
    ) -> ReconstructionModel:
        """Train one network per level on the good ``features`` ``[N, C, h, w]`` of every category at once.

        ``categories`` is accepted for the contract and ignored (the model is unified). With
        ``checkpoint_dir`` a checkpoint is written after every epoch; ``resume=True`` continues from the last
        one there (same data and hyper-parameters required; ``epochs`` may be raised).
        ``progress(epoch, epochs, mean_loss)`` is called after every epoch. ``world``: this process's place
        in a torchrun job (:mod:`reconad.distributed`): DistributedDataParallel training, checkpoints by
        rank 0 (:func:`~reconad.models.trainer.train`).
        """
        self._check(features)
        if features.shape[0] == 0:
            raise ReconadError(f"{self.name} needs at least one training image")
        levels = self.split_levels(features)
        self._build(self._level_hw(features))
        assert self.nets_ is not None
        for net, x in zip(self.nets_, levels, strict=True) if self.standardise else ():
            flat = x.reshape(-1, x.shape[-1]).double()
            net.feature_mean.copy_(flat.mean(dim=0).float())
            net.feature_std.copy_(flat.std(dim=0).clamp_min(1e-6).float())
        ckpt = None
        if checkpoint_dir is not None:
            size = world.size if world is not None else 1
            ckpt = Checkpoints(Path(checkpoint_dir), self.name, self.get_config(), fingerprint(levels), size)
        self.loss_history_ = []
        train(
            self.nets_,
            levels,
            self,
            device=self._device(),
            losses=self.loss_history_,
            checkpoints=ckpt,
            resume=resume,
            progress=progress,
            world=world,
        )
        return self

    def to(self, device: str | torch.device) -> ReconstructionModel:
        """Predict (and train) on ``device`` from now on, whatever the ``device`` hyper-parameter says (the
        run's config keeps it)."""
        self._placed = torch.device(device)
        if self.nets_ is not None:
            self.nets_.to(self._placed)
        return self

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

    def predict(self, features: Tensor, categories: list[str] | None = None) -> list[Tensor]:
        """Per level, the error map ``[N, h_l, w_l]`` on the level's own grid (:meth:`level_errors`): each is
        resized once to the image, with ``align_corners=True`` as the official RLR, and the levels averaged
        (:func:`reconad.scoring.anomaly_maps`)."""
        if features.shape[0] == 0:
            return [torch.zeros(0, *hw) for hw in self._level_hw(features)]
        return self.level_errors(features)

    # --- persistence -------------------------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        return init_config(self)

    def state_dict(self) -> dict[str, Tensor]:
        if self.nets_ is None or self.level_hw_ is None:
            raise ReconadError(f"{self.name} is not fitted")
        state = nets_state(self.nets_)
        state["level_hw"] = torch.tensor(self.level_hw_, dtype=torch.int64)
        state["loss_history"] = torch.tensor(self.loss_history_, dtype=torch.float64)
        return state

    @classmethod
    def from_state(cls, config: dict[str, Any], state: dict[str, Tensor]) -> ReconstructionModel:
        model = cls(**config)
        try:
            model._build([(int(h), int(w)) for h, w in state["level_hw"].tolist()])
            assert model.nets_ is not None
            load_nets_state(model.nets_, state)
        except (KeyError, RuntimeError) as err:
            raise ReconadError(f"{cls.name} state does not match its config: {err}") from None
        model.loss_history_ = [float(x) for x in state.get("loss_history", torch.zeros(0)).tolist()]
        model.nets_.eval()
        return model
