"""Keep freed memory in the process: glibc malloc tuned for rounds that free and reallocate the same tensors.

With glibc's defaults, freed memory goes back to the kernel once enough of it lies free at the top of a
heap (most likely here: Ray runs an actor's tasks on a thread with its own malloc arena), and the next
allocation faults it in again, page by page. Measured on a client worker of bench.worker_scaling's
client-heavy task: 330,000 minor page faults and a quarter of its CPU time over 10 rounds, against
about 2,000 faults with the settings below. A trim threshold of
1 GiB and a fixed mmap threshold (the largest glibc accepts) keep it: the process holds on to its
per-round peak, which it reaches every round anyway. Elsewhere (macOS, musl) this does nothing.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
TRIM_THRESHOLD = 1 << 30
MMAP_THRESHOLD = 32 << 20  # HEAP_MAX_SIZE / 2 on 64-bit: larger values are refused


def keep_freed_memory() -> bool:
    """Tune this process's glibc malloc as above; True if it took effect."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
