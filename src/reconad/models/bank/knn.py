"""Nearest-neighbour search over a bank of atoms (FAISS), shared by PatchCore and SGFR.

Exact (flat) search, or an inverted-file (IVF) search that probes only the ``nprobe`` coarse cells nearest
to each query (as the official PatchCore's approximate FAISS search does). The coarse centroids are learned
state: a model stores them, so a loaded model searches exactly like the fitted one.

On a CUDA device the search runs on the GPU: FAISS's own GPU index (the same exact or IVF search) where
this FAISS was built with GPU support, otherwise an exact search in torch (one matrix product and a top-k
per block of queries; exact even where the CPU index would probe IVF cells). Results come back on the CPU
either way, so the callers do not change.
"""

from __future__ import annotations

import math
from typing import Any

import faiss
import numpy as np
import torch
from torch import Tensor

METRICS = ("abscos", "cosine", "l2")
#: The most IVF lists a search may be asked to probe: more than any bank has (2√M lists for M atoms);
#: probing all of them or more is exact search.
MAX_NPROBE = 1 << 16
QUERY_BLOCK = 8192  # queries per GPU matrix product in the torch search (8,192 × 21,400 atoms: 0.7 GB)


def faiss_has_gpu() -> bool:
    """Whether this FAISS build can search on a GPU (``faiss-gpu``; ``faiss-cpu`` cannot) and sees one."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


_gpu_resources: dict[int, Any] = {}


def _faiss_to_gpu(index: Any, device: torch.device) -> Any:
    """``index`` copied to FAISS's GPU index of the same kind on ``device`` (one resources object per GPU)."""
    gpu = device.index if device.index is not None else torch.cuda.current_device()
    if gpu not in _gpu_resources:
        _gpu_resources[gpu] = faiss.StandardGpuResources()
    return faiss.index_cpu_to_gpu(_gpu_resources[gpu], gpu, index)


def ivf_lists(n_atoms: int, metric: str = "l2") -> int:
    """IVF lists for ``n`` index entries: ``2√n`` (4,096 → 128 lists of 32), with at least 39 entries per list
    (FAISS k-means wants that many points per centroid). ``abscos`` indexes ±atoms: 2 entries each."""
    n = 2 * n_atoms if metric == "abscos" else n_atoms
    return max(1, min(round(2.0 * math.sqrt(n)), n // 39))


def _entries(atoms: Tensor, metric: str) -> Tensor:
    """What the FAISS index holds: the atoms (l2), unit atoms (cosine), or unit atoms and their negatives."""
    if metric == "l2":
        return atoms.float()
    unit = _unit(atoms)
    return torch.cat([unit, -unit]) if metric == "abscos" else unit


def train_centroids(atoms: Tensor, n_lists: int, seed: int, metric: str = "l2") -> Tensor:
    """Coarse k-means centroids ``[n_lists, C]`` of the index entries (seeded; 10 Lloyd steps; spherical for
    the cosine metrics)."""
    x = np.ascontiguousarray(_entries(atoms, metric).numpy(), dtype=np.float32)
    km = faiss.Kmeans(
        x.shape[1], n_lists, niter=10, seed=seed, max_points_per_centroid=64, spherical=metric != "l2"
    )
    km.train(x)
    return torch.from_numpy(km.centroids.copy())


def ivf_centroids(atoms: Tensor, nprobe: int, seed: int, metric: str = "l2") -> Tensor:
    """The coarse centroids an IVF search over ``atoms`` probing ``nprobe`` lists needs (:func:`ivf_lists`
    of them), or an empty ``[0, C]`` tensor where exact search is used (``nprobe`` 0, or not below the
    number of lists)."""
    lists = ivf_lists(len(atoms), metric)
    if 0 < nprobe < lists:
        return train_centroids(atoms, lists, seed, metric)
    return torch.empty(0, atoms.shape[1])


def exact_search(
    entries: Tensor, queries: Tensor, k: int, metric: str = "l2", exclude: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Exact search in torch on ``entries``' device (the GPU search without FAISS-GPU): per block of
    :data:`QUERY_BLOCK` queries, the ``k`` smallest squared distances (``"l2"``) or largest inner products
    (the cosine metrics, on unit vectors) and their indices, on the CPU; FAISS's padding (-1, the worst
    float) where ``k`` exceeds the entries (less the ``exclude`` entries, never returned)."""
    blocked = None if exclude is None else exclude.to(entries.device)
    take = max(0, min(k, len(entries) - (0 if blocked is None else len(blocked.unique()))))
    dists, labels = [], []
    sq = entries.pow(2).sum(1) if metric == "l2" else None
    for block in queries.split(QUERY_BLOCK):
        x = block.to(entries.device, non_blocking=True)
        if sq is not None:
            scores = torch.addmm(sq, x, entries.T, alpha=-2).add_(x.pow(2).sum(1, keepdim=True))
        else:
            scores = x @ entries.T
        if blocked is not None:
            scores[:, blocked] = torch.inf if sq is not None else -torch.inf
        d, i = scores.topk(take, dim=1, largest=sq is None)
        dists.append(d.cpu())
        labels.append(i.cpu())
    d, i = torch.cat(dists), torch.cat(labels)
    if take < k:
        worst = torch.finfo(torch.float32).max * (1 if metric == "l2" else -1)
        d = torch.cat([d, d.new_full((len(d), k - take), worst)], dim=1)
        i = torch.cat([i, i.new_full((len(i), k - take), -1)], dim=1)
    return d, i


def _unit(x: Tensor) -> Tensor:
    x = x.float()
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


class NearestNeighbors:
    """Nearest-atom search (FAISS), exact or IVF over given ``centroids`` probing ``nprobe`` lists (exact
    where ``centroids`` is None or empty).

    ``metric``: ``"l2"`` nearest atoms; ``"cosine"`` largest cosine; ``"abscos"`` largest ``|cos|`` (the
    subspace notion of closeness: ``a`` and ``−a`` span the same line), searched as the largest cosine over
    the atoms and their negatives. With the same atoms and centroids the index, hence every search, is the
    same: centroids are learned state, stored with the model. ``device``: where the search runs (see the
    module's docstring for CUDA).
    """

    def __init__(
        self,
        atoms: Tensor,
        centroids: Tensor | None = None,
        nprobe: int = 8,
        metric: str = "l2",
        device: str | torch.device = "cpu",
    ) -> None:
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        self.metric = metric
        self.atoms = atoms.detach().float().cpu().contiguous()
        self.sq = (self.atoms * self.atoms).sum(1)
        self.norms = self.sq.sqrt()
        data = np.ascontiguousarray(_entries(self.atoms, metric).numpy())
        dim = data.shape[1]
        flat = faiss.IndexFlatL2 if metric == "l2" else faiss.IndexFlatIP
        if centroids is None or len(centroids) == 0 or nprobe <= 0 or nprobe >= len(centroids):
            self.index = flat(dim)
        else:
            quantizer = flat(dim)
            quantizer.add(np.ascontiguousarray(centroids.float().numpy()))
            kind = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
            self.index = faiss.IndexIVFFlat(quantizer, dim, len(centroids), kind)
            self.index.is_trained = True
            self.index.nprobe = nprobe
            self._quantizer = quantizer  # keep it alive: FAISS does not own it
        self.index.add(data)
        self.device = torch.device(device)
        self._gpu_entries: Tensor | None = None  # the torch search's copy of the index entries
        self._flat_index: Any = None  # an exact index beside an IVF one (:meth:`search` with exclusions)
        if self.device.type == "cuda":
            if faiss_has_gpu():
                self.index = _faiss_to_gpu(self.index, self.device)
            else:
                self._gpu_entries = torch.from_numpy(data).to(self.device)

    def entry_lists(self) -> Tensor | None:
        """The IVF list holding each index entry ``[entries]`` (int64; the atoms, then for ``abscos`` their
        negatives), read off the FAISS index; None for an exact (flat) index."""
        if not isinstance(self.index, faiss.IndexIVF):
            return None
        lists = torch.full((self.index.ntotal,), -1, dtype=torch.int64)
        invlists = self.index.invlists
        for i in range(self.index.nlist):
            size = invlists.list_size(i)
            if size:
                ids = faiss.rev_swig_ptr(invlists.get_ids(i), size).copy()
                lists[torch.from_numpy(ids).long()] = i
        return lists

    def search(self, queries: Tensor, k: int, exclude: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(squared L2 distances or signed cosines, atom indices)`` ``[B, k]``, best first (-1: none), on
        the CPU whatever the device. The atoms ``exclude`` (indices) are never returned; a query whose IVF
        probes then hold fewer than ``k`` atoms is searched exactly (-1 left only where fewer than ``k``
        atoms are not excluded)."""
        q = queries.detach().float().cpu()
        q = q if self.metric == "l2" else _unit(q)
        blocked = None if exclude is None or len(exclude) == 0 else self._entries_of(exclude)
        if self._gpu_entries is not None or (blocked is not None and self.device.type == "cuda"):
            if self._gpu_entries is None:  # FAISS's GPU index takes no exclusions: the torch search does
                self._gpu_entries = _entries(self.atoms, self.metric).to(self.device)
            return self._fold_negatives(*exact_search(self._gpu_entries, q, k, self.metric, blocked))
        ivf = isinstance(self.index, faiss.IndexIVF)
        if ivf:
            # Threads over queries and lists (mode 2), same results: 1.2× faster for k = 1 at nprobe 4
            # (bottle, tire), 5 % slower at nprobe 16 (magnetic_tile), 1.7× slower for SGFR's k = 16.
            self.index.parallel_mode = 2 if k == 1 and self.index.nprobe <= 8 else 0
        x = np.ascontiguousarray(q.numpy())
        if blocked is None:
            d, i = self.index.search(x, k)
        else:
            skip = faiss.IDSelectorNot(faiss.IDSelectorBatch(np.ascontiguousarray(blocked.numpy())))
            params = faiss.SearchParametersIVF(sel=skip, nprobe=self.index.nprobe) if ivf else None
            d, i = self.index.search(x, k, params=params or faiss.SearchParameters(sel=skip))
            lost = (i < 0).any(1)
            if ivf and lost.any():
                d[lost], i[lost] = self._flat().search(x[lost], k, params=faiss.SearchParameters(sel=skip))
        return self._fold_negatives(torch.from_numpy(d), torch.from_numpy(i).long())

    def _flat(self) -> Any:
        """An exact FAISS index over the same entries (built on first use)."""
        if self._flat_index is None:
            data = np.ascontiguousarray(_entries(self.atoms, self.metric).numpy())
            self._flat_index = (faiss.IndexFlatL2 if self.metric == "l2" else faiss.IndexFlatIP)(
                data.shape[1]
            )
            self._flat_index.add(data)
        return self._flat_index

    def _entries_of(self, atoms: Tensor) -> Tensor:
        """The index entries of ``atoms`` (``abscos``: each atom and its negative), int64."""
        atoms = atoms.long().cpu()
        return torch.cat([atoms, atoms + len(self.atoms)]) if self.metric == "abscos" else atoms

    def _fold_negatives(self, d: Tensor, i: Tensor) -> tuple[Tensor, Tensor]:
        """``abscos``: a hit on a negated atom is the atom itself with the cosine's sign turned."""
        if self.metric == "abscos":
            n = len(self.atoms)
            negative = i >= n
            d = torch.where(negative, -d, d)
            i = torch.where(negative, i - n, i)
        return d, i


def calibrate_nprobe(
    atoms: Tensor,
    centroids: Tensor,
    queries: Tensor,
    min_recall: float = 0.99,
    metric: str = "l2",
    k: int = 1,
) -> int:
    """The smallest power-of-two ``nprobe`` whose IVF search finds at least ``min_recall`` of the exact
    ``k`` nearest atoms of ``queries``; 0 (exact search) where no ``nprobe`` below the number of lists does.

    Label-free: a model calls it at fit time with good patches it did not keep as atoms.
    """
    if len(centroids) == 0 or len(queries) == 0:
        return 0
    _, exact = NearestNeighbors(atoms, None, 0, metric).search(queries, k)
    ivf, nprobe = NearestNeighbors(atoms, centroids, 1, metric), 1
    while nprobe < len(centroids):
        ivf.index.nprobe = nprobe
        _, found = ivf.search(queries, k)
        hits = (found.unsqueeze(2) == exact.unsqueeze(1)).any(dim=2).float().mean().item()
        if hits >= min_recall:
            return nprobe
        nprobe *= 2
    return 0
