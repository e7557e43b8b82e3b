"""Process-level speed settings: the allocator setting the CLI makes at start-up, decoding on every core."""

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
