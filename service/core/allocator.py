"""Hand image-sized freed buffers back to the OS at once (glibc), so decoded images do not linger.

glibc serves allocations above a threshold with ``mmap`` and returns them to the OS
on ``free``, but it raises that threshold each time such a buffer is freed, after
which image-sized buffers come from the heap and stay in the process as fragmented
free space. Fixing the threshold at 32 MiB (the highest the dynamic one would
reach) keeps every decoded image of more than ~11 MP (RGB) returnable, while the
mask decoder's tensors (4-25 MB each, allocated afresh for every click) keep coming
from the heap: fixed at 128 KiB instead, each of them was a fresh ``mmap`` and its
page faults, and a cache-hit click through the gateway cost 1.77× the same decode
called in a process without the setting (``bench/gateway.py``, docs/benchmarks.md).
Peak growth per decode: docs/reliability.md ("Memory per decode").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

_M_MMAP_THRESHOLD = -3  # from <malloc.h>
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024


def return_large_buffers_to_os() -> bool:
    """Fix glibc's mmap threshold; False (and nothing changed) where there is no glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    if mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) != 1:
        log.debug("mallopt(M_MMAP_THRESHOLD) refused")
        return False
    return True
