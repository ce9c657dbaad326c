"""Keep freed memory in the process (glibc ``mallopt``): no page faults per action chunk.

By default glibc serves large blocks (above a threshold that adapts up to 32 MiB) with fresh
``mmap`` calls and returns freed heap tops to the kernel. A forward pass at the paper preset's
resolution allocates many 5-25 MiB activations, so every chunk touches ~170k new pages; the
kernel zeroes each one on its first write (measured on 2 CPU cores: ~0.8-1.6 s of system time
per chunk). :func:`keep_freed_memory` fixes the mmap threshold at its maximum and raises the
trim threshold, so freed blocks are reused and a steady-state chunk faults no pages. The price is
that the process keeps its peak heap (it does not shrink after a large chunk); peak memory is
unchanged. Outputs are unchanged (it is only the allocator). The deployment runtime applies it
by default (``controller.keep_freed_memory``); ``benchmarks/controller_speed.py`` measures it.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform

logger = logging.getLogger(__name__)

# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3

#: glibc refuses an mmap threshold above HEAP_MAX_SIZE / 2 (32 MiB on 64-bit systems)
MAX_MMAP_THRESHOLD = 32 * 1024 * 1024

_applied: dict | None = None


def keep_freed_memory(mmap_threshold: int = MAX_MMAP_THRESHOLD, trim_threshold: int = 1 << 30,
                      top_pad: int = 64 * 1024 * 1024) -> bool:
    """Tune glibc's allocator for repeated large allocations (see the module docstring).

    Args:
        mmap_threshold: blocks at least this large (bytes) are still served by ``mmap``.
        trim_threshold: free memory at the heap top kept before returning any to the kernel.
        top_pad: extra bytes requested from the kernel whenever the heap grows.

    Returns True when applied (or already applied with these values); False, with a log message,
    on a C library that is not glibc (macOS, musl), where nothing is changed.
    """
    global _applied
    wanted = {"mmap_threshold": int(mmap_threshold), "trim_threshold": int(trim_threshold), "top_pad": int(top_pad)}
    if not 0 < wanted["mmap_threshold"] <= MAX_MMAP_THRESHOLD:
        raise ValueError(f"mmap_threshold must be in (0, {MAX_MMAP_THRESHOLD}] bytes, got {mmap_threshold}")
    if wanted["trim_threshold"] <= 0 or wanted["top_pad"] < 0:
        raise ValueError(f"trim_threshold must be > 0 and top_pad >= 0, got {trim_threshold}, {top_pad}")
    if _applied == wanted:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        logger.info("keep_freed_memory: not glibc (%s %s), allocator left as is", platform.system(),
                    platform.libc_ver()[0] or "unknown libc")
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    ok = all(libc.mallopt(param, ctypes.c_int(min(value, 2**31 - 1))) == 1 for param, value in (
        (M_MMAP_THRESHOLD, wanted["mmap_threshold"]), (M_TRIM_THRESHOLD, wanted["trim_threshold"]),
        (M_TOP_PAD, wanted["top_pad"])))
    if not ok:
        logger.warning("keep_freed_memory: glibc refused a mallopt setting (%s)", wanted)
        return False
    _applied = wanted
    logger.info("keep_freed_memory: glibc keeps freed memory (%s)", wanted)
    return True


def release_free_memory() -> bool:
    """Return the heap's free pages to the kernel (glibc ``malloc_trim(0)``); False elsewhere.

    Building a policy and copying a checkpoint's tensors into it leaves freed blocks between live
    ones; measured for the paper preset: ~0.17 GB of resident memory that no tensor uses. Called
    once after loading, before :func:`keep_freed_memory` makes the heap keep what it frees.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    libc.malloc_trim(ctypes.c_size_t(0))
    return True


def applied() -> dict | None:
    """The settings in force in this process (None if :func:`keep_freed_memory` was never applied)."""
    return None if _applied is None else dict(_applied)
