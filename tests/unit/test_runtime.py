"""app/serving/runtime.py against glibc itself: after ``tune_allocator`` a large block comes
from the heap rather than from ``mmap`` and stays mapped once freed, until
``release_free_memory`` gives it back. Read through glibc's own ``mallinfo2``."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

import pytest

from app.serving import runtime
from app.serving.runtime import release_free_memory, tune_allocator

BLOCK = 64 << 20  # far above glibc's default mmap threshold (128 KiB to 32 MiB)


class MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",  # bytes of the heap (sbrk), in use or free
            "ordblks",
            "smblks",
            "hblks",  # blocks that are their own mmap
            "hblkhd",  # bytes in those
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is None or not hasattr(libc, "mallinfo2"):  # glibc >= 2.33
        return None
    libc.mallinfo2.restype = MallInfo2
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    return libc


LIBC = glibc()
needs_glibc = pytest.mark.skipif(LIBC is None, reason="glibc with mallinfo2 only")


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@needs_glibc
def test_tuned_large_blocks_come_from_the_heap_and_stay_mapped_until_released():
    # Measured as bytes in use and resident pages, not as the heap's size: earlier
    # tests may have left a free chunk in the heap large enough for the block.
    assert LIBC is not None
    assert tune_allocator() is True  # the service does this at start (settings.tune_allocator)
    before = LIBC.mallinfo2()
    block = LIBC.malloc(BLOCK)
    assert block
    try:
        ctypes.memset(block, 1, BLOCK)  # every page resident
        during = LIBC.mallinfo2()
        assert during.hblks == before.hblks  # not an mmap of its own (M_MMAP_MAX = 0)
        assert during.hblkhd == before.hblkhd
        assert during.uordblks >= before.uordblks + BLOCK  # a heap block instead
        resident = resident_bytes()
    finally:
        LIBC.free(block)
    # Kept for the next batch: 64 MiB is under the 1 GiB trim threshold.
    assert LIBC.mallinfo2().fordblks >= BLOCK
    kept = resident_bytes()
    assert kept > resident - BLOCK // 4
    assert release_free_memory() is True  # free pages went back to the kernel
    assert resident_bytes() < kept - BLOCK // 2


def test_without_glibc_both_do_nothing(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert runtime._glibc() is None
    assert tune_allocator() is False
    assert release_free_memory() is False


@pytest.mark.parametrize(
    "found", [None, "libconvewma-no-such-library.so.0"], ids=["not found", "not loadable"]
)
def test_a_c_library_that_cannot_be_found_or_loaded_is_none(monkeypatch, found):
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: found)
    assert runtime._glibc() is None
    assert tune_allocator() is False
    assert release_free_memory() is False


@needs_glibc
def test_glibc_is_found_on_linux():
    libc = runtime._glibc()
    assert libc is not None
    assert libc.malloc_trim(0) in (0, 1)


@needs_glibc
def test_only_a_free_heap_top_over_the_one_gibibyte_threshold_is_trimmed_on_free():
    # The heap grows by address space alone (no page is touched), so 1.5 GiB costs nothing.
    # Freed, it is a top chunk between the threshold (1 GiB) and twice it: glibc gives it
    # back at once; a 64 MiB one stays for the next batch (the test above).
    assert LIBC is not None
    assert tune_allocator() is True
    release_free_memory()
    before = LIBC.mallinfo2()
    block = LIBC.malloc(3 << 29)
    assert block
    try:
        grown = LIBC.mallinfo2()
        assert grown.hblks == before.hblks  # from the heap, not an mmap of its own
        assert grown.arena >= before.arena + (3 << 29)
    finally:
        LIBC.free(block)
    assert LIBC.mallinfo2().arena < grown.arena - (1 << 30)
