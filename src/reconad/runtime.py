"""Process-wide settings that make CPU inference fast: keep freed memory for reuse (glibc malloc).

A backbone forward allocates and frees tens of MB of activations per batch. glibc's default malloc hands
such blocks back to the kernel on ``free`` and faults them in again, zeroed, on the next batch. On the
2-core virtual machines we measure on, those page faults cost more than the convolutions: the
EfficientNet-Lite0 forward takes 15–20 ms per 256 px image with the default, 10–11 ms with the freed memory
kept (``benchmarks/README.md``, *Allocator*). The CLI calls :func:`keep_freed_memory` at start-up; library
users can call it once themselves. Model fitting, which allocates large one-off arrays rather than the same
activations batch after batch, runs under :func:`less_kept_memory`, so kept memory does not add to its
peak.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from contextlib import contextmanager, suppress

M_TOP_PAD = -2  # glibc's mallopt parameter: bytes kept at the top of the heap after a trim
DEFAULT_PAD = 1 << 30
FIT_PAD = 256 << 20  # what model fitting keeps (less_kept_memory)
_kept_pad: int | None = None  # the pad keep_freed_memory set, if any


def _mallopt_top_pad(pad_bytes: int) -> bool:
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_TOP_PAD, int(pad_bytes)) == 1


def keep_freed_memory(pad_bytes: int = DEFAULT_PAD) -> bool:
    """Ask glibc malloc to keep up to ``pad_bytes`` of freed heap memory for reuse instead of returning it.

    The price is a slightly higher peak resident size (measured on bottle: ``reconad test`` 1.41 → 1.55 GB;
    fitting runs under :func:`less_kept_memory`). Returns False, changing nothing, where the C library is
    not glibc (macOS, musl) or refuses the setting.
    """
    global _kept_pad
    if pad_bytes < 0 or pad_bytes > 2**31 - 1:
        raise ValueError(f"pad_bytes must be in [0, 2**31 - 1], got {pad_bytes}")
    ok = _mallopt_top_pad(pad_bytes)
    if ok:
        _kept_pad = int(pad_bytes)
    return ok


@contextmanager
def less_kept_memory(pad_bytes: int = FIT_PAD) -> Iterator[None]:
    """Inside the block glibc keeps at most ``pad_bytes`` of freed memory, and what was kept beyond that is
    returned on entry (``malloc_trim``); the pad :func:`keep_freed_memory` set is restored on exit.

    For model fitting: kept backbone activations only add to its peak, and its own working arrays need
    less. Measured on bottle (``reconad fit patchcore``): peak RSS 1.88 → 1.39–1.44 GB and the same fit time
    (14.8–16.0 s against 15.3–15.9 s); with glibc's default pad the peak is 1.31 GB but the fit 20 s, the
    coreset's buffers then being faulted in afresh each round. Nothing changes where
    :func:`keep_freed_memory` was not called, kept less than ``pad_bytes``, or the C library is not glibc.
    """
    kept = _kept_pad
    if kept is None or kept <= pad_bytes or not _mallopt_top_pad(pad_bytes):
        yield
        return
    with suppress(AttributeError, OSError):
        ctypes.CDLL(None).malloc_trim(ctypes.c_size_t(pad_bytes))
    try:
        yield
    finally:
        _mallopt_top_pad(kept)
