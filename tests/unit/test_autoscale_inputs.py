"""From pods and scraped metrics to the policy's sample (pure): which pods count, which
rates are summed, and when the view cannot be trusted."""

from __future__ import annotations

import pytest

from distillery.autoscale.histogram import histogram_quantile
from distillery.autoscale.inputs import PodInfo, PodMetrics, observe

NS = "team-a"


def fresh(_: PodMetrics) -> bool:
    return True


def pods(*names: str, ready: bool = True) -> list[PodInfo]:
    return [PodInfo(name=n, ready=ready) for n in names]


def test_rates_are_summed_and_computed_prompt_tokens_preferred() -> None:
    metrics = {
        (NS, "a"): PodMetrics(
            running=10,
            waiting=2,
            kv_usage=0.4,
            prompt_tokens_rate=5000,
            computed_prompt_tokens_rate=1000,  # 80% prefix-cache hits
            completions_rate=2,
            generation_tokens_rate=800,
            ttft_buckets={0.5: 10, 1.0: 18, 2.5: 20, float("inf"): 20},
        ),
        (NS, "b"): PodMetrics(
            running=6,
            waiting=0,
            kv_usage=0.2,
            prompt_tokens_rate=3000,  # an engine without the split: all of it
            completions_rate=1,
            generation_tokens_rate=400,
            ttft_buckets={0.5: 10, 1.0: 10, 2.5: 10, float("inf"): 10},
        ),
    }
    obs = observe(NS, pods("a", "b"), metrics, 0.0, fresh, 95)
    s = obs.sample
    assert s is not None and not obs.stale and not obs.partial
    assert (s.running, s.waiting) == (16, 2)
    assert s.kv_usage == pytest.approx(0.3)
    assert s.prompt_tokens_per_second == 1000 + 3000
    assert s.completions_per_second == 3 and s.generation_tokens_per_second == 1200
    # Buckets merge across pods before the percentile: 28 of 30 by 1.0 s.
    assert s.ttft_buckets == {0.5: 20, 1.0: 28, 2.5: 30, float("inf"): 30}
    assert s.ttft_percentile == histogram_quantile(0.95, s.ttft_buckets)


def test_missing_rates_stay_missing() -> None:
    obs = observe(NS, pods("a"), {(NS, "a"): PodMetrics(running=3)}, 0.0, fresh, 95)
    s = obs.sample
    assert s is not None
    assert s.completions_per_second is None and s.generation_tokens_per_second is None
    assert s.prompt_tokens_per_second is None and s.ttft_buckets is None


def test_no_ready_pod_or_no_fresh_metrics_is_stale() -> None:
    assert observe(NS, pods("a", ready=False), {}, 0.0, fresh, 95).stale
    obs = observe(NS, pods("a"), {(NS, "a"): PodMetrics()}, 0.0, lambda m: False, 95)
    assert obs.stale and obs.sample is None and "no fresh metrics" in obs.message


def test_a_pod_without_metrics_makes_the_view_partial() -> None:
    obs = observe(NS, pods("a", "b"), {(NS, "a"): PodMetrics(running=1)}, 0.0, fresh, 95)
    assert obs.partial and obs.message == "1/2 ready pods report metrics"
