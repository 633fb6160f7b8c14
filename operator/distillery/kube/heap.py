"""Give memory freed after a burst back to the operating system.

A burst of DMDs allocates for a while (watch events, desired states, API responses in
flight) and then frees most of it; glibc's allocator keeps the freed pages in its heaps
and RSS stays at the burst's peak. ``malloc_trim(0)`` returns the free pages at the top
and in the middle of every arena. It is cheap when there is little to return, so the
operator calls it on a timer; where the C library is not glibc there is nothing to call
and this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
from functools import cache

log = logging.getLogger(__name__)


@cache
def _malloc_trim() -> ctypes._NamedFuncPointer | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None  # not glibc (musl has no malloc_trim)


def rss_bytes() -> int | None:
    """This process's resident set, from /proc (None where there is no /proc)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096
    except (OSError, ValueError, IndexError):
        return None


async def release_freed_memory() -> None:
    """Collect cycles, then hand free heap pages back to the OS."""
    trim = _malloc_trim()
    if trim is None:
        return
    before = rss_bytes()
    gc.collect()
    trim(0)
    after = rss_bytes()
    if before is not None and after is not None and before - after > 2**20:
        log.info("returned %.0f MiB of freed memory", (before - after) / 2**20)
