"""Torch modules that mirror each model's ``predict`` with operations ONNX has, for tracing into a graph.

A *head* maps patch features ``[N, C, h, w]`` to patch scores ``[N, h, w]`` as the fitted model does;
:class:`MapsAndScores` adds the library's scoring (resizing, Gaussian blur, image score). Bank searches
(:mod:`reconad.export.search`) find the atoms the model's own search finds, IVF lists included.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from reconad.errors import ReconadError
from reconad.export.linalg import spd_inverse
from reconad.export.search import bank_search
from reconad.scoring import image_scores, map_operator


class PatchCoreHead(nn.Module):
    """PatchCore's ``predict``: the mean distance to the ``k`` nearest bank atoms its search finds."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.search = bank_search(model.bank_, model.centroids_, model.nprobe_, "l2", model.k)

    def forward(self, features: Tensor) -> Tensor:
        n, c, h, w = features.shape
        q = features.permute(0, 2, 3, 1).reshape(-1, c)
        key, _, _ = self.search(q)
        d = q.pow(2).sum(1, keepdim=True) - key
        return d.clamp(min=0).sqrt().mean(dim=1).reshape(n, h, w)


class SGFRHead(nn.Module):
    """SGFR's ``predict``: each patch, scaled to the bank's units, is coded over its ``n_candidates``
    nearest atoms (found by the model's search and metric) with the elastic net, solved by the same ADMM
    steps as :func:`~reconad.models.bank.self_expressive.elastic_net_gram`; its score is the residual norm in
    feature units. The solver's one Cholesky inverse becomes :func:`~.linalg.spd_inverse`.

    The ADMM step size ``ρ = max(5λ, 10⁻³ · mean Gram diagonal)`` is a constant where the bank's largest
    squared norm already gives ``5λ`` (the default λ on unit-scale atoms); otherwise it is taken from the
    graph's batch (the library takes it per 4,096 patches).
    """

    def __init__(self, model: Any) -> None:
        super().__init__()
        bank = model.bank_.detach().float()
        self.metric, self.k = model.metric, max(1, min(model.n_candidates, len(bank)))
        self.lam, self.alpha, self.iters = float(model.lam), float(model.alpha), int(model.iters)
        self.scale = float(model.scale_)
        norms = bank.norm(dim=1)
        self.rho = 5.0 * self.lam if 1e-3 * float(norms.max()) ** 2 <= 5.0 * self.lam else None
        self.register_buffer("norms", norms)
        self.register_buffer("bank", bank)
        self.search = bank_search(bank, model.centroids_, model.nprobe, self.metric, self.k)

    def candidates(self, y: Tensor, yy: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The ``k`` nearest atoms ``[P, k, C]`` and ``b = ⟨atom, y⟩`` ``[P, k]``, read off the search as the
        library does: a slot the search could not fill (an IVF probe of fewer than ``k`` entries) is a zero
        atom with ``b = 0``."""
        if self.metric == "l2":
            key, idx, _ = self.search(y)
            b = 0.5 * (key + self.norms[idx].pow(2))
        else:
            key, idx, sign = self.search(y / yy.sqrt().clamp_min(1e-12)[:, None])
            b = key * sign * self.norms[idx] * yy.sqrt()[:, None]
        atoms = self.bank[idx]
        if self.search.may_miss:
            filled = key > -torch.inf
            atoms, b = atoms * filled[:, :, None], torch.where(filled, b, 0.0)
        return atoms, b

    def forward(self, features: Tensor) -> Tensor:
        n, ch, h, w = features.shape
        y = features.permute(0, 2, 3, 1).reshape(-1, ch) / self.scale
        yy = y.pow(2).sum(1)
        atoms, b = self.candidates(y, yy)
        gram = atoms @ atoms.transpose(1, 2)
        l1, l2 = self.lam * self.alpha, self.lam * (1.0 - self.alpha)
        rho = self.rho
        if rho is None:
            rho = torch.clamp(gram.diagonal(dim1=-2, dim2=-1).mean() * 1e-3, min=5.0 * self.lam)
        inv = spd_inverse(gram + (l2 + rho) * torch.eye(self.k))
        c0 = (inv @ b[:, :, None])[:, :, 0]
        inv_rho, thr = rho * inv, l1 / rho
        z = c0 - c0.clamp(-thr, thr)
        u = c0 - z
        for _ in range(self.iters - 1):
            c = c0 + (inv_rho @ (z - u)[:, :, None])[:, :, 0]
            z = (c + u) - (c + u).clamp(-thr, thr)
            u = u + c - z
        quad = (z * (gram @ z[:, :, None])[:, :, 0]).sum(1)
        residual = (yy - 2 * (b * z).sum(1) + quad).clamp(min=0)
        return (residual.sqrt() * self.scale).reshape(n, h, w)


class UnifiedHead(nn.Module):
    """The unified models' ``predict`` (:class:`~reconad.models.trained.unified.UnifiedModel`: RLR,
    RLR-selfref, UniAD): the model's tokens (constant matrices on the features), each network's token errors,
    one map per network on its grid. The fitted networks are used as they are."""

    def __init__(self, model: Any) -> None:
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


def patch_head(model: Any) -> nn.Module:
    """The head of a fitted model (one of the registered methods), in eval mode, on the CPU."""
    name = getattr(model, "name", type(model).__name__)
    if name == "patchcore":
        return PatchCoreHead(model).eval()
    if name == "sgfr":
        return SGFRHead(model).eval()
    if getattr(model, "unified", False):
        return UnifiedHead(model).cpu().eval()
    raise ReconadError(f"model {name!r} cannot be exported yet")


class MapsAndScores(nn.Module):
    """Patch scores (or level maps) → anomaly maps ``[N, S, S]`` and image scores ``[N]``, as
    :func:`reconad.scoring.anomaly_maps` computes them: each map's resize and the Gaussian blur as one matrix
    per axis (:func:`~reconad.scoring.map_operator`), averaged over the maps, then the image score. ``grids``:
    the ``(h, w)`` of each map the head returns (one for patch scores); ``align_corners``: the model's."""

    def __init__(
        self,
        head: nn.Module,
        grids: list[tuple[int, int]],
        image_size: int,
        scoring: dict[str, Any],
        align_corners: bool = False,
    ):
        super().__init__()
        self.head = head
        self.reduce = scoring["reduce"]
        sigma = float(scoring["sigma"])
        self.levels = len(grids)
        for i, (h, w) in enumerate(grids):
            cols = map_operator(image_size, w, sigma, align_corners)
            self.register_buffer(f"rows{i}", map_operator(image_size, h, sigma, align_corners))
            self.register_buffer(f"cols_t{i}", cols.T.contiguous())

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        out = self.head(features)
        levels = [out] if isinstance(out, Tensor) else out
        each = [getattr(self, f"rows{i}") @ x @ getattr(self, f"cols_t{i}") for i, x in enumerate(levels)]
        maps = each[0] if self.levels == 1 else torch.stack(each).mean(dim=0)
        return maps, image_scores(maps, self.reduce)


def maps_and_scores(model: Any, grid: tuple[int, int], image_size: int, scoring: dict[str, Any]) -> nn.Module:
    """The fitted ``model``'s head (:func:`patch_head`) with the library's maps and image scores on top;
    ``grid``: the feature grid ``(h, w)``."""
    grids = [tuple(hw) for hw in model.level_hw_] if getattr(model, "unified", False) else [grid]
    return MapsAndScores(patch_head(model), grids, image_size, scoring, model.align_corners)
