"""Which training image each atom of a bank came from: a training image scored without its own atoms is an
out-of-sample score from the one fit (``predict_left_out`` of PatchCore and SGFR)."""

from __future__ import annotations

import torch
from torch import Tensor

from reconad.errors import ReconadError


class AtomOrigins:
    """The atoms of each training image, from ``origin`` ``[atoms]`` (each atom's image; -1: none, an atom
    that ``extend`` added)."""

    def __init__(self, origin: Tensor) -> None:
        self.order = origin.argsort(stable=True)  # the -1s first, then image by image
        counts = torch.bincount(origin[origin >= 0])
        self.bounds = (origin < 0).sum() + torch.cat([counts.new_zeros(1), counts.cumsum(0)])

    def of(self, image: int) -> Tensor:
        """The indices of the atoms taken from training image ``image``."""
        if image + 1 >= len(self.bounds):
            return self.order[:0]
        return self.order[int(self.bounds[image]) : int(self.bounds[image + 1])]


def atom_origins(model: object) -> AtomOrigins:
    """``model``'s :class:`AtomOrigins`, built once per ``origin_`` (kept on the model beside it); a model
    loaded from a run has none (they are not saved)."""
    origin = getattr(model, "origin_", None)
    if origin is None:
        raise ReconadError(
            f"{type(model).__name__}: training images are scored without their atoms only at fit"
        )
    cached = getattr(model, "_atom_origins", None)
    if cached is None or cached[0] is not origin:
        cached = (origin, AtomOrigins(origin))
        model._atom_origins = cached  # type: ignore[attr-defined]
    return cached[1]


def with_added(origin: Tensor | None, added: int) -> Tensor | None:
    """``origin`` after ``extend`` added ``added`` atoms, which come from no training image (-1)."""
    return None if origin is None else torch.cat([origin, origin.new_full((added,), -1)])
