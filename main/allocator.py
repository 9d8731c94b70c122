"""glibc allocator settings for CPU runs: keep freed large blocks for reuse instead of unmapping them.

Every training step allocates and frees tensors of several MB (effective weights, their gradients, the
optimiser's temporaries).  By default glibc serves such blocks with a fresh ``mmap`` and hands them back with
``munmap``, so each step page-faults every page of them again (the kernel zero-fills each one).  Raising the
mmap threshold to its 64-bit maximum (32 MiB) and the trim threshold keeps the blocks in the heap, where the next
step reuses them.  Measured with ``bench/step_overhead.py`` on ResNet34 at width 1 (2 CPU cores): the dense step
8% faster, the AdapMTL step 10% faster.  The cost: memory freed during a run is not returned to the OS until
the process exits (the peak is unchanged).

Linux/glibc only; nothing happens elsewhere, when ``ADAPMTL_MALLOC=default`` is set, or when the user set
``MALLOC_*`` variables of their own (theirs win).
"""

from __future__ import annotations

import ctypes
import os
import sys

_M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
_MMAP_MAX = 32 << 20  # DEFAULT_MMAP_THRESHOLD_MAX on 64-bit glibc; mallopt refuses more
_TRIM = 2**31 - 1  # mallopt takes an int
_applied = False


def keep_freed_memory() -> bool:
    """Apply the settings once per process; True when they are in effect."""
    global _applied
    if _applied:
        return True
    if not sys.platform.startswith("linux") or os.environ.get("ADAPMTL_MALLOC") == "default":
        return False
    if any(k.startswith("MALLOC_") for k in os.environ):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = mallopt(_M_MMAP_THRESHOLD, _MMAP_MAX) == 1 and mallopt(_M_TRIM_THRESHOLD, _TRIM) == 1
    return _applied
