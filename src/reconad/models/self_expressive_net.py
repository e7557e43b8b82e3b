"""A learned self-expressive coder (after SENet, Zhang et al., CVPR 2021), restricted to candidate atoms.

Instead of solving an elastic net per target, a query network ``f`` and a key network ``g`` give the code of
candidate atom ``a_k`` for target ``y`` directly,

    c_k = T_b( f(y)ᵀ g(a_k) / √d ),       T_b(s) = sign(s) · max(|s| − b, 0),  b = softplus(β) learned,

trained on normal patches to minimise the same objective the solver minimises,
``½‖y − Σ_k c_k a_k‖² + λ(α‖c‖₁ + (1 − α)/2 ‖c‖²)``, with the target's own atom excluded (zero
self-coefficient). The codes are then a smooth function of the target learned from normal data only: a
feature the training never showed gets the codes the network infers for it, not the best codes there are,
so the span of its atoms mimics it less than the solver's.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from reconad.models.knn import NearestNeighbors
from reconad.models.self_expressive import candidates, n_candidates, residual_from_gram


def _mlp(channels: int, hidden: int, dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, dim)
    )


class SelfExpressiveNet(nn.Module):
    """Codes ``[B, K]`` of candidate atoms ``[B, K, C]`` for targets ``[B, C]``."""

    def __init__(self, channels: int, hidden: int = 128, dim: int = 32) -> None:
        super().__init__()
        self.query = _mlp(channels, hidden, dim)
        self.key = _mlp(channels, hidden, dim)
        self.shrink = nn.Parameter(torch.tensor(-10.0))  # b = softplus(β) ≈ 5e-5 at the start: codes flow

    def forward(self, y: Tensor, atoms: Tensor) -> Tensor:
        q = self.query(y)
        k = self.key(atoms)
        s = torch.bmm(k, q.unsqueeze(-1)).squeeze(-1) / math.sqrt(q.shape[-1])
        t = nn.functional.softplus(self.shrink)
        return s - s.clamp(-t, t)


def train_coder(
    net: SelfExpressiveNet,
    index: NearestNeighbors,
    points: Tensor,
    own: Tensor,
    k: int,
    lam: float,
    alpha: float,
    steps: int,
    batch: int = 1024,
    lr: float = 1e-3,
    seed: int = 0,
) -> list[float]:
    """Fit ``net`` on ``points`` ``[M, C]`` (normal patches; ``own`` ``[M]`` each one's atom index, or −2)
    coded over their ``k`` candidates in ``index``: Adam, cosine-decayed ``lr``, ``steps`` batches drawn with
    replacement. Returns the loss per step."""
    k = n_candidates(index, k, True)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    losses = []
    for _ in range(steps):
        rows = torch.randint(len(points), (min(batch, len(points)),), generator=gen)
        y = points[rows]
        with torch.no_grad():
            _, a, b = candidates(index, y, k, own[rows])
        c = net(y, a)
        gram = torch.bmm(a, a.transpose(1, 2))
        res = residual_from_gram(gram, b, (y * y).sum(1), c)
        loss = (0.5 * res + lam * (alpha * c.abs().sum(-1) + 0.5 * (1 - alpha) * c.pow(2).sum(-1))).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    net.eval()
    return losses
