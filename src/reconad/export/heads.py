"""Torch modules that mirror each model's ``predict`` with operations ONNX has, for tracing into a graph.

A *head* maps patch features ``[N, C, h, w]`` to patch scores ``[N, h, w]`` as the fitted model does;
:class:`MapsAndScores` adds the library's scoring (resizing, Gaussian blur, image score). A bank search is
brute force (distances by matrix products); where the model searches an IVF index, the distances to atoms
outside the lists the query probes are masked out (:class:`IVFProbe`), so the graph finds the atoms FAISS
finds.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from reconad.errors import ReconadError
from reconad.export.linalg import spd_inverse
from reconad.models.knn import NearestNeighbors
from reconad.scoring import image_scores, map_operator

#: Atoms per block of a bank search: the ``[N·h·w, block]`` distance matrix is the largest tensor a search
#: holds, so memory stays bounded however large the bank is.
SEARCH_BLOCK = 8192


class IVFProbe(nn.Module):
    """Which index entries an IVF search looks at: for each query the ``nprobe`` lists of the nearest
    centroids (smallest squared L2, or largest inner product with the unit query for the cosine metrics, as
    FAISS's flat quantizer ranks them), as a mask ``[P, entries]`` per block of entries."""

    def __init__(self, index: NearestNeighbors, centroids: Tensor, nprobe: int) -> None:
        super().__init__()
        lists = index.entry_lists()
        assert lists is not None, "an IVF probe needs an IVF index"
        self.l2, self.nprobe = index.metric == "l2", nprobe
        c = centroids.detach().float()
        self.register_buffer("centroids_t", c.T.contiguous() * (-2 if self.l2 else 1))
        self.register_buffer("centroid_sq", c.pow(2).sum(1) if self.l2 else torch.zeros(len(c)))
        self.register_buffer("lists", lists)

    def probed(self, q: Tensor) -> Tensor:
        """``[P, lists]`` bool: the lists each (unit, for the cosine metrics) query probes."""
        d = q @ self.centroids_t + self.centroid_sq
        if self.l2:
            return d <= d.topk(self.nprobe, dim=1, largest=False).values[:, -1:]
        return d >= d.topk(self.nprobe, dim=1).values[:, -1:]

    def entries(self, probed: Tensor, start: int, stop: int) -> Tensor:
        """``[P, stop − start]`` bool: whether the query's search looks at each entry of the block."""
        return probed.index_select(1, self.lists[start:stop])


class BankSearch(nn.Module):
    """Nearest-atom search over a fixed bank, block by block: ``(squared L2 distances [P, k], indices
    [P, k])`` of the ``k`` nearest atoms, nearest first (``‖q‖² + ‖a‖² − 2⟨q, a⟩``, as FAISS computes it);
    with ``probe``, among the atoms of the probed IVF lists only."""

    def __init__(self, bank: Tensor, k: int, probe: IVFProbe | None = None) -> None:
        super().__init__()
        bank = bank.detach().float()
        self.k = min(k, len(bank))
        self.probe = probe
        self.blocks = (len(bank) + SEARCH_BLOCK - 1) // SEARCH_BLOCK
        for i, block in enumerate(bank.split(SEARCH_BLOCK)):
            # [C, m], times −2 (exact): ‖a‖² − 2⟨q, a⟩ is one matrix product and a broadcast add
            self.register_buffer(f"atoms_t{i}", -2 * block.T.contiguous())
            self.register_buffer(f"sq{i}", block.pow(2).sum(1))

    def forward(self, q: Tensor) -> tuple[Tensor, Tensor]:
        probed = self.probe.probed(q) if self.probe is not None else None
        dists, found = [], []
        for i in range(self.blocks):
            d = q @ getattr(self, f"atoms_t{i}") + getattr(self, f"sq{i}")
            if probed is not None:
                start = i * SEARCH_BLOCK
                d = torch.where(self.probe.entries(probed, start, start + d.shape[1]), d, torch.inf)
            k = min(self.k, d.shape[1])
            best = d.topk(k, dim=1, largest=False) if k > 1 else d.min(dim=1, keepdim=True)
            dists.append(best[0])
            found.append(best[1] + i * SEARCH_BLOCK)
        d, idx = torch.cat(dists, dim=1), torch.cat(found, dim=1)
        if self.blocks > 1:
            d, pick = d.topk(self.k, dim=1, largest=False) if self.k > 1 else d.min(dim=1, keepdim=True)
            idx = idx.gather(1, pick)
        return d + q.pow(2).sum(1, keepdim=True), idx


def ivf_probe(bank: Tensor, centroids: Tensor, nprobe: int, metric: str) -> IVFProbe | None:
    """The probe of the IVF index a model searches its ``bank`` with (None where it searches exactly)."""
    index = NearestNeighbors(bank, centroids, nprobe, metric)
    return IVFProbe(index, centroids, nprobe) if index.entry_lists() is not None else None


class PatchCoreHead(nn.Module):
    """PatchCore's ``predict``: the mean distance to the ``k`` nearest bank atoms its search finds."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        probe = ivf_probe(model.bank_, model.centroids_, model.nprobe_, "l2")
        self.search = BankSearch(model.bank_, model.k, probe)

    def forward(self, features: Tensor) -> Tensor:
        n, c, h, w = features.shape
        d, _ = self.search(features.permute(0, 2, 3, 1).reshape(-1, c))
        return d.clamp(min=0).sqrt().mean(dim=1).reshape(n, h, w)


class SGFRHead(nn.Module):
    """SGFR's ``predict``: each patch, scaled to the bank's units, is coded over its ``n_candidates``
    nearest atoms (exact search by the model's metric) with the elastic net, solved by the same ADMM steps
    as :func:`~reconad.models.self_expressive.elastic_net_gram`; its score is the residual norm in feature
    units. The solver's one Cholesky inverse becomes :func:`~.linalg.spd_inverse`.

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
        probe = ivf_probe(bank, model.centroids_, model.nprobe, self.metric)
        if self.metric == "l2":
            self.search = BankSearch(bank, self.k, probe)
            self.register_buffer("bank", bank)
        else:  # one copy of the bank on disk: unit atoms, rescaled by their norms where gathered
            self.probe = probe
            self.register_buffer("unit", bank / norms.clamp_min(1e-12)[:, None])

    def candidates(self, y: Tensor, yy: Tensor) -> tuple[Tensor, Tensor]:
        """The ``k`` nearest atoms' indices ``[P, k]`` and ``b = ⟨atom, y⟩`` ``[P, k]``, read off the search
        as the library does."""
        if self.metric == "l2":
            d, idx = self.search(y)
            return idx, 0.5 * (yy[:, None] + self.norms[idx].pow(2) - d)
        unit = y / yy.sqrt().clamp_min(1e-12)[:, None]
        probed = self.probe.probed(unit) if self.probe is not None else None
        m = len(self.unit)
        keys, cos, found = [], [], []
        for start in range(0, m, SEARCH_BLOCK):
            c = unit @ self.unit[start : start + SEARCH_BLOCK].T  # a constant: folded when a runtime loads it
            stop = start + c.shape[1]
            if probed is None:
                key = c.abs() if self.metric == "abscos" else c
            else:  # an atom is found by its own entry (key cos) or, for abscos, its negative's (key −cos)
                key = torch.where(self.probe.entries(probed, start, stop), c, -torch.inf)
                if self.metric == "abscos":
                    negative = torch.where(self.probe.entries(probed, start + m, stop + m), -c, -torch.inf)
                    key = torch.maximum(key, negative)
            best, pick = key.topk(min(self.k, key.shape[1]), dim=1)
            keys.append(best)
            cos.append(c.gather(1, pick))
            found.append(pick + start)
        key, c, idx = torch.cat(keys, dim=1), torch.cat(cos, dim=1), torch.cat(found, dim=1)
        if len(keys) > 1:
            pick = key.topk(self.k, dim=1).indices
            c, idx = c.gather(1, pick), idx.gather(1, pick)
        return idx, c * self.norms[idx] * yy.sqrt()[:, None]

    def forward(self, features: Tensor) -> Tensor:
        n, ch, h, w = features.shape
        y = features.permute(0, 2, 3, 1).reshape(-1, ch) / self.scale
        yy = y.pow(2).sum(1)
        idx, b = self.candidates(y, yy)
        atoms = self.bank[idx] if self.metric == "l2" else self.unit[idx] * self.norms[idx][:, :, None]
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
    """The unified models' ``predict`` (:class:`~reconad.models.unified.UnifiedModel`: RLR, RLR-selfref,
    UniAD): the model's tokens (constant matrices on the features), each network's token errors, one map per
    network on its grid. The fitted networks are used as they are."""

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
