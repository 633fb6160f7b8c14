"""Canary analysis: is the new revision as good as the stable one (pure)?

A measurement is what each track's pods did over one window of a canary step: requests
finished, requests failed, and the TTFT histogram's bucket increases. Judging it is kept
apart from querying Prometheus so the rules are tested without a server:

- too few canary requests → ``Inconclusive``: a verdict on five requests is noise, and
  missing data never promotes (nor rolls back);
- canary error rate above ``maxErrorRate`` → ``Fail``;
- canary TTFT percentile above ``maxTTFTRatio`` x the stable one's (and more than
  :data:`TTFT_NOISE_SECONDS` above it: histogram buckets make tiny latencies coarse)
  → ``Fail``;
- canary TTFT percentile above the SLO while the stable one meets it → ``Fail``. When
  both miss the SLO the load is to blame, not the revision; the ratio still applies.

Engines that export none of these signals (llama.cpp) pass on readiness and pauses
alone, and the verdict says so.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from distillery.autoscale.inputs import PodCounts, PodInfo, histogram_quantile

Result = Literal["Pass", "Fail", "Inconclusive"]
# Below this, a TTFT difference is within one histogram bucket of vLLM's defaults.
TTFT_NOISE_SECONDS = 0.05


@dataclass(frozen=True)
class TrackSample:
    """What one track's pods did over the window."""

    pods: int = 0
    requests: float | None = None  # None: the engine exports no request counter
    failures: float | None = None  # None: the engine exports no failure counter
    ttft_buckets: Mapping[float, float] = field(default_factory=dict)  # {le: increase}

    def error_rate(self) -> float | None:
        if self.failures is None or not self.requests:
            return None
        return min(1.0, self.failures / self.requests)

    def ttft(self, percentile: float) -> float | None:
        return histogram_quantile(percentile / 100.0, self.ttft_buckets)


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
        requests = [c.requests for c in got if c.requests is not None]
        failures = [c.failures for c in got if c.failures is not None]
        merged: dict[float, float] = defaultdict(float)
        for c in got:
            for le, v in c.ttft_buckets.items():
                merged[le] += v
        return TrackSample(
            pods=len(members),
            requests=sum(requests) if requests else (0.0 if counts_requests else None),
            failures=sum(failures) if failures else None,
            ttft_buckets=dict(merged),
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


@dataclass(frozen=True)
class Verdict:
    result: Result
    message: str
    numbers: dict[str, float]


def _fmt(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1000:.0f}ms"


def judge(m: Measurement, c: Criteria) -> Verdict:
    """The verdict on one measurement, with the numbers behind it."""
    canary, stable = m.canary, m.stable or TrackSample()
    p = c.percentile
    numbers: dict[str, float] = {"windowSeconds": round(m.end - m.start, 1)}
    for key, value in (
        ("canaryRequests", canary.requests),
        ("stableRequests", stable.requests),
        ("canaryTTFTSeconds", canary.ttft(p)),
        ("stableTTFTSeconds", stable.ttft(p)),
        ("canaryErrorRate", canary.error_rate()),
        ("stableErrorRate", stable.error_rate()),
    ):
        if value is not None:
            numbers[key] = round(value, 4)
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
            f"{c.max_error_rate:.2%} (stable {_pct(stable.error_rate())})",
            numbers,
        )
    canary_ttft, stable_ttft = canary.ttft(p), stable.ttft(p)
    label = f"p{p:g} TTFT"
    if canary_ttft is not None and stable_ttft is not None:
        limit = max(c.max_ttft_ratio * stable_ttft, stable_ttft + TTFT_NOISE_SECONDS)
        if canary_ttft > limit:
            ratio = canary_ttft / max(stable_ttft, 1e-9)
            return Verdict(
                "Fail",
                f"canary {label} {_fmt(canary_ttft)} is {ratio:.1f}x the stable "
                f"{_fmt(stable_ttft)} (maxTTFTRatio {c.max_ttft_ratio:g})",
                numbers,
            )
    if (
        canary_ttft is not None
        and c.slo_ttft_seconds is not None
        and canary_ttft > c.slo_ttft_seconds
        and (stable_ttft is None or stable_ttft <= c.slo_ttft_seconds)
    ):
        return Verdict(
            "Fail",
            f"canary {label} {_fmt(canary_ttft)} misses the SLO of "
            f"{_fmt(c.slo_ttft_seconds)} that the stable revision meets ({_fmt(stable_ttft)})",
            numbers,
        )
    return Verdict(
        "Pass",
        f"canary {label} {_fmt(canary_ttft)} vs stable {_fmt(stable_ttft)}, errors "
        f"{_pct(rate)} vs {_pct(stable.error_rate())} over {window}",
        numbers,
    )


def _pct(rate: float | None) -> str:
    return "n/a" if rate is None else f"{rate:.2%}"
