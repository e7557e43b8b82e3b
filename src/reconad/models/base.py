"""The estimator contract every method follows, and the registry of methods by name.

A model sees only feature tensors ``[N, C, h, w]`` (frozen backbone patch features of whole images).
``fit`` takes good images only and returns ``self``; ``predict`` returns patch anomaly scores ``[N, h, w]``
(higher = more anomalous). Hyper-parameters are ``__init__`` arguments; learned state ends in ``_``.
Per-category models (PatchCore, SGFR) are fitted once per category by the caller; unified models
(RLR, UniAD-style) take every category's features at once and have ``unified = True``.
A model that can predict on a GPU also has ``to(device) -> self`` (:meth:`reconad.runs.Run.to` calls it).
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable

from torch import Tensor

from reconad.errors import ReconadError


@runtime_checkable
class Model(Protocol):
    name: ClassVar[str]
    unified: ClassVar[bool]

    def fit(self, features: Tensor, categories: list[str] | None = None) -> Model: ...

    def predict(self, features: Tensor, categories: list[str] | None = None) -> Tensor: ...

    def state_dict(self) -> dict[str, Tensor]: ...

    def get_config(self) -> dict[str, Any]: ...

    @classmethod
    def from_state(cls, config: dict[str, Any], state: dict[str, Tensor]) -> Model: ...


MODELS: dict[str, type] = {}
T = TypeVar("T", bound=type)


def register(cls: T) -> T:
    """Class decorator: make a model available by its ``name`` (CLI, runs, bench)."""
    MODELS[cls.name] = cls
    return cls


def model_class(name: str) -> type:
    """The model class registered as ``name``; a clear error listing the known names otherwise."""
    import reconad.models  # noqa: F401  (importing the package registers every model)

    if name not in MODELS:
        raise ReconadError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")
    return MODELS[name]


def create_model(name: str, **params: Any) -> Model:
    """Instantiate a registered model. Parameters its ``__init__`` does not take are ignored, so the caller
    may pass context such as ``level_channels`` to every model alike."""
    cls = model_class(name)
    accepted = inspect.signature(cls.__init__).parameters
    return cls(**{k: v for k, v in params.items() if k in accepted})


def check_params(name: str, params: dict[str, Any]) -> None:
    """A clear error for a user-given hyper-parameter the model does not have (a typo, say)."""
    accepted = set(inspect.signature(model_class(name).__init__).parameters) - {"self"}
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise ReconadError(
            f"model {name} has no parameter {', '.join(unknown)}; "
            f"its parameters: {', '.join(sorted(accepted))}"
        )


def init_config(model: object) -> dict[str, Any]:
    """The ``__init__`` arguments of ``model`` as stored attributes (the sklearn convention): its config."""
    params = inspect.signature(type(model).__init__).parameters
    return {k: getattr(model, k) for k in params if k != "self"}
