"""Bank search with operations ONNX has: the ``k`` best atoms of a fitted model's bank for each query, as the
model's :class:`~.knn.NearestNeighbors` finds them (:func:`bank_search`), for the export heads of PatchCore
and SGFR (``export_head``). It imports onnxscript (its custom operation's ONNX form): the models import it
only when a head is built.

Both searches return ``(keys, atoms, signs)``, each ``[P, k]``, best first. The key is ``2⟨q, a⟩ − ‖a‖²`` for
the ``l2`` metric (largest = nearest; the squared distance is ``‖q‖² − key``, as FAISS computes it) and the
cosine with the unit query otherwise (``abscos``: ``|cos|``); ``signs`` turn a key back into the atom's
signed cosine (``cos = key · sign``; 1 except for ``abscos``).

* :class:`ExactSearch`: every atom, block by block (:data:`SEARCH_BLOCK` atoms at a time, so the largest
  tensor stays bounded however large the bank).
* :class:`IVFSearch`: the IVF index's own search over its entries (``abscos``: the atoms, then their
  negatives) in the ``nprobe`` lists whose centroids rank first (as FAISS's flat quantizer ranks them).
"""

from __future__ import annotations

import math

import torch
from onnxscript import opset18 as op  # the opset of every exported graph (graphs.OPSET)
from torch import Tensor, nn

from reconad.models.bank.knn import NearestNeighbors

#: Atoms per block of the exact search: the ``[P, block]`` key matrix is the largest tensor it holds.
SEARCH_BLOCK = 8192


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


def _searched(bank: Tensor, metric: str) -> Tensor:
    """The bank as the metric searches it: the atoms (``l2``), or the unit atoms (the cosine metrics)."""
    bank = bank.detach().float()
    return bank if metric == "l2" else bank / bank.norm(dim=1, keepdim=True).clamp_min(1e-12)


class ExactSearch(nn.Module):
    """Every atom's key, block by block; ``abscos`` keys ``|cos|`` with the cosine's sign."""

    def __init__(self, bank: Tensor, metric: str, k: int) -> None:
        super().__init__()
        bank = _searched(bank, metric)
        self.metric, self.k = metric, min(k, len(bank))
        self.summary = {"kind": "exact", "atoms": len(bank)}  # for the export's manifest
        self.may_miss = False  # k is at most the bank's size: every result slot is filled
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


@torch.library.custom_op("reconad::ivf_keys", mutates_args=())
def ivf_keys(
    q: Tensor, probed: Tensor, list_ids: list[int], weights: list[Tensor], biases: list[Tensor], longest: int
) -> Tensor:
    """The keys ``[P, nprobe, longest]`` of each query's probed lists (``probed [P, nprobe]``): list
    ``list_ids[j]`` keys ``q @ weights[j] + biases[j]``, −inf past its end (lists not named: all −inf).
    One operation to torch's tracer (its output's shape follows the inputs'); :func:`ivf_keys_onnx` writes it
    as ONNX."""
    keys = q.new_full((q.shape[0], probed.shape[1], longest), -torch.inf)
    for i, weight, bias in zip(list_ids, weights, biases, strict=True):
        at = torch.nonzero(probed == i)
        keys[at[:, 0], at[:, 1], : weight.shape[1]] = q[at[:, 0]] @ weight + bias
    return keys


@ivf_keys.register_fake
def _ivf_keys_shape(
    q: Tensor, probed: Tensor, list_ids: list[int], weights: list[Tensor], biases: list[Tensor], longest: int
) -> Tensor:  # the output's shape, for tracing
    return q.new_empty((q.shape[0], probed.shape[1], longest))


def ivf_keys_onnx(q, probed, list_ids, weights, biases, longest):  # ONNX Script values in, one out
    """:func:`ivf_keys` in ONNX, list by list as FAISS searches: the (query, probe) pairs that probe the
    list (``NonZero``: how many is known only when the graph runs), their queries keyed with one matrix
    product, padded with −inf to ``longest``; one ``ScatterND`` puts every pair's keys in its place."""
    places, keyed = [], []
    for i, weight, bias in zip(list_ids, weights, biases, strict=True):
        at = op.Transpose(op.NonZero(op.Equal(probed, op.Constant(value_int=i))), perm=[1, 0])  # [u, 2]
        rows = op.Gather(at, op.Constant(value_int=0), axis=1)
        key = op.Add(op.MatMul(op.Gather(q, rows, axis=0), weight), bias)
        if (pad := longest - int(weight.shape[1])) > 0:
            key = op.Pad(key, op.Constant(value_ints=[0, 0, 0, pad]), op.Constant(value_float=-math.inf))
        places.append(at)
        keyed.append(key)
    shape = op.Concat(
        op.Shape(q, end=1), op.Shape(probed, start=1), op.Constant(value_ints=[longest]), axis=0
    )
    keys = op.Expand(op.Constant(value_float=-math.inf), shape)
    return op.ScatterND(keys, op.Concat(*places, axis=0), op.Concat(*keyed, axis=0))


#: What :func:`torch.onnx.export` is to write for this module's custom operations.
ONNX_TRANSLATIONS = {torch.ops.reconad.ivf_keys.default: ivf_keys_onnx}


class IVFSearch(nn.Module):
    """The IVF index's search: the entries of each query's ``nprobe`` probed lists (:func:`ivf_keys`), their
    best ``k`` of ``nprobe`` × the longest list's slots."""

    def __init__(self, index: NearestNeighbors, bank: Tensor, centroids: Tensor, nprobe: int, k: int) -> None:
        super().__init__()
        lists = index.entry_lists()
        assert lists is not None, "an IVF search needs an IVF index"
        metric = index.metric
        bank = _searched(bank, metric)
        m = len(bank)
        entries, signs = (torch.cat([bank, -bank]), [1.0, -1.0]) if metric == "abscos" else (bank, [1.0])
        entry_sign = torch.tensor(signs).repeat_interleave(m)
        members = [torch.nonzero(lists == i)[:, 0] for i in range(len(centroids))]
        sizes = sorted(len(e) for e in members)
        # every list padded to the longest, and to k / nprobe slots at least: k results, the unfilled ones
        # (keys −inf, atom 0) where a patch's probed lists hold fewer than k entries
        self.longest = max(1, sizes[-1], math.ceil(k / nprobe))
        self.nprobe, self.k = nprobe, k
        self.may_miss = sum(sizes[:nprobe]) < k  # some patch's probed lists may hold fewer than k entries
        self.summary = {"kind": "ivf", "atoms": m, "lists": len(centroids), "nprobe": nprobe}
        self.nonempty = [i for i, e in enumerate(members) if len(e)]  # the lists with entries
        for i in self.nonempty:
            weights, bias = _key_form(entries[members[i]], metric)
            self.register_buffer(f"weights{i}", weights)
            self.register_buffer(f"bias{i}", bias)
        slots = torch.stack([torch.cat([e, e.new_full((self.longest - len(e),), -1)]) for e in members])
        used = slots >= 0  # [lists, longest]: each list's entries, −1 past its end
        self.register_buffer("slot_atom", torch.where(used, slots % m, 0))
        self.register_buffer("slot_sign", torch.where(used, entry_sign[slots.clamp(min=0)], 1.0))
        rank_weights, rank_bias = _key_form(centroids.detach().float(), metric)
        self.register_buffer("rank_weights", rank_weights)
        self.register_buffer("rank_bias", rank_bias)

    def forward(self, q: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        probed = _best(q @ self.rank_weights + self.rank_bias, self.nprobe)[1]
        weights = [getattr(self, f"weights{i}") for i in self.nonempty]
        biases = [getattr(self, f"bias{i}") for i in self.nonempty]
        keys = ivf_keys(q, probed, self.nonempty, weights, biases, self.longest)
        key, pick = _best(keys.reshape(q.shape[0], -1), self.k)
        slot = probed.gather(1, pick // self.longest) * self.longest + pick % self.longest
        return key, self.slot_atom.flatten()[slot], self.slot_sign.flatten()[slot]


def bank_search(bank: Tensor, centroids: Tensor, nprobe: int, metric: str, k: int) -> nn.Module:
    """The search a model with this ``bank`` and IVF ``centroids`` (empty: exact) performs, as a module."""
    index = NearestNeighbors(bank, centroids, nprobe, metric)
    if index.entry_lists() is None:
        return ExactSearch(bank, metric, k)
    return IVFSearch(index, bank, centroids, nprobe, k)
