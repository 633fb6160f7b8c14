"""What a Prometheus histogram proves about a latency SLO (pure).

Engines export TTFT as cumulative buckets; vLLM's have no boundary between 1.0 and
2.5 s, so a 2 s SLO falls inside a bucket. Interpolating there (what
``histogram_quantile`` does) turns every TTFT between 1.1 and 1.9 s into a p95 of
about 2.4 s: an SLO that looks broken when it is met, and a 1.9 → 2.1 s regression
across the SLO that looks like nothing. So decisions here are bounds, never guesses:

- :func:`attainment_bounds`: the share of requests surely within the SLO (at or under
  the boundary below it) and possibly within it (under the boundary above it).
- :func:`share_above_bounds`: the share surely and possibly *above* the SLO, tightened
  with the histogram's ``_sum``: requests in the straddling bucket whose TTFTs add up
  to more than ``count x SLO`` cannot all be within it. This is what tells 2.1 s from
  1.9 s with no boundary in between.
- :func:`breach_proven`: the SLO is broken beyond sampling noise (a one-sided binomial
  margin on the surely-above share).
- :func:`quantile_bucket`: the bucket a percentile lies in, widened by the same
  margin, for comparing two histograms without reading inside a bucket.
- :func:`slo_resolution`: whether an SLO sits on one of the engine's boundaries.

Buckets are ``{le: cumulative count}`` (or rates: only ratios matter); ``le`` may
include ``math.inf``; a missing ``+Inf`` bucket means the largest one is the total.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# One-sided 99% normal quantile: a breach or a regression is called on the evidence,
# not on the luck of one window.
Z_ONE_SIDED = 2.326


def cumulative(
    buckets: Mapping[float, float] | None,
) -> tuple[list[tuple[float, float]], float] | None:
    """A histogram's cumulative buckets {le: count}, sorted, and its total; None when
    it counted nothing."""
    if not buckets:
        return None
    items = sorted(buckets.items())
    total = items[-1][1]
    return (items, total) if total > 0 else None


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """Prometheus' histogram_quantile over cumulative bucket rates {le: rate}: for
    display only; decisions use the bounds below."""
    found = cumulative(buckets)
    if found is None:
        return None
    items, total = found
    rank = q * total
    prev_le, prev_count = 0.0, 0.0
    for le, count in items:
        if count >= rank:
            if math.isinf(le):
                return prev_le
            if count == prev_count:
                return le
            return prev_le + (le - prev_le) * (rank - prev_count) / (count - prev_count)
        prev_le, prev_count = le, count
    return items[-1][0]


def attainment_bounds(
    buckets: Mapping[float, float] | None, slo: float
) -> tuple[float, float] | None:
    """(surely met, possibly met): the share of requests at or under the bucket
    boundary at or below the SLO, and under the first boundary at or above it."""
    found = cumulative(buckets)
    if found is None:
        return None
    items, total = found
    below = max((c for le, c in items if le <= slo), default=0.0)
    above = min((c for le, c in items if le >= slo), default=total)
    return below / total, above / total


@dataclass(frozen=True)
class ShareAbove:
    """The share of requests above an SLO, as far as the histogram tells."""

    low: float  # surely above
    high: float  # possibly above
    total: float  # requests counted

    def proves_breach(self, percentile: float, min_requests: float = 5.0, z: float = 0.0) -> bool:
        """More than the allowed share (``1 - percentile/100``), and at least
        ``min_requests`` requests, surely above the SLO, beyond a one-sided binomial
        margin of ``z`` standard errors."""
        allowed = 1.0 - percentile / 100.0
        margin = z * math.sqrt(max(allowed * (1 - allowed), 1e-9) / self.total)
        return self.low * self.total >= min_requests and self.low > allowed + margin


def share_above_bounds(
    buckets: Mapping[float, float] | None, slo: float, total_sum: float | None = None
) -> ShareAbove | None:
    """Bounds on the share of requests whose latency exceeds ``slo``.

    Outside the bucket that straddles the SLO the count is exact. Inside it (``lo <
    slo < hi``, ``k`` requests) the histogram's ``_sum`` bounds how many exceed the SLO:
    the bucket's requests add up to at least ``S - (most the other buckets can add)``,
    and ``x`` of them above the SLO add at most ``x·hi + (k-x)·slo``, so
    ``x >= (S_min - k·slo) / (hi - slo)``. The other buckets add at most their upper
    boundary each; one request in the ``+Inf`` bucket makes that unbounded, and then
    the sum tells nothing.
    """
    found = cumulative(buckets)
    if found is None:
        return None
    items, total = found
    les = [le for le, _ in items]
    counts = [c for _, c in items]
    i = bisect.bisect_left(les, slo)  # first boundary >= slo
    if i >= len(les):
        return ShareAbove(low=0.0, high=0.0, total=total)
    surely_within = counts[i - 1] if i > 0 else 0.0
    if math.isinf(les[i]):  # above the last finite boundary nothing is known
        return ShareAbove(low=0.0, high=(total - surely_within) / total, total=total)
    if les[i] == slo:  # on a boundary the count is exact
        exact = (total - counts[i]) / total
        return ShareAbove(low=exact, high=exact, total=total)
    lo = les[i - 1] if i > 0 else 0.0
    hi = les[i]
    surely_above = total - counts[i]
    k = counts[i] - surely_within
    low = surely_above
    if total_sum is not None and k > 0 and hi > slo:
        others_max, prev = 0.0, 0.0
        for j, (le, c) in enumerate(items):
            n, prev = c - prev, c
            if j != i and n > 0:
                if math.isinf(le):
                    others_max = math.inf
                    break
                others_max += n * le
        if not math.isinf(others_max):
            in_bucket_min = max(total_sum - others_max, k * lo)
            low += min(k, max(0.0, (in_bucket_min - k * slo) / (hi - slo)))
    return ShareAbove(low=low / total, high=(surely_above + k) / total, total=total)


def breach_proven(
    buckets: Mapping[float, float] | None,
    slo: float,
    percentile: float,
    *,
    total_sum: float | None = None,
    min_requests: float = 5.0,
    z: float = 0.0,
) -> bool:
    """True when the histogram proves more than the allowed share of requests (``1 -
    percentile/100``), and at least ``min_requests`` of them, above the SLO, beyond a
    one-sided binomial margin of ``z`` standard errors (a rollback wants
    :data:`Z_ONE_SIDED`; the autoscaler's guard, which only adds replicas, none).
    Inside a bucket only the ``_sum`` can prove it."""
    share = share_above_bounds(buckets, slo, total_sum)
    return share is not None and share.proves_breach(percentile, min_requests, z)


def quantile_bucket(
    buckets: Mapping[float, float] | None, q: float, margin: float = 0.0
) -> tuple[float, float] | None:
    """(lower, upper): the boundaries around the ``q`` quantile, widened so that the
    quantile lies inside with the stated binomial ``margin`` (in standard errors)
    whatever the spread within buckets. ``upper`` is ``inf`` above the last finite
    boundary."""
    found = cumulative(buckets)
    if found is None:
        return None
    items, total = found
    spread = margin * math.sqrt(max(q * (1 - q), 1e-9) / total)
    q_low, q_high = max(0.0, q - spread), min(1.0, q + spread)
    lower = 0.0
    for le, c in items:
        if c < q_low * total:
            lower = le
    upper = math.inf
    for le, c in items:
        if c >= q_high * total:
            upper = le
            break
    return lower, upper


@dataclass(frozen=True)
class SloResolution:
    """Where an SLO sits among an engine's bucket boundaries."""

    exact: bool
    below: float | None  # the boundary at or under the SLO
    above: float | None  # the boundary at or over it


def slo_resolution(boundaries: Sequence[float], slo: float) -> SloResolution:
    """Whether ``slo`` is one of ``boundaries`` (attainment is then measured exactly),
    and the boundaries around it otherwise."""
    finite = sorted(b for b in boundaries if not math.isinf(b))
    i = bisect.bisect_left(finite, slo)
    above = finite[i] if i < len(finite) else None
    exact = above is not None and math.isclose(above, slo, rel_tol=1e-9)
    below = slo if exact else (finite[i - 1] if i > 0 else None)
    return SloResolution(exact=exact, below=below, above=above)
