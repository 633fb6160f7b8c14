"""Retries of failed reconciles, with capped exponential backoff.

A reconcile runs on a watch event, and nothing else would run it again after a failure: a
reconcile that failed on a transient error (the API server restarting, a quota, a webhook
timing out) would wait for the DMD's next event or the resync, five minutes by default.
The operator keeps its own schedule instead: after the n-th
consecutive failure of a DMD's reconcile it tries again after ``min(cap, base * 2**(n-1))``
seconds, jittered so that many DMDs failing together do not retry together, until one
succeeds. A success, from the retry or from any event, clears the schedule.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Hashable

log = logging.getLogger(__name__)


def backoff_delay(failures: int, *, base: float, cap: float) -> float:
    """Seconds before the retry that follows ``failures`` consecutive failures (>= 1)."""
    return float(min(cap, base * 2 ** max(0, failures - 1)))


class RetrySchedule:
    """One pending retry per key, with its count of consecutive failures."""

    def __init__(
        self,
        *,
        base: float = 1.0,
        cap: float = 60.0,
        jitter: float = 0.2,
        uniform: Callable[[float, float], float] = random.uniform,
    ):
        self.base, self.cap, self.jitter = base, cap, jitter
        self._uniform = uniform
        self._failures: dict[Hashable, int] = {}
        self._tasks: dict[Hashable, asyncio.Task[None]] = {}

    def failures(self, key: Hashable) -> int:
        return self._failures.get(key, 0)

    def pending(self) -> set[Hashable]:
        return set(self._tasks)

    def failed(self, key: Hashable, retry: Callable[[], Awaitable[None]]) -> float | None:
        """Record a failure; schedule ``retry`` unless one is already pending.

        Returns the delay of the retry scheduled, or None when one was already pending
        (the next failure of that retry schedules the one after it)."""
        self._failures[key] = self._failures.get(key, 0) + 1
        if key in self._tasks:
            return None
        delay = backoff_delay(self._failures[key], base=self.base, cap=self.cap)
        delay *= self._uniform(1.0 - self.jitter, 1.0 + self.jitter)
        self._tasks[key] = asyncio.create_task(self._later(key, delay, retry))
        return delay

    def succeeded(self, key: Hashable) -> None:
        """The key reconciled: no more retries, and the next failure starts at ``base``."""
        self._failures.pop(key, None)
        self._cancel(key)

    def forget(self, key: Hashable) -> None:
        """The DMD is gone."""
        self.succeeded(key)

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    def _cancel(self, key: Hashable) -> None:
        task = self._tasks.pop(key, None)
        # A retry that succeeds clears its own schedule: never cancel the running task.
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def _later(
        self, key: Hashable, delay: float, retry: Callable[[], Awaitable[None]]
    ) -> None:
        await asyncio.sleep(delay)
        # From here on this task is the retry itself, not a pending one: a failure inside
        # it schedules the next.
        if self._tasks.get(key) is asyncio.current_task():
            del self._tasks[key]
        try:
            await retry()
        except Exception as exc:  # noqa: BLE001 - the retry reports its own failures
            log.warning("retry of %s failed: %s", key, exc)
