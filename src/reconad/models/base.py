"""The estimator contract every method follows, and the registry of methods by name.

A model sees only feature tensors ``[N, C, h, w]`` (frozen backbone patch features of whole images).
``fit`` takes good images only and returns ``self``; ``predict`` returns patch anomaly scores ``[N, h, w]``
on the feature grid, or (the unified models) a list of per-level error maps ``[N, h_l, w_l]`` (higher = more
anomalous); ``align_corners`` says how :func:`reconad.scoring.anomaly_maps` resizes them to the image.
Hyper-parameters are ``__init__`` arguments, declared with their type, range and help by
:func:`reconad.params.param` (dataclass fields); learned state ends in ``_``.
Per-category models (PatchCore, SGFR) are fitted once per category by the caller and also have
``predict_left_out(features, images)``: the patch scores of training images (their rows in what ``fit``
took), each without what the model learned from it (the threshold's out-of-sample scores); unified models
(RLR, RLR-selfref, UniAD) take every category's features at once and have ``unified = True``.
A model that can predict on a GPU also has ``to(device) -> self`` (:meth:`reconad.runs.Run.to` calls it).
``export_head()`` gives the fitted model's ``predict`` as a torch module of operations ONNX has, in eval mode
on the CPU (features ``[N, C, h, w]`` → what ``predict`` returns), which ``reconad export`` traces
(:mod:`reconad.export.heads` adds the library's scoring on top).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable

from torch import Tensor, nn

from reconad.errors import ReconadError
from reconad.params import check_values, describe


@runtime_checkable
class Model(Protocol):
    name: ClassVar[str]
    unified: ClassVar[bool]
    align_corners: ClassVar[bool]

    def fit(self, features: Tensor, categories: list[str] | None = None) -> Model: ...

    def predict(self, features: Tensor, categories: list[str] | None = None) -> Tensor | list[Tensor]: ...

    def state_dict(self) -> dict[str, Tensor]: ...

    def export_head(self) -> nn.Module: ...

    def get_config(self) -> dict[str, Any]: ...

    @classmethod
    def from_state(cls, config: dict[str, Any], state: dict[str, Tensor]) -> Model: ...


MODELS: dict[str, type] = {}
T = TypeVar("T", bound=type)


def register(cls: T) -> T:
    """Class decorator: make a model available by its ``name`` (CLI, runs, bench)."""
    MODELS[cls.name] = cls
    return cls


def model_names() -> list[str]:
    """The names of every registered model."""
    import reconad.models  # noqa: F401  (importing the package registers every model)

    return sorted(MODELS)


def model_class(name: str) -> type:
    """The model class registered as ``name``; a clear error listing the known names otherwise."""
    if name not in model_names():
        raise ReconadError(f"unknown model {name!r}; known models: {', '.join(model_names())}")
    return MODELS[name]


def create_model(name: str | type, **params: Any) -> Model:
    """Instantiate a registered model (by name, or its class). Parameters its ``__init__`` does not take are
    ignored, so the caller may pass context such as ``level_channels`` to every model alike."""
    cls = model_class(name) if isinstance(name, str) else name
    accepted = inspect.signature(cls.__init__).parameters
    return cls(**{k: v for k, v in params.items() if k in accepted})


def parameter_names(cls: type) -> list[str]:
    """The hyper-parameters of a model class: its ``__init__`` arguments."""
    return [k for k in inspect.signature(cls.__init__).parameters if k != "self"]


def check_params(name: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """User-given hyper-parameters of model ``name``, checked before any work; one clear error otherwise.

    Each value is checked against its declared type and range (:mod:`reconad.params`) and converted (strings
    such as ``"0.5"`` included); an unknown name (a typo, say) is an error listing the model's parameters.
    """
    return check_values(model_class(name), params, f"model {name}")


def describe_params(name: str) -> list[tuple[str, str, str, str]]:
    """``(name, valid values, default, help)`` of each declared hyper-parameter of model ``name``."""
    return describe(model_class(name))


def init_config(model: object) -> dict[str, Any]:
    """The ``__init__`` arguments of ``model`` as stored attributes (the sklearn convention): its config."""
    return {k: getattr(model, k) for k in parameter_names(type(model))}
