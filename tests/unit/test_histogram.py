"""What a TTFT histogram proves about an SLO: bounds computed by hand."""

from __future__ import annotations

import math

import pytest

from distillery.autoscale.histogram import (
    Z_ONE_SIDED,
    attainment_bounds,
    breach_proven,
    histogram_quantile,
    quantile_bucket,
    share_above_bounds,
    slo_resolution,
)
from distillery.engines.sglang import TTFT_BUCKETS as SGLANG_BUCKETS
from distillery.engines.vllm import TTFT_BUCKETS as VLLM_BUCKETS


def observe(values: list[float]) -> tuple[dict[float, float], float]:
    """vLLM's cumulative buckets and _sum for these TTFTs."""
    cum = {le: float(sum(1 for v in values if v <= le)) for le in VLLM_BUCKETS}
    cum[math.inf] = float(len(values))
    return cum, sum(values)


def test_attainment_bounds_by_hand() -> None:
    # 100 requests: 70 <= 1.0 s, 20 in (1.0, 2.5], 10 above. SLO 2 s lies inside (1, 2.5].
    cum = {0.5: 40.0, 1.0: 70.0, 2.5: 90.0, 5.0: 100.0, math.inf: 100.0}
    assert attainment_bounds(cum, 2.0) == (0.70, 0.90)
    assert attainment_bounds(cum, 2.5) == (0.90, 0.90)  # on a boundary: exact
    assert attainment_bounds({}, 2.0) is None


def test_share_above_from_buckets_alone() -> None:
    cum = {0.5: 40.0, 1.0: 70.0, 2.5: 90.0, 5.0: 100.0, math.inf: 100.0}
    share = share_above_bounds(cum, 2.0)
    assert share is not None
    # 10 surely above (over 2.5 s); the 20 in (1.0, 2.5] may all be above.
    assert (share.low, share.high, share.total) == (0.10, 0.30, 100.0)
    exact = share_above_bounds(cum, 2.5)
    assert exact is not None and exact.low == exact.high == 0.10


def test_the_sum_tells_21_from_19_inside_one_bucket() -> None:
    # 100 requests at 2.1 s: all in (1.0, 2.5]. They add up to 210 s; x of them above 2 s
    # add at most 2.5 x + 2.0 (100 - x), so x >= (210 - 200) / 0.5 = 20.
    slow, slow_sum = observe([2.1] * 100)
    share = share_above_bounds(slow, 2.0, slow_sum)
    assert share is not None and share.low == pytest.approx(0.20) and share.high == 1.0
    # At 1.9 s the sum proves nothing above the SLO.
    fast, fast_sum = observe([1.9] * 100)
    share = share_above_bounds(fast, 2.0, fast_sum)
    assert share is not None and share.low == 0.0
    # Without the sum, both are the same histogram.
    assert slow == fast


def test_the_sum_counts_the_other_buckets_at_their_upper_boundary() -> None:
    # 40 at <= 0.5, 30 in (0.5, 1.0], 20 in (1.0, 2.5], 10 in (2.5, 5.0]; total 150 s.
    # The others add at most 40*0.5 + 30*1.0 + 10*5.0 = 100 s, so the 20 add at least
    # 50 s: a mean of 2.5 s, all above 2 s: x >= (50 - 40) / 0.5 = 20.
    cum = {0.5: 40.0, 1.0: 70.0, 2.5: 90.0, 5.0: 100.0, math.inf: 100.0}
    share = share_above_bounds(cum, 2.0, 150.0)
    assert share is not None and share.low == pytest.approx(0.30)
    # One request beyond the last finite boundary could hold any sum: no refinement.
    unbounded = {**cum, 5.0: 99.0}
    share = share_above_bounds(unbounded, 2.0, 150.0)
    assert share is not None and share.low == pytest.approx(0.10)


def test_breach_needs_evidence_beyond_the_margin() -> None:
    # 6% above 2.5 s of 100 requests: over the 5% a p95 allows ...
    cum, total = observe([3.0] * 6 + [0.5] * 94)
    assert breach_proven(cum, 2.0, 95, total_sum=total)
    # ... but not beyond a one-sided 99% binomial margin (5% + 2.33 x 2.2% = 10.1%).
    assert not breach_proven(cum, 2.0, 95, total_sum=total, z=Z_ONE_SIDED)
    cum, total = observe([3.0] * 12 + [0.5] * 88)
    assert breach_proven(cum, 2.0, 95, total_sum=total, z=Z_ONE_SIDED)
    # A TTFT of 1.5 s under a 2 s SLO is never a breach, whatever the margin.
    cum, total = observe([1.5] * 1000)
    assert not breach_proven(cum, 2.0, 95, total_sum=total)
    # Too few requests prove nothing.
    cum, total = observe([5.0] * 3 + [0.2] * 10)
    assert not breach_proven(cum, 2.0, 95, total_sum=total)


def test_interpolation_misreads_what_the_bounds_get_right() -> None:
    # The numbers: 1.05 s interpolates to p95 = 2.43 s, 0.95 s to 0.99 s.
    slow, _ = observe([1.05] * 100)
    fast, _ = observe([0.95] * 100)
    assert histogram_quantile(0.95, slow) == pytest.approx(2.425)
    assert histogram_quantile(0.95, fast) == pytest.approx(0.9875)
    # As buckets: (1.0, 2.5] against (0.75, 1.0]: the lower edge of one is the upper
    # edge of the other, so no ratio above 1 can be proven.
    assert quantile_bucket(slow, 0.95, Z_ONE_SIDED) == (1.0, 2.5)
    assert quantile_bucket(fast, 0.95, Z_ONE_SIDED) == (0.75, 1.0)


def test_quantile_bucket_widens_with_the_margin() -> None:
    # 90 at 0.3 s and 10 at 3 s: the p95 lies in (2.5, 5.0]; with a margin of 2.33
    # standard errors (5.1% of 100) the 90% point at 0.3 s is within reach.
    cum, _ = observe([0.3] * 90 + [3.0] * 10)
    assert quantile_bucket(cum, 0.95) == (2.5, 5.0)
    assert quantile_bucket(cum, 0.95, Z_ONE_SIDED) == (0.25, 5.0)
    over, _ = observe([3000.0] * 10)
    assert quantile_bucket(over, 0.95) == (2560.0, math.inf)


def test_slo_resolution_names_the_boundaries_around_the_slo() -> None:
    between = slo_resolution(VLLM_BUCKETS, 2.0)
    assert (between.exact, between.below, between.above) == (False, 1.0, 2.5)
    on = slo_resolution(VLLM_BUCKETS, 2.5)
    assert (on.exact, on.below, on.above) == (True, 2.5, 2.5)
    assert slo_resolution(SGLANG_BUCKETS, 2.0).exact
    assert slo_resolution(VLLM_BUCKETS, 5000.0).above is None


def test_slo_measurable_says_how_to_measure_exactly() -> None:
    from distillery.reconcile.slo import slo_measurement

    between = slo_measurement("vllm", 2.0)
    assert (between.exact, between.reason) == (False, "BetweenBuckets")
    assert "no boundary between 1 s and 2.5 s" in between.message
    assert "set scaling.slo.ttftSeconds to 1 s or 2.5 s" in between.message
    assert slo_measurement("vllm", 2.5).reason == "OnBoundary"
    assert slo_measurement("sglang", 2.0).reason == "OnBoundary"
    assert slo_measurement("sglang", 1.5).reason == "BoundaryAdded"
    # A user's own SGLang buckets are read as given.
    own = slo_measurement("sglang", 1.5, ["--bucket-time-to-first-token", "1", "3"])
    assert (own.exact, own.reason) == (False, "BetweenBuckets")
    assert slo_measurement("tgi", 2.0).reason == "NoHistogram"
    assert slo_measurement("llamacpp", 2.0).reason == "NoHistogram"
