"""The allocator setting the CLI makes at start-up."""

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
