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
    """``model``'s :class:`AtomOrigins`; a model loaded from a run has none (they are not saved)."""
    origin = getattr(model, "origin_", None)
    if origin is None:
        raise ReconadError(
            f"{type(model).__name__}: training images are scored without their atoms only at fit"
        )
    return AtomOrigins(origin)
