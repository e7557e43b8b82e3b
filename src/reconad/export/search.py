"""Bank search with operations ONNX has: the ``k`` best atoms of a fitted model's bank for each query, as the
model's :class:`~reconad.models.knn.NearestNeighbors` finds them (:func:`bank_search`).

Both searches return ``(keys, atoms, signs)``, each ``[P, k]``, best first. The key is ``2⟨q, a⟩ − ‖a‖²`` for
the ``l2`` metric (largest = nearest; the squared distance is ``‖q‖² − key``, as FAISS computes it) and the
cosine with the unit query otherwise (``abscos``: ``|cos|``); ``signs`` turn a key back into the atom's
signed cosine (``cos = key · sign``; 1 except for ``abscos``).

* :class:`ExactSearch`: every atom, block by block (:data:`SEARCH_BLOCK` atoms at a time, so the largest
  tensor stays bounded however large the bank).
* :class:`IVFSearch`: the IVF index's own search. Its entries (``abscos``: the atoms, then their negatives)
  are laid out list by list in chunks of :data:`IVF_CHUNK` slots, a list's last chunk padded with empty
  slots; each query gathers the vectors of the chunks of the ``nprobe`` lists whose centroids rank first (as
  FAISS's flat quantizer ranks them), keys them with a batched product and keeps its best ``k`` slots.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from reconad.models.knn import NearestNeighbors

#: Atoms per block of the exact search: the ``[P, block]`` key matrix is the largest tensor it holds.
SEARCH_BLOCK = 8192
#: Slots per chunk of an IVF list: a list occupies whole chunks, so smaller chunks pad less but make each
#: query gather more of them (one ``[P, IVF_CHUNK, C]`` gather per probed chunk).
IVF_CHUNK = 32


def _best(keys: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` largest keys per row and their columns."""
    return keys.topk(k, dim=1) if k > 1 else keys.max(dim=1, keepdim=True)


def _merge(k: int, keys: list[Tensor], *found: list[Tensor]) -> tuple[Tensor, ...]:
    """The best ``k`` over several blocks' candidates: keys ``[P, k_b]`` per block, and what each found."""
    key, rest = torch.cat(keys, dim=1), [torch.cat(f, dim=1) for f in found]
    if len(keys) > 1:
        key, pick = _best(key, k)
        rest = [r.gather(1, pick) for r in rest]
    return (key, *rest)


def _key_form(vectors: Tensor, metric: str) -> tuple[Tensor, Tensor]:
    """``(weights [C, n], bias [n])`` with ``q @ weights + bias`` the key of each vector: ``2⟨q, a⟩ − ‖a‖²``
    for ``l2`` (the factor 2 is exact in floating point), ``⟨q, a⟩`` for unit vectors."""
    if metric == "l2":
        return 2.0 * vectors.T.contiguous(), -vectors.pow(2).sum(1)
    return vectors.T.contiguous(), torch.zeros(len(vectors))


class ExactSearch(nn.Module):
    """Every atom's key, block by block; ``abscos`` keys ``|cos|`` with the cosine's sign."""

    def __init__(self, bank: Tensor, metric: str, k: int) -> None:
        super().__init__()
        bank = bank.detach().float()
        if metric != "l2":
            bank = bank / bank.norm(dim=1, keepdim=True).clamp_min(1e-12)
        self.metric, self.k = metric, min(k, len(bank))
        self.blocks = (len(bank) + SEARCH_BLOCK - 1) // SEARCH_BLOCK
        for i, block in enumerate(bank.split(SEARCH_BLOCK)):
            weights, bias = _key_form(block, metric)
            self.register_buffer(f"weights{i}", weights)
            self.register_buffer(f"bias{i}", bias)

    def forward(self, q: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        keys, found, signs = [], [], []
        for i in range(self.blocks):
            key = q @ getattr(self, f"weights{i}") + getattr(self, f"bias{i}")
            best, pick = _best(key.abs() if self.metric == "abscos" else key, min(self.k, key.shape[1]))
            keys.append(best)
            found.append(pick + i * SEARCH_BLOCK)
            signed = self.metric == "abscos"
            signs.append(torch.where(key.gather(1, pick) < 0, -1.0, 1.0) if signed else torch.ones_like(best))
        return _merge(self.k, keys, found, signs)


class IVFSearch(nn.Module):
    """The IVF index's search: the chunks of each query's ``nprobe`` probed lists, their best ``k`` slots.

    Only the probed chunks are keyed, one chunk position at a time: the vectors of each query's chunk are
    gathered (``[P, IVF_CHUNK, C]``, the largest tensor the search holds) and multiplied by the query. The
    last chunk is the empty one that lists with fewer chunks point to; its slots key −inf.
    """

    def __init__(self, index: NearestNeighbors, bank: Tensor, centroids: Tensor, nprobe: int, k: int) -> None:
        super().__init__()
        lists = index.entry_lists()
        assert lists is not None, "an IVF search needs an IVF index"
        metric, bank = index.metric, bank.detach().float()
        m = len(bank)
        if metric != "l2":
            bank = bank / bank.norm(dim=1, keepdim=True).clamp_min(1e-12)
        entries, signs = (torch.cat([bank, -bank]), [1.0, -1.0]) if metric == "abscos" else (bank, [1.0])
        entry_sign = torch.tensor(signs).repeat_interleave(m)
        chunk_entries, list_chunks = [], []  # each chunk's entries (−1: empty slot); each list's chunks
        for i in range(len(centroids)):
            members = torch.nonzero(lists == i)[:, 0]
            first = len(chunk_entries)
            for part in members.split(IVF_CHUNK):
                chunk_entries.append(torch.cat([part, part.new_full((IVF_CHUNK - len(part),), -1)]))
            list_chunks.append(list(range(first, len(chunk_entries))))
        empty = len(chunk_entries)
        chunk_entries.append(torch.full((IVF_CHUNK,), -1, dtype=torch.int64))
        most = max(1, max(len(c) for c in list_chunks))
        slots = torch.stack(chunk_entries).flatten()
        used = slots >= 0
        vectors = torch.zeros(len(slots), bank.shape[1])
        vectors[used] = entries[slots[used]]
        weights, bias = _key_form(vectors, metric)
        bias[~used] = -torch.inf
        self.nprobe, self.k = nprobe, min(k, nprobe * most * IVF_CHUNK)
        self.register_buffer(
            "list_chunks", torch.tensor([c + [empty] * (most - len(c)) for c in list_chunks])
        )
        self.register_buffer("chunk_weights", weights.T.reshape(empty + 1, IVF_CHUNK, -1).contiguous())
        self.register_buffer("chunk_bias", bias.reshape(empty + 1, IVF_CHUNK))
        self.register_buffer("slot_atom", torch.where(used, slots % m, 0))
        self.register_buffer("slot_sign", torch.where(used, entry_sign[slots.clamp(min=0)], 1.0))
        rank_weights, rank_bias = _key_form(centroids.detach().float(), metric)
        self.register_buffer("rank_weights", rank_weights)
        self.register_buffer("rank_bias", rank_bias)

    def forward(self, q: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        probed = _best(q @ self.rank_weights + self.rank_bias, self.nprobe)[1]
        chunks = self.list_chunks[probed].flatten(1)  # [P, nprobe · most]
        column = q[:, :, None]
        keys = [(self.chunk_weights[c] @ column)[:, :, 0] + self.chunk_bias[c] for c in chunks.unbind(1)]
        key, pick = _best(torch.cat(keys, dim=1), self.k)
        slot = chunks.gather(1, pick // IVF_CHUNK) * IVF_CHUNK + pick % IVF_CHUNK
        return key, self.slot_atom[slot], self.slot_sign[slot]


def bank_search(bank: Tensor, centroids: Tensor, nprobe: int, metric: str, k: int) -> nn.Module:
    """The search a model with this ``bank`` and IVF ``centroids`` (empty: exact) performs, as a module."""
    index = NearestNeighbors(bank, centroids, nprobe, metric)
    if index.entry_lists() is None:
        return ExactSearch(bank, metric, k)
    return IVFSearch(index, bank, centroids, nprobe, k)
