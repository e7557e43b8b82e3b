"""Anomaly models by name. Importing this package registers each one (see :mod:`reconad.models.base`).

:mod:`.bank`: the per-category models that keep a bank of good patches (PatchCore, SGFR);
:mod:`.trained`: the unified models trained on every category at once (RLR, RLR-selfref, UniAD).
"""

import reconad.models.bank.patchcore
import reconad.models.bank.sgfr
import reconad.models.trained.rlr
import reconad.models.trained.rlr_selfref
import reconad.models.trained.uniad  # noqa: F401  (importing a model registers it)
from reconad.models.base import MODELS, Model, create_model, model_class, register

__all__ = ["MODELS", "Model", "create_model", "model_class", "register"]
