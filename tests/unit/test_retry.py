"""The reconcile retry schedule: backoff, one pending retry per DMD, success clears it."""

from __future__ import annotations

import asyncio

import pytest

from distillery.kube.retry import RetrySchedule, backoff_delay


def test_backoff_doubles_to_the_cap() -> None:
    delays = [backoff_delay(n, base=1.0, cap=60.0) for n in range(1, 9)]
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60]


def no_jitter(low: float, high: float) -> float:
    return (low + high) / 2


def test_a_failure_is_retried_until_it_succeeds() -> None:
    async def scenario() -> list[int]:
        schedule = RetrySchedule(base=0.01, cap=0.04, uniform=no_jitter)
        calls: list[int] = []

        async def reconcile() -> None:
            calls.append(len(calls))
            if len(calls) < 4:  # fails three times, then the API is back
                schedule.failed("dmd", reconcile)
            else:
                schedule.succeeded("dmd")

        schedule.failed("dmd", reconcile)  # the event-driven attempt failed
        for _ in range(200):
            await asyncio.sleep(0.01)
            if not schedule.pending() and len(calls) >= 4:
                break
        assert schedule.failures("dmd") == 0
        return calls

    assert asyncio.run(scenario()) == [0, 1, 2, 3]


def test_delays_grow_and_one_retry_is_pending_at_a_time() -> None:
    async def scenario() -> None:
        schedule = RetrySchedule(base=1.0, cap=4.0, uniform=no_jitter)

        async def never() -> None:
            raise AssertionError("not reached: the test closes the schedule first")

        assert schedule.failed("a", never) == pytest.approx(1.0)
        # More failures while a retry is pending count, but do not schedule another.
        assert schedule.failed("a", never) is None
        assert schedule.failures("a") == 2 and schedule.pending() == {"a"}
        assert schedule.failed("b", never) == pytest.approx(1.0)
        # A success from an event clears the pending retry and the count.
        schedule.succeeded("a")
        assert schedule.pending() == {"b"} and schedule.failures("a") == 0
        schedule.forget("b")
        assert not schedule.pending()
        await schedule.close()

    asyncio.run(scenario())


def test_jitter_spreads_retries_within_its_band() -> None:
    async def scenario() -> list[float]:
        schedule = RetrySchedule(base=10.0, cap=60.0, jitter=0.2)

        async def never() -> None:
            raise AssertionError("not reached")

        delays = [schedule.failed(f"dmd-{i}", never) for i in range(50)]
        await schedule.close()
        return [d for d in delays if d is not None]

    delays = asyncio.run(scenario())
    assert len(delays) == 50 and all(8.0 <= d <= 12.0 for d in delays)
    assert len({round(d, 6) for d in delays}) > 1


def test_a_failing_retry_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        schedule = RetrySchedule(base=0.01, cap=0.01, uniform=no_jitter)

        async def broken() -> None:
            raise RuntimeError("boom")

        schedule.failed("dmd", broken)
        await asyncio.sleep(0.1)
        assert not schedule.pending()

    asyncio.run(scenario())
    assert "retry of dmd failed: boom" in caplog.text
