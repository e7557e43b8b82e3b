"""Batched, candidate-restricted elastic-net self-expression: the numerical core of SGFR.

Every target ``y`` is coded over its ``K`` candidate atoms ``A = [a_1 … a_K]`` (its nearest neighbours in the
atom set; the target itself excluded when it is an atom, the zero self-coefficient of self-expression) by

    c* = argmin_c ½‖y − Aᵀc‖² + λ(α‖c‖₁ + (1 − α)/2 ‖c‖²)

which needs only ``G = A Aᵀ`` ``[B, K, K]``, ``b = A y`` ``[B, K]`` (read off the search's distances) and
``‖y‖²``. ADMM with one batched Cholesky inverse per batch solves it: an iteration is one batched
matrix-vector product and a soft threshold.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from reconad.models.bank.knn import NearestNeighbors

UNFILLED = -1  #: the index FAISS returns for a result slot it could not fill


def soft_threshold(x: Tensor, t: float) -> Tensor:
    """The proximal map of ``t‖·‖₁``."""
    return x - x.clamp(-t, t)


def _bmv(m: Tensor, v: Tensor) -> Tensor:
    """Batched ``m @ v`` for ``[B, K, K] × [B, K]`` (``bmm``: 2.7× faster than a broadcast multiply-sum at
    B = 1,024, K = 16 on one core)."""
    return torch.bmm(m, v.unsqueeze(-1)).squeeze(-1)


def elastic_net_gram(
    gram: Tensor, b: Tensor, lam: float, alpha: float, iters: int = 15, rho: float | None = None
) -> Tensor:
    """Elastic-net codes ``[B, K]`` from ``gram`` ``[B, K, K]`` and ``b`` ``[B, K]`` (ADMM, ``iters`` steps).

    Splits ``c = z``: the smooth part ½cᵀGc − bᵀc + λ(1−α)/2‖c‖² is minimised exactly through the inverse of
    ``G + (λ(1−α) + ρ)I`` (one batched Cholesky per call); the ℓ₁ part is a soft threshold. ``ρ = 5λ``
    by default (measured: relative objective gap ≈ 1e-3 after 15–20 steps on unit-scale features).
    Returns the sparse iterate ``z`` (exact zeros where an atom is not used).
    """
    l1, l2 = lam * alpha, lam * (1.0 - alpha)
    k = gram.shape[-1]
    diag_mean = float(gram.diagonal(dim1=-2, dim2=-1).mean().clamp_min(1e-12)) if gram.numel() else 1.0
    if rho is None:
        rho = max(5.0 * lam, 1e-3 * diag_mean)
    eye = torch.eye(k, dtype=gram.dtype, device=gram.device)
    system = gram + (l2 + rho) * eye
    thr = l1 / rho
    chol, info = torch.linalg.cholesky_ex(system)
    if bool(info.any()):  # not positive definite in float32 (e.g. duplicate atoms): add jitter
        chol = torch.linalg.cholesky(system + 1e-3 * diag_mean * eye)
    inv = torch.cholesky_inverse(chol)
    c0 = _bmv(inv, b)  # the ridge part of every c-step, reused
    inv_rho = rho * inv
    z = soft_threshold(c0, thr)
    u = c0 - z
    for _ in range(iters - 1):
        c = c0 + _bmv(inv_rho, z - u)
        z = soft_threshold(c + u, thr)
        u += c - z
    return z


def residual_from_gram(gram: Tensor, b: Tensor, yy: Tensor, c: Tensor) -> Tensor:
    """``‖y − Aᵀc‖²`` ``[B]`` from the Gram quantities (clamped at zero against round-off)."""
    quad = (c * _bmv(gram, c)).sum(-1)
    return (yy - 2.0 * (b * c).sum(-1) + quad).clamp_min(0.0)


def nearest_atoms(
    index: NearestNeighbors,
    y: Tensor,
    k: int,
    exclude_self: Tensor | None = None,
    exclude: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The ``k`` candidate atoms of each target ``y`` ``[B, C]`` (its nearest, by the index's metric):
    ``(indices [B, k], atoms [B, k, C], b = ⟨atom, y⟩ [B, k])``. ``exclude_self`` ``[B]`` (each target's own
    atom index) drops the target itself; the atoms ``exclude`` are never candidates. A slot the search could
    not fill (IVF probes with too few atoms) has index 0, a zero atom and ``b = 0``, which the solver leaves
    at code 0."""
    extra = 1 if exclude_self is not None else 0
    yy = (y * y).sum(1)
    d, idx = index.search(y, k + extra, exclude)
    if exclude_self is not None:
        keep = idx != exclude_self.unsqueeze(1)
        keep[:, -1] &= ~keep.all(1)  # the query's own atom was not found: drop the last instead
        d, idx = d[keep].view(-1, k), idx[keep].view(-1, k)
    missing = idx == UNFILLED
    idx = idx.clamp_min(0)
    a = index.atoms.index_select(0, idx.view(-1)).view(idx.shape[0], k, -1)
    if index.metric == "l2":
        b = 0.5 * (yy[:, None] + index.sq[idx] - d)  # ⟨a, y⟩ read off the squared distances
    else:
        b = d * index.norms[idx] * yy.sqrt()[:, None]  # ⟨a, y⟩ = cos · ‖a‖ · ‖y‖ (signed)
    if bool(missing.any()):
        a = a.masked_fill(missing.unsqueeze(-1), 0.0)
        b = b.masked_fill(missing, 0.0)
    return idx, a, b


def n_candidates(index: NearestNeighbors, k: int, exclude_self: bool) -> int:
    """``k``, capped by the atoms there are (less the target's own)."""
    return max(1, min(k, index.atoms.shape[0] - int(exclude_self)))


def sparse_codes(
    index: NearestNeighbors,
    queries: Tensor,
    k: int,
    lam: float,
    alpha: float,
    iters: int,
    exclude_self: Tensor | None = None,
    batch: int = 4096,
    exclude: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Elastic-net codes of ``queries`` ``[M, C]`` over their ``k`` nearest atoms in ``index``.

    ``exclude_self`` ``[M]`` (the atom index of each query) removes the query itself from its candidates;
    ``exclude`` (atom indices) removes those atoms from every query's candidates.
    Returns ``(candidate indices [M, k], codes [M, k], squared residuals [M])``.
    """
    m = queries.shape[0]
    k = n_candidates(index, k, exclude_self is not None)
    out_i = torch.empty(m, k, dtype=torch.long)
    out_c = torch.empty(m, k)
    out_r = torch.empty(m)
    for s in range(0, m, batch):
        y = queries[s : s + batch].float()
        own = None if exclude_self is None else exclude_self[s : s + batch]
        idx, a, b = nearest_atoms(index, y, k, own, exclude)
        gram = torch.bmm(a, a.transpose(1, 2))
        c = elastic_net_gram(gram, b, lam, alpha, iters)
        out_i[s : s + batch] = idx
        out_c[s : s + batch] = c
        out_r[s : s + batch] = residual_from_gram(gram, b, (y * y).sum(1), c)
    return out_i, out_c, out_r


def coverage_select(
    idx: Tensor,
    coef: Tensor,
    n_select: int,
    rounds: int = 4,
    residuals: Callable[[Tensor], Tensor] | None = None,
    steps: int = 8,
) -> Tensor:
    """Choose ``n_select`` of ``M`` self-expressed points as atoms, guided by their coefficients.

    ``idx``/``coef`` ``[M, K]``: each point's candidate atoms (indices into the same M points) and its
    self-expressive code. Point ``i`` relies on atom ``j`` with share ``p_ij = |c_ij| / Σ_j |c_ij|``; a
    point's need is ``w_i``. Atoms are chosen by the need they serve, ``Σ_i w_i p_ij + w_j`` (a chosen atom
    also covers itself), in ``rounds`` rounds of ``steps`` steps. At first ``w = 1``: the first step is plain
    usage ranking, the atoms the self-expression leans on most. After each step the need of the points
    served drops by the share served, ``w_i ← w_i (1 − Σ_{j new} p_ij)`` (so one step does not pile atoms on
    one subspace); after each round ``w_i`` is reset to point ``i``'s reconstruction residual from the atoms
    chosen so far (``residuals(chosen) -> [M]``), so later rounds serve the points, hence the subspaces, left
    uncovered. ``residuals=None``: usage ranking only (one round, one step).
    """
    m, k = idx.shape
    n_select = max(0, min(int(n_select), m))
    mass = coef.abs()
    p = mass / mass.sum(1, keepdim=True).clamp_min(1e-12)
    flat_idx, flat_p = idx.reshape(-1), p.reshape(-1)
    w = torch.ones(m)
    chosen = torch.zeros(m, dtype=torch.bool)
    if residuals is None:
        rounds, steps = 1, 1
    plan = max(1, min(rounds * steps, n_select))
    for t in range(plan):
        take = (n_select - int(chosen.sum())) // (plan - t)
        if take <= 0:
            continue
        gain = torch.zeros(m).index_add_(0, flat_idx, w.repeat_interleave(k) * flat_p) + w
        gain[chosen] = -1.0
        new = torch.zeros(m, dtype=torch.bool)
        new[torch.topk(gain, take, sorted=False).indices] = True
        chosen |= new
        if t + 1 == plan:
            break
        if residuals is not None and (t + 1) % steps == 0:
            w = residuals(chosen.nonzero().squeeze(1)).clamp_min(0.0).sqrt()
        else:
            w = w * (1.0 - (p * new[idx]).sum(1)).clamp_min(0.0)
        w[chosen] = 0.0
    return chosen.nonzero().squeeze(1)
