"""glibc's malloc, set for two jobs: per-file media work, and videos that repeat byte for byte.

In the core because curation's workers, the served-video writer (``pipeline.generation``)
and the synthetic-media writer (``support``) need it. Both settings go through
``mallopt(3)`` at run time and do nothing where the C library is not glibc (macOS, musl).

**Freed buffers stay in the process** (``keep_freed_memory``, curation's workers and their
sandboxed children). A decoded 640x480 picture is 0.9 MB. glibc serves an allocation that
large with a fresh ``mmap`` (its threshold starts at 128 KB and rises only to the largest
chunk freed so far), and gives freed heap back to the kernel once 2x that threshold lies free
at its top. Every image's buffers (the decode, its RGB copy, the resize's) therefore came
from new pages that the kernel had to fault in and zero: measured on 1,000 640x480 JPEGs
through ``process_item``, 653 page faults and 1.7-2.0 ms of kernel time per image on top of
6.0-6.6 ms of user time. With allocations below ``MMAP_THRESHOLD`` served from the heap and
up to ``TRIM_THRESHOLD`` of freed heap kept, the same loop took 3 faults, 0.1 ms of kernel
time and 5.7-5.8 ms of user time per image: 30% less CPU. A worker handles one input at a
time, so the memory kept is bounded by one input's buffers plus ``TRIM_THRESHOLD``.

**Allocations filled with one value** (``filled_allocations``, while synthetic and served
videos are encoded). x264, as PyAV 18.1's FFmpeg 8.1 runs it, reads memory it has not written: the same
60 YUV frames, encoded ten times in one process, gave up to 8 different files (one encoder
thread or several, any preset tried), and with glibc's ``MALLOC_PERTURB_`` set the output
was the same every time but changed with the fill value. A fixed seed must give the same
file (the synthetic-media writer), and the same seed the same served video, so both fill
every allocation with ``FILL`` while they encode.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

log = logging.getLogger(__name__)

# mallopt(3) parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_PERTURB = -6
MMAP_THRESHOLD = 32 << 20  # glibc's own ceiling for its dynamic threshold on 64-bit
TRIM_THRESHOLD = 64 << 20
FILL = 0x55


def _mallopt() -> Optional[Callable[[int, int], int]]:
    """glibc's ``mallopt``, or None without it."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except AttributeError:
        return None
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return mallopt


def keep_freed_memory() -> bool:
    """Keep freed buffers in this process, as above; False where that is not possible."""
    mallopt = _mallopt()
    if mallopt is None:
        return False
    kept = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    if not kept:
        log.warning("mallopt refused the thresholds: large buffers keep coming from fresh pages")
    return kept


_filling = 0  # blocks inside ``filled_allocations`` now, in any thread
_filling_lock = threading.Lock()


@contextmanager
def filled_allocations() -> Iterator[None]:
    """Fill every allocation (and every freed block) with ``FILL`` inside the block, so that
    code reading memory it has not written reads the same values on every run. It costs a
    memset per allocation and per free, in every thread, while any such block lasts; blocks
    may nest and overlap across threads (the filling stops when the last one ends)."""
    global _filling
    mallopt = _mallopt()
    with _filling_lock:
        _filling += 1
        if _filling == 1 and mallopt is not None:
            mallopt(M_PERTURB, FILL)
    try:
        yield
    finally:
        with _filling_lock:
            _filling -= 1
            if _filling == 0 and mallopt is not None:
                mallopt(M_PERTURB, 0)
