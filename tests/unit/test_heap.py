"""Freed heap goes back to the OS (kube/heap.py): on glibc, RSS falls after a burst."""

from __future__ import annotations

import asyncio

from distillery.kube import heap


def test_freed_memory_leaves_the_resident_set() -> None:
    before = heap.rss_bytes()
    assert before is not None and before > 0
    # Many malloc-sized blocks (over pymalloc's 512 bytes), freed in the middle of the
    # heap by the time they go: what a burst of API responses leaves behind.
    burst = [bytearray(2048) for _ in range(60_000)]
    keep = bytearray(2048)  # allocated after: pins the top of the heap
    peak = heap.rss_bytes()
    assert peak is not None and peak > before + 60 * 2**20
    del burst
    asyncio.run(heap.release_freed_memory())
    after = heap.rss_bytes()
    assert after is not None and after < peak - 60 * 2**20, (before, peak, after)
    assert keep
