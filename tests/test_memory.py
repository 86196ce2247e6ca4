"""Returning freed heap pages to the OS (vitq.memory) really lowers the resident size."""

import ctypes
import ctypes.util
import os

import pytest
import torch

from vitq.memory import _malloc_trim, release_free_memory

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters
GLIBC_DEFAULT = 128 << 10


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(_malloc_trim() is None, reason="needs glibc's malloc_trim")
def test_release_returns_retained_heap_pages():
    # The state a long pass reaches: glibc's thresholds have risen (after large frees), so batch
    # buffers come from the heap and freed ones stay resident. Set that state explicitly, so the
    # test does not depend on what ran before it, then restore glibc's defaults.
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)
    libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)
    try:
        for i in range(48):  # 48 batch buffers of 1-4 MiB, each touched, then freed
            torch.empty((1 << 20) + i * (64 << 10), dtype=torch.uint8).fill_(1)
        before = _rss_mib()
        assert release_free_memory()
        after = _rss_mib()
    finally:
        libc.mallopt(M_MMAP_THRESHOLD, GLIBC_DEFAULT)
        libc.mallopt(M_TRIM_THRESHOLD, GLIBC_DEFAULT)
    # At least the largest freed buffer (~4 MiB) was still resident and is handed back.
    assert before - after > 3.5, (before, after)
