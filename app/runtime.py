"""Process-level tuning that keeps memory flat while large files stream through."""

from __future__ import annotations

import ctypes
import ctypes.util

_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 128 * 1024


def keep_large_buffers_out_of_the_heap() -> None:
    """Pin glibc's mmap threshold at its 128 KiB default.

    glibc raises the threshold each time a large mmapped block is freed, after which chunk- and
    part-sized buffers are carved from the heap instead and fragment it: the resident size then
    grows with the amount of data streamed. A fixed threshold returns each buffer to the system
    when it is freed. Elsewhere than glibc this does nothing.
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
    except (OSError, AttributeError):
        return
