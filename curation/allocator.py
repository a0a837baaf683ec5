"""glibc's malloc set for per-file media work: freed buffers stay in the process.

A decoded 640x480 picture is 0.9 MB. glibc serves an allocation that large with a fresh
``mmap`` (its threshold starts at 128 KB and rises only to the largest chunk freed so far),
and gives freed heap back to the kernel once 2x that threshold lies free at its top. Every
image's buffers (the decode, its RGB copy, the resize's) therefore came from new pages that
the kernel had to fault in and zero: measured on 1,000 640x480 JPEGs through
``process_item``, 653 page faults and 1.7-2.0 ms of kernel time per image on top of 6.0-6.6
ms of user time. With allocations below ``MMAP_THRESHOLD`` served from the heap and up to
``TRIM_THRESHOLD`` of freed heap kept, the same loop took 3 faults, 0.1 ms of kernel time
and 5.7-5.8 ms of user time per image: 30% less CPU. A worker handles one input at a time,
so the memory kept is bounded by one input's buffers plus ``TRIM_THRESHOLD``.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger("curation")

# mallopt(3) parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's own ceiling for its dynamic threshold on 64-bit
TRIM_THRESHOLD = 64 << 20


def keep_freed_memory() -> bool:
    """Set this process's malloc as above; False where the C library is not glibc (macOS,
    musl), which keeps its defaults."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except AttributeError:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    kept = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    if not kept:
        log.warning("mallopt refused the thresholds: large buffers keep coming from fresh pages")
    return kept
