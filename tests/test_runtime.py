"""Process-level speed settings: the allocator setting the CLI makes at start-up, decoding on every core."""

import os
import platform

import pytest

from reconad.runtime import keep_freed_memory


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt(M_TOP_PAD) is a glibc setting")
def test_keep_freed_memory_is_accepted_by_glibc():
    assert keep_freed_memory(64 << 20) is True
    assert keep_freed_memory() is True


@pytest.mark.parametrize("pad", [-1, 2**31])
def test_keep_freed_memory_refuses_pads_mallopt_cannot_take(pad):
    with pytest.raises(ValueError, match="pad_bytes"):
        keep_freed_memory(pad)


def test_map_on_cores_keeps_order_and_uses_worker_threads(monkeypatch):
    import threading

    import torch

    from reconad.pipeline import map_on_cores

    seen = set()

    def load(x):
        seen.add(threading.get_ident())
        return x * 2

    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert map_on_cores(load, list(range(40))) == [2 * x for x in range(40)]
    assert threading.get_ident() not in seen  # worker threads decoded, not the caller
    seen.clear()
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert map_on_cores(load, [3, 1]) == [6, 2] and seen == {threading.get_ident()}
    assert map_on_cores(load, []) == []


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt(M_TOP_PAD) is a glibc setting")
def test_less_kept_memory_returns_what_was_kept_and_restores_the_pad():
    import numpy as np

    from reconad import runtime

    assert keep_freed_memory(1 << 30)
    # 8 MiB freed at once: glibc's mmap threshold rises, so later 8 MiB blocks come from the heap
    np.ones(8 << 17)
    blocks = [np.ones(8 << 17) for _ in range(25)]  # 200 MiB on the heap
    del blocks  # kept: the pad is 1 GiB
    before = _rss_mb()
    with runtime.less_kept_memory(16 << 20):
        assert before - _rss_mb() > 100  # most of the 200 MiB went back to the kernel
        assert runtime._kept_pad == 1 << 30
    with pytest.raises(RuntimeError), runtime.less_kept_memory(16 << 20):
        raise RuntimeError("a failed fit")
    assert runtime._kept_pad == 1 << 30  # restored on exit, also after an error


def test_less_kept_memory_changes_nothing_unless_memory_was_kept(monkeypatch):
    from reconad import runtime

    monkeypatch.setattr(runtime, "_kept_pad", None)
    calls = []
    monkeypatch.setattr(runtime, "_mallopt_top_pad", lambda pad: calls.append(pad) or True)
    with runtime.less_kept_memory():
        pass
    assert calls == []
