"""Process-level speed settings: the allocator setting the CLI makes at start-up, decoding on every core."""

import json
import platform
import subprocess
import sys

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


_KEPT_THEN_RETURNED = """
import json
import os
import numpy as np
from reconad import runtime

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

seen = {"kept": runtime.keep_freed_memory(1 << 30)}
blocks = [np.ones(64 << 7) for _ in range(3200)]  # 200 MiB in 64 KiB blocks, on the heap
del blocks  # kept: the pad is 1 GiB
before = rss_mb()
with runtime.less_kept_memory(16 << 20):
    seen["returned_mb"] = before - rss_mb()
    seen["pad_inside"] = runtime._kept_pad
try:
    with runtime.less_kept_memory(16 << 20):
        raise RuntimeError("a failed fit")
except RuntimeError:
    pass
seen["pad_after_an_error"] = runtime._kept_pad
print(json.dumps(seen))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt(M_TOP_PAD) is a glibc setting")
def test_less_kept_memory_returns_what_was_kept_and_restores_the_pad():
    # a fresh process: the test suite's own heap (its holes, its mmap threshold) would decide what is returned
    done = subprocess.run([sys.executable, "-c", _KEPT_THEN_RETURNED], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.splitlines()[-1])
    assert seen["kept"] is True
    assert seen["returned_mb"] > 100, seen  # most of the 200 MiB went back to the kernel
    assert seen["pad_inside"] == 1 << 30, seen
    assert seen["pad_after_an_error"] == 1 << 30, seen  # restored on exit, also after an error


def test_less_kept_memory_changes_nothing_unless_memory_was_kept(monkeypatch):
    from reconad import runtime

    monkeypatch.setattr(runtime, "_kept_pad", None)
    calls = []
    monkeypatch.setattr(runtime, "_mallopt_top_pad", lambda pad: calls.append(pad) or True)
    with runtime.less_kept_memory():
        pass
    assert calls == []
