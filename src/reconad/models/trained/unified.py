"""The shared base of the unified models (RLR, RLR-selfref, UniAD): networks trained on the good features of
every category at once (:func:`.trainer.train`), a token's anomaly score being how badly it is reconstructed.

A subclass says how features become its networks' tokens (:meth:`UnifiedModel.tokens`) and on which grid each
of its maps lies (:meth:`UnifiedModel.map_grids`), builds its networks (:meth:`UnifiedModel.make_nets`) and
scores a token (:meth:`UnifiedModel.token_errors`) from its reconstruction (:meth:`UnifiedModel.reconstruct`,
which benchmarks/shortcut_index.py also scores alike for every model). Fitting, devices, batched prediction,
checkpoints and persistence are written here once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from reconad.distributed import World
from reconad.errors import ReconadError
from reconad.models.base import init_config
from reconad.models.trained.checkpoints import Checkpoints, fingerprint, load_nets_state, nets_state
from reconad.models.trained.trainer import Progress, Recipe, train
from reconad.params import param, validate


def device_param() -> Any:
    """The ``device`` hyper-parameter every unified model declares."""
    return param(
        "auto",
        pattern=r"auto|cpu|cuda(:[0-9]+)?",
        shown="'auto', 'cpu', 'cuda' or 'cuda:N'",
        help="where to train and predict; auto = CUDA when available",
    )


@dataclass(eq=False, kw_only=True)
class UnifiedModel:
    """Base of the unified models; subclasses are dataclasses declaring their own hyper-parameters, including
    the trainer's (``epochs``, ``batch_size``, ``lr``, ``lr_schedule``, ``jitter_scale``, ``jitter_prob``,
    ``seed``) and ``device`` (:func:`device_param`), each where its run config has always had it.

    Learned state: ``nets_`` (one network per map), ``level_hw_`` (the ``(h, w)`` grid of each map
    :meth:`predict` returns), ``loss_history_`` (the mean loss of each epoch).
    """

    name: ClassVar[str] = "unified"
    unified: ClassVar[bool] = True
    align_corners: ClassVar[bool] = True  # how the maps are resized to the image (the official RLR and UniAD)
    #: The version of what the saved state means (networks, features, units), stored in a run as
    #: ``model_format``: a run of another format is refused on load with one line to refit
    #: (:func:`reconad.runs.load_run`). 2: zero-border features, each level on its own grid, GELU, the
    #: reference's own embedding, raw-unit jitter, per-level maps; the real UniAD.
    state_format: ClassVar[int] = 2

    level_channels: Sequence[int] = param(
        (40, 112), low=1, help="channels of each feature level (set from the features)"
    )
    level_grids: Sequence[int] = param(
        (32, 16), low=1, help="grid side of each feature level, finest first (set from the features)"
    )

    def __post_init__(self) -> None:
        """Check the hyper-parameters (each alone, then together); no learned state yet."""
        validate(self)  # numbers as int/float, sequences as lists
        if len(self.level_grids) != len(self.level_channels):
            raise ReconadError("level_channels and level_grids must name the same number of levels")
        if any(self.level_grids[0] % g for g in self.level_grids):
            raise ReconadError(f"every level grid must divide the finest one, got {self.level_grids}")
        self.check_together()
        self._placed: torch.device | None = None  # set by :meth:`to`: overrides ``device``
        self.nets_: nn.ModuleList | None = None
        self.level_hw_: list[tuple[int, int]] | None = None
        self.loss_history_: list[float] = []

    # --- what subclasses provide -------------------------------------------------------------------------
    def check_together(self) -> None:
        """Raise :class:`ReconadError` for the subclass's hyper-parameters that do not fit together."""

    def map_grids(self, features: Tensor) -> list[tuple[int, int]]:
        """The ``(h, w)`` of each map :meth:`predict` returns for extractor features of this grid."""
        raise NotImplementedError

    def tokens(self, features: Tensor) -> list[Tensor]:
        """``[N, C, h, w]`` extractor features → one ``[N, tokens, C']`` input per network."""
        raise NotImplementedError

    def make_nets(self, grids: list[tuple[int, int]]) -> list[nn.Module]:
        """The untrained networks, one per map grid (called under the model's seed)."""
        raise NotImplementedError

    def token_errors(self, net: nn.Module, tokens: Tensor) -> Tensor:
        """``[B, N]``: the score of each token of ``tokens`` (one :meth:`tokens` input) under ``net``."""
        raise NotImplementedError

    def reconstruct(self, net: nn.Module, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """(target, reconstruction) ``[B, N, C]`` of ``tokens`` (one :meth:`tokens` input) under ``net``, in
        the units the model's own score compares them in."""
        raise NotImplementedError

    def prepare(self, tokens: list[Tensor]) -> None:
        """Set what the networks need from the training tokens before training (nothing by default)."""

    def recipe(self) -> Recipe | None:
        """The model's own training step (:class:`~.trainer.Recipe`); ``None``: RLR's."""
        return None

    # --- helpers -----------------------------------------------------------------------------------------
    def _device(self) -> torch.device:
        if self._placed is not None:
            return self._placed
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ReconadError(f"{self.name}: device={self.device!r} but no CUDA GPU is available here")
        return torch.device(self.device)

    def _check(self, features: Tensor) -> list[tuple[int, int]]:
        """The map grids of ``features``, checked against the channels and against the fitted grids."""
        channels = sum(self.level_channels)
        if features.dim() != 4 or features.shape[1] != channels:
            raise ReconadError(
                f"{self.name} expects features [N, {channels}, h, w], got {list(features.shape)}"
            )
        grids = self.map_grids(features)
        if self.level_hw_ is not None and grids != self.level_hw_:
            raise ReconadError(
                f"{self.name} was fitted on {self.level_hw_} grids, got features giving {grids}"
            )
        return grids

    def level_grids_of(self, features: Tensor) -> list[tuple[int, int]]:
        """Each feature level's own grid, for extractor features of this grid (finest first)."""
        h, w = features.shape[-2:]
        ratios = [self.level_grids[0] // g for g in self.level_grids]
        if any(h % r or w % r for r in ratios):
            raise ReconadError(f"a {h}×{w} grid cannot hold levels at the grid ratios {ratios}")
        return [(h // r, w // r) for r in ratios]

    def _build(self, grids: list[tuple[int, int]]) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            nets = self.make_nets(grids)
        self.nets_ = nn.ModuleList(nets).to(self._device())
        self.level_hw_ = grids

    # --- training ----------------------------------------------------------------------------------------
    def fit(
        self,
        features: Tensor,
        categories: list[str] | None = None,
        checkpoint_dir: Path | None = None,
        resume: bool = False,
        progress: Progress | None = None,
        world: World | None = None,
    ) -> UnifiedModel:
        """Train on the good ``features`` ``[N, C, h, w]`` of every category at once.

        ``categories`` is accepted for the contract and ignored (the model is unified). With
        ``checkpoint_dir`` a checkpoint is written after every epoch; ``resume=True`` continues from the last
        one there (same data and hyper-parameters required; ``epochs`` may be raised).
        ``progress(epoch, epochs, mean_loss)`` is called after every epoch. ``world``: this process's place
        in a torchrun job (:mod:`reconad.distributed`): DistributedDataParallel training, checkpoints by
        rank 0 (:func:`~reconad.models.trained.trainer.train`).
        """
        self.level_hw_ = None
        grids = self._check(features)
        if features.shape[0] == 0:
            raise ReconadError(f"{self.name} needs at least one training image")
        tokens = self.tokens(features)
        self._build(grids)
        self.prepare(tokens)
        assert self.nets_ is not None
        ckpt = None
        if checkpoint_dir is not None:
            size = world.size if world is not None else 1
            ckpt = Checkpoints(Path(checkpoint_dir), self.name, self.get_config(), fingerprint(tokens), size)
        self.loss_history_ = []
        train(
            self.nets_,
            tokens,
            self,
            device=self._device(),
            losses=self.loss_history_,
            checkpoints=ckpt,
            resume=resume,
            progress=progress,
            world=world,
            recipe=self.recipe(),
        )
        return self

    def to(self, device: str | torch.device) -> UnifiedModel:
        """Predict (and train) on ``device`` from now on, whatever the ``device`` hyper-parameter says (the
        run's config keeps it)."""
        self._placed = torch.device(device)
        if self.nets_ is not None:
            self.nets_.to(self._placed)
        return self

    # --- inference ---------------------------------------------------------------------------------------
    @torch.inference_mode()
    def predict(
        self, features: Tensor, categories: list[str] | None = None, batch_size: int = 16
    ) -> list[Tensor]:
        """One error map ``[N, h, w]`` per network, on its grid (:attr:`level_hw_`): the pipeline resizes each
        once to the image (``align_corners=True``, as the official code) and averages them
        (:func:`reconad.scoring.anomaly_maps`)."""
        grids = self._check(features)
        errors = self._per_net(features, lambda net, x: (self.token_errors(net, x),), batch_size)
        return [e[0].view(-1, *hw) if e else torch.zeros(0, *hw) for e, hw in zip(errors, grids, strict=True)]

    @torch.inference_mode()
    def reconstructions(self, features: Tensor, batch_size: int = 16) -> list[tuple[Tensor, Tensor]]:
        """Per network, (target, reconstruction) ``[N, h·w, C]`` of the features' tokens
        (:meth:`reconstruct`), on the CPU; each network's grid is :attr:`level_hw_`."""
        self._check(features)
        return [(t, r) for t, r in self._per_net(features, self.reconstruct, batch_size)]

    def _per_net(
        self, features: Tensor, fn: Callable[[nn.Module, Tensor], tuple[Tensor, ...]], batch_size: int
    ) -> list[tuple[Tensor, ...]]:
        """``fn(net, tokens)`` of each network on the features' tokens, in batches, joined on the CPU."""
        if self.nets_ is None or self.level_hw_ is None:
            raise ReconadError(f"{self.name} is not fitted")
        self.nets_.eval()
        device = self._device()
        out: list[list[tuple[Tensor, ...]]] = [[] for _ in self.nets_]
        for i in range(0, features.shape[0], batch_size):
            inputs = self.tokens(features[i : i + batch_size].to(device))
            for k, (net, x) in enumerate(zip(self.nets_, inputs, strict=True)):
                out[k].append(tuple(t.float().cpu() for t in fn(net, x)))
        return [tuple(torch.cat(parts) for parts in zip(*o, strict=True)) for o in out]

    def export_head(self) -> nn.Module:
        """:meth:`predict` as a traceable module (:class:`UnifiedHead`), in eval mode, on the CPU (the
        fitted networks move there)."""
        return UnifiedHead(self).cpu().eval()

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
    def from_state(cls, config: dict[str, Any], state: dict[str, Tensor]) -> UnifiedModel:
        try:
            model = cls(**config)
        except TypeError as err:  # parameters of another model: the self-reconstruction model once "uniad"
            raise ReconadError(
                f"{cls.name}: the saved parameters are not this model's ({err}); saved by an older reconad: "
                "refit it"
            ) from None
        try:
            model._build([(int(h), int(w)) for h, w in state["level_hw"].tolist()])
            assert model.nets_ is not None
            load_nets_state(model.nets_, state)
        except (KeyError, RuntimeError, ValueError) as err:
            raise ReconadError(f"{cls.name} state does not match its config: {err}") from None
        model.loss_history_ = [float(x) for x in state.get("loss_history", torch.zeros(0)).tolist()]
        model.nets_.eval()
        return model


class UnifiedHead(nn.Module):
    """The unified models' ``predict`` (:class:`UnifiedModel`: RLR, RLR-selfref, UniAD) as a traceable module:
    the model's tokens (constant matrices on the features), each network's token errors, one map per network
    on its grid. The fitted networks are used as they are."""

    def __init__(self, model: UnifiedModel) -> None:
        super().__init__()
        self.nets = model.nets_
        self.grids = [tuple(hw) for hw in model.level_hw_]
        self.tokens, self.token_errors = model.tokens, model.token_errors

    def forward(self, features: Tensor) -> list[Tensor]:
        inputs = self.tokens(features)
        return [
            self.token_errors(net, x).reshape(-1, *hw)
            for net, x, hw in zip(self.nets, inputs, self.grids, strict=True)
        ]
