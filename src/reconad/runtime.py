"""Process-wide settings that make CPU inference fast: keep freed memory for reuse (glibc malloc).

A backbone forward allocates and frees tens of MB of activations per batch. glibc's default malloc hands
such blocks back to the kernel on ``free`` and faults them in again, zeroed, on the next batch. On the
2-core virtual machines we measure on, those page faults cost more than the convolutions: the
EfficientNet-Lite0 forward takes 15–20 ms per 256 px image with the default, 10–11 ms with the freed memory
kept (``benchmarks/README.md``, *Allocator*). The CLI calls :func:`keep_freed_memory` at start-up; library
users can call it once themselves.
"""

from __future__ import annotations

import ctypes

M_TOP_PAD = -2  # glibc's mallopt parameter: bytes kept at the top of the heap after a trim
DEFAULT_PAD = 1 << 30


def keep_freed_memory(pad_bytes: int = DEFAULT_PAD) -> bool:
    """Ask glibc malloc to keep up to ``pad_bytes`` of freed heap memory for reuse instead of returning it.

    The price is a slightly higher peak resident size (measured on bottle: ``reconad fit patchcore``
    1.73 → 1.89 GB, ``reconad test`` 1.41 → 1.55 GB). Returns False, changing nothing, where the C library
    is not glibc (macOS, musl) or refuses the setting.
    """
    if pad_bytes < 0 or pad_bytes > 2**31 - 1:
        raise ValueError(f"pad_bytes must be in [0, 2**31 - 1], got {pad_bytes}")
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_TOP_PAD, int(pad_bytes)) == 1
