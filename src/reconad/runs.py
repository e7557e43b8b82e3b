"""A run folder: ``run.json`` (config, thresholds, schema version) + safetensors weights. Never pickle.

Written to a temporary folder beside the target and renamed into place, so an interrupted save leaves
either the previous complete run or none.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from reconad.atomic import atomic_folder, atomic_path
from reconad.errors import ReconadError
from reconad.features.extractor import check_features_config
from reconad.models.base import Model, model_class
from reconad.runfolder import (
    RUN_FILE,
    SCHEMA_VERSION,
    UNIFIED,
    choose_category,
    read_config,
    weights_file,
)


@dataclass
class Run:
    """A fitted run: its config (JSON-able) and one model per category, or one under :data:`UNIFIED`."""

    config: dict[str, Any]
    models: dict[str, Model] = field(default_factory=dict)

    @property
    def categories(self) -> dict[str, dict[str, Any]]:
        return self.config["categories"]

    def category(self, requested: str | None, ask: str = "pass --category") -> str:
        """The category to score with: ``requested``, or the run's only one; a one-line error saying to
        ``ask`` for one where the run has several, :class:`UnknownCategory` for one it does not have."""
        return choose_category(self.config, requested, ask)

    def model_for(self, category: str) -> Model:
        return self.models.get(UNIFIED) or self.models[category]

    def to(self, device: str | torch.device) -> Run:
        """Predict on ``device`` from now on (:func:`models_to`)."""
        models_to(self.models, device)
        return self


def models_to(models: dict[str, Model], device: str | torch.device | None) -> None:
    """Each model that has a ``to`` moves its search or networks to ``device``; the others stay on the CPU.
    ``None``: nothing moves."""
    for model in models.values() if device is not None else ():
        move = getattr(model, "to", None)
        if move is not None:
            move(device)


def save_run(run: Run, path: Path) -> int:
    """Write ``run`` to ``path`` atomically; returns the bytes of the saved weights."""
    path = Path(path)
    with atomic_folder(path) as tmp:
        (tmp / "weights").mkdir()
        files = {}
        for key, model in run.models.items():
            files[key] = weights_file(key)
            state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
            with atomic_path(tmp / files[key]) as weights:
                save_file(state, str(weights))
        model_bytes = sum((tmp / f).stat().st_size for f in files.values())
        formats = {getattr(m, "state_format", None) for m in run.models.values()} - {None}
        config = {
            **run.config,
            **({"model_format": formats.pop()} if formats else {}),
            "schema_version": SCHEMA_VERSION,
            "weights": files,
            "model_bytes": model_bytes,
        }
        (tmp / RUN_FILE).write_text(json.dumps(config, indent=2))
        if path.exists() and not (path / RUN_FILE).is_file():
            raise ReconadError(f"{path} exists and is not a reconad run: refusing to overwrite it")
    run.config = config
    return model_bytes


def load_run(path: Path) -> Run:
    """Load a run folder: JSON config + safetensors weights only (nothing is ever unpickled). A run fitted on
    other features, or a model whose class declares another ``state_format`` than the run's
    ``model_format``, is refused with one line to refit."""
    path = Path(path)
    config = read_config(path)
    needed = {"model": str, "params": dict, "weights": dict, "categories": dict}
    needed |= {"features": dict, "scoring": dict}
    if any(not isinstance(config.get(k), t) for k, t in needed.items()):
        raise ReconadError(f"{path / RUN_FILE} is incomplete: it needs {', '.join(needed)}")
    cls = model_class(config["model"])
    check_features_config(config["features"], str(path))
    state_format = getattr(cls, "state_format", None)
    if state_format is not None and config.get("model_format") != state_format:
        raise ReconadError(
            f"{path} holds a {config['model']} model of an older reconad (state format "
            f"{config.get('model_format', 1)}, this one reads {state_format}): refit it"
        )
    models = {}
    for key, rel in config["weights"].items():
        file = (path / rel).resolve()
        if path.resolve() not in file.parents:
            raise ReconadError(f"{path / RUN_FILE}: weights path {rel!r} points outside the run")
        try:
            state = load_file(str(file))
        except (SafetensorError, OSError, ValueError) as err:
            raise ReconadError(f"cannot load weights {file}: not a valid safetensors file ({err})") from err
        try:
            models[key] = cls.from_state(config["params"], state)
        except (KeyError, TypeError, ValueError, RuntimeError, ReconadError) as err:
            raise ReconadError(
                f"{path / RUN_FILE}: weights {rel} do not fit a {config['model']} model "
                f"({type(err).__name__}: {err})"
            ) from err
    return Run(config, models)
