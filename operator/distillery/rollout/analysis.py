"""Canary analysis: is the new revision as good as the stable one (pure)?

A measurement is what each track's pods did over one window of a canary step: requests
finished, responses failed, and the TTFT histogram's bucket and ``_sum`` increases.
Judging it is kept apart from querying Prometheus so the rules are tested without a
server. TTFT is compared as a histogram, never as an interpolated percentile: vLLM has
no boundary between 1.0 and 2.5 s, where interpolation reads 1.05 s as 2.4 s
(:mod:`distillery.autoscale.histogram`).

- too few canary requests → ``Inconclusive``: a verdict on five requests is noise, and
  missing data never promotes (nor rolls back);
- canary error rate above ``maxErrorRate`` → ``Fail``; the verdict names the counter
  (vLLM: HTTP 5xx responses; engines without one cannot fail this way, and say so);
- the canary's percentile surely above ``maxTTFTRatio`` x the stable one's (the lower
  boundary of the canary's bucket, widened by a one-sided binomial margin, over the
  upper boundary of the stable's) → ``Fail``. A difference inside one bucket is never
  a regression by this rule;
- the canary's share of requests above the SLO proven too high (buckets plus ``_sum``,
  beyond the same margin) while the stable's is not → ``Fail``: this is what catches
  1.9 s → 2.1 s across a 2 s SLO inside vLLM's 1.0-2.5 s bucket. When both miss the SLO
  the load is to blame, not the revision.

Engines that export none of these signals (llama.cpp) pass on readiness and pauses
alone, and the verdict says so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from distillery.autoscale.histogram import (
    Z_ONE_SIDED,
    ShareAbove,
    histogram_quantile,
    quantile_bucket,
    share_above_bounds,
)
from distillery.autoscale.inputs import PodCounts, PodInfo, merge_buckets, merge_sums

Result = Literal["Pass", "Fail", "Inconclusive"]


@dataclass(frozen=True)
class TrackSample:
    """What one track's pods did over the window."""

    pods: int = 0
    requests: float | None = None  # None: the engine exports no request counter
    failures: float | None = None  # None: the engine exports no failure counter
    # What the failures are counted among; None: among ``requests``.
    responses: float | None = None
    ttft_buckets: Mapping[float, float] = field(default_factory=dict)  # {le: increase}
    ttft_sum: float | None = None

    def error_rate(self) -> float | None:
        base = self.responses if self.responses is not None else self.requests
        if self.failures is None or not base:
            return None
        return min(1.0, self.failures / base)

    def ttft(self, percentile: float) -> float | None:
        """The interpolated percentile, for display only."""
        return histogram_quantile(percentile / 100.0, self.ttft_buckets)

    def above_slo(self, slo: float) -> ShareAbove | None:
        """The share of requests above ``slo``, as far as the histogram tells."""
        return share_above_bounds(self.ttft_buckets, slo, self.ttft_sum)


@dataclass(frozen=True)
class Measurement:
    """Both tracks over ``[start, end]`` (epoch seconds) of one canary step."""

    revision: str
    step: int
    start: float
    end: float
    canary: TrackSample
    stable: TrackSample | None


def measure(
    revision: str,
    step: int,
    start: float,
    end: float,
    pods: Sequence[PodInfo],
    counts: Mapping[str, PodCounts],
    *,
    counts_requests: bool = True,
) -> Measurement:
    """Sum per-pod counter increases into the two tracks: canary pods of ``revision``,
    and the stable track's pods. ``counts_requests``: the engine exports a request
    counter, so a track without samples served nothing we can see (not "no signal")."""

    def track(members: list[PodInfo]) -> TrackSample:
        got = [counts[p.name] for p in members if p.name in counts]

        def total(values: list[float | None]) -> float | None:
            present = [v for v in values if v is not None]
            return sum(present) if present else None

        requests = total([c.requests for c in got])
        return TrackSample(
            pods=len(members),
            requests=requests if requests is not None else (0.0 if counts_requests else None),
            failures=total([c.failures for c in got]),
            responses=total([c.responses for c in got]),
            ttft_buckets=merge_buckets(got),
            ttft_sum=merge_sums(got),
        )

    canary = [p for p in pods if p.track == "canary" and p.revision == revision]
    stable = [p for p in pods if (p.track or "stable") == "stable"]
    return Measurement(
        revision=revision,
        step=step,
        start=start,
        end=end,
        canary=track(canary),
        stable=track(stable) if stable else None,
    )


@dataclass(frozen=True)
class Criteria:
    max_ttft_ratio: float
    max_error_rate: float
    min_requests: int
    percentile: float
    slo_ttft_seconds: float | None
    # What the engine's failure counter counts, named in the verdict.
    failure_signal: str = "failed requests"


@dataclass(frozen=True)
class Verdict:
    result: Result
    message: str
    # The figures behind it, by CanaryAnalysisStatus's field names.
    numbers: dict[str, float]


def _fmt(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    return "above the last bucket" if seconds == float("inf") else f"{seconds * 1000:.0f}ms"


def _numbers(m: Measurement, c: Criteria) -> dict[str, float]:
    canary, stable = m.canary, m.stable or TrackSample()
    p = c.percentile
    numbers: dict[str, float] = {"window_seconds": round(m.end - m.start, 1)}
    slo = c.slo_ttft_seconds
    for key, value in (
        ("canary_requests", canary.requests),
        ("stable_requests", stable.requests),
        ("canary_ttft_seconds", canary.ttft(p)),
        ("stable_ttft_seconds", stable.ttft(p)),
        ("canary_error_rate", canary.error_rate()),
        ("stable_error_rate", stable.error_rate()),
        ("canary_above_slo", _surely(canary.above_slo(slo)) if slo else None),
        ("stable_above_slo", _surely(stable.above_slo(slo)) if slo else None),
    ):
        if value is not None:
            numbers[key] = round(value, 4)
    return numbers


def judge(m: Measurement, c: Criteria) -> Verdict:
    """The verdict on one measurement, with the numbers behind it."""
    canary, stable = m.canary, m.stable or TrackSample()
    p = c.percentile
    numbers = _numbers(m, c)
    window = f"{m.end - m.start:.0f}s"
    if canary.requests is None and canary.failures is None and not canary.ttft_buckets:
        return Verdict(
            "Pass",
            "the engine exports no request, error or TTFT metrics: "
            "steps advance on readiness and pauses alone",
            numbers,
        )
    if canary.requests is not None and canary.requests < c.min_requests:
        return Verdict(
            "Inconclusive",
            f"canary finished {canary.requests:.0f} requests in {window}, analysis needs "
            f"{c.min_requests} (analysis.minRequests)",
            numbers,
        )
    rate = canary.error_rate()
    if rate is not None and rate > c.max_error_rate:
        return Verdict(
            "Fail",
            f"canary error rate {rate:.2%} over {window} exceeds maxErrorRate "
            f"{c.max_error_rate:.2%} (stable {_pct(stable.error_rate())}; counted from "
            f"{c.failure_signal})",
            numbers,
        )
    canary_bucket = quantile_bucket(canary.ttft_buckets, p / 100.0, Z_ONE_SIDED)
    stable_bucket = quantile_bucket(stable.ttft_buckets, p / 100.0, Z_ONE_SIDED)
    label = f"p{p:g} TTFT"
    if (
        canary_bucket is not None
        and stable_bucket is not None
        and canary_bucket[0] > c.max_ttft_ratio * stable_bucket[1]
    ):
        return Verdict(
            "Fail",
            f"canary {label} is above {_fmt(canary_bucket[0])}, more than "
            f"{c.max_ttft_ratio:g}x the stable's {_fmt(stable_bucket[1])} at most "
            f"(maxTTFTRatio; bucket boundaries, over {window})",
            numbers,
        )
    slo = c.slo_ttft_seconds
    canary_above = canary.above_slo(slo) if slo is not None else None
    stable_above = stable.above_slo(slo) if slo is not None else None
    if (
        canary_above is not None
        and canary_above.proves_breach(p, z=Z_ONE_SIDED)
        and not (stable_above is not None and stable_above.proves_breach(p))
    ):
        return Verdict(
            "Fail",
            f"at least {canary_above.low:.1%} of canary requests took longer than the "
            f"{_fmt(slo)} TTFT SLO, which allows {1 - p / 100:.1%} (p{p:g}); the stable "
            f"revision is not proven to miss it ({_pct(_surely(stable_above))} surely "
            f"above) over {window}",
            numbers,
        )
    return Verdict(
        "Pass",
        f"canary {label} {_bucket(canary_bucket)} vs stable {_bucket(stable_bucket)}, "
        f"errors {_pct(rate)} vs {_pct(stable.error_rate())} over {window}",
        numbers,
    )


def _bucket(bounds: tuple[float, float] | None) -> str:
    if bounds is None:
        return "n/a"
    low, high = bounds
    if high == float("inf"):
        return f"above {_fmt(low)}"
    return f"{_fmt(low)}-{_fmt(high)}"


def _surely(share: ShareAbove | None) -> float | None:
    return None if share is None else share.low


def _pct(rate: float | None) -> str:
    return "n/a" if rate is None else f"{rate:.2%}"
