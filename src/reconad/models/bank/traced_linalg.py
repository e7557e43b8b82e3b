"""Small dense linear algebra with the operations ONNX has (ONNX has no Cholesky factorisation, solve or
inverse): fixed-count loops of matrix products and elementwise steps, unrolled when traced."""

from __future__ import annotations

import torch
from torch import Tensor


def spd_inverse(a: Tensor) -> Tensor:
    """The inverses of symmetric positive definite matrices ``[..., K, K]``, by ``K`` sweeps.

    Sweeping pivot ``p`` (Gauss–Jordan elimination in place, stable without pivoting on SPD matrices) sets
    ``a_ij ← a_ij − a_ip a_pj / a_pp`` off row and column ``p``, ``a_ip ← a_ip / a_pp`` and
    ``a_pj ← a_pj / a_pp`` on them, and ``a_pp ← −1 / a_pp``; after all ``K`` pivots ``a`` holds ``−A⁻¹``.
    A sweep is two broadcast outer products (four full-size operations), so the ``K`` sweeps trace to a
    fixed graph.
    """
    k = a.shape[-1]
    eye = torch.eye(k, dtype=a.dtype, device=a.device)
    for p in range(k):
        col = a[..., :, p : p + 1]  # [..., K, 1]
        row = a[..., p : p + 1, :]  # [..., 1, K]
        pivot = a[..., p : p + 1, p : p + 1]  # [..., 1, 1]
        e_col, e_row = eye[:, p : p + 1], eye[p : p + 1, :]
        # (col − e_col)·row/pivot is the elimination off row p, and leaves row p divided by the pivot; it
        # also leaves column p at e_col, which the second product replaces by col/pivot and −1/pivot
        column = col / pivot - e_col * (2 + 1 / pivot)
        a = a - (col - e_col) * (row / pivot) + column * e_row
    return -a
