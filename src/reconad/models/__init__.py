"""Anomaly models by name. Importing this package registers each one (see :mod:`reconad.models.base`)."""

from importlib import import_module

from reconad.models.base import MODELS, Model, create_model, model_class, register

for _module in ("patchcore", "sgfr", "rlr", "rlr_selfref", "uniad"):
    try:
        import_module(f"reconad.models.{_module}")
    except ModuleNotFoundError as _err:  # a method not written yet
        if _err.name != f"reconad.models.{_module}":
            raise

__all__ = ["MODELS", "Model", "create_model", "model_class", "register"]
