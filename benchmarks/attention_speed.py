"""Windowed attention on CPU: the dense masked kernel against query tiles (4×4, and 1×1 = gathering each
query's window).

    .venv/bin/python benchmarks/attention_speed.py [--repeat 10]

Forward + backward of one attention, batch 4, 4 heads, on the two grids RLR uses (32×32 with a 7×7
window, 16×16 with 5×5), head widths 16 and 32 (token widths 64 and 128 of the CPU recipe). Prints a
markdown table of milliseconds per call (the best of ``--repeat``).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from reconad.models.attention import local_attention, masked_attention
from reconad.runtime import keep_freed_memory


def timed(fn: Callable[[], torch.Tensor], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn().sum().backward()
        best = min(best, time.perf_counter() - start)
    return 1000 * best


def main() -> None:
    keep_freed_memory()  # as the CLI does (reconad.runtime)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=10)
    args = ap.parse_args()
    gen = torch.Generator().manual_seed(0)
    head = "| grid | window | head width | LCA dense | LCA tiles 4×4 | LCA tiles 1×1 | MLKA (masked window) |"
    print(head)
    print("|---|---:|---:|---:|---:|---:|---:|")
    for side, window, d in ((32, 7, 16), (16, 5, 32)):
        n = side * side
        q, k, v = (torch.randn(4, 4, n, d, generator=gen, requires_grad=True) for _ in range(3))
        ref = torch.randn(4, n, d, generator=gen, requires_grad=True)
        hw = (side, side)
        dense = timed(lambda: local_attention(q, ref, ref, hw, window, method="dense"), args.repeat)  # noqa: B023
        tiles = timed(lambda: local_attention(q, ref, ref, hw, window, method="blocked"), args.repeat)  # noqa: B023
        gather = timed(lambda: local_attention(q, ref, ref, hw, window, "blocked", 1), args.repeat)  # noqa: B023
        masked = timed(lambda: masked_attention(q, k, v, hw, window), args.repeat)  # noqa: B023
        times = " | ".join(f"{t:.1f}" for t in (dense, tiles, gather, masked))
        print(f"| {side}×{side} | {window}×{window} | {d} | {times} |")


if __name__ == "__main__":
    main()
