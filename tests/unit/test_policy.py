"""The autoscaling policy as a pure function: properties over wide inputs."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from distillery.autoscale.policy import (
    Capacity,
    Cluster,
    History,
    Limits,
    LoadSample,
    capacity_for,
    decide,
)

CAP = Capacity(
    target_running=48,
    prefill_tokens_per_second=20000,
    kv_target=0.8,
    startup_seconds=120,
    slo_ttft_seconds=2.0,
    price_per_replica_hour=6.88,
)
LIMITS = Limits(min_replicas=1, max_replicas=20)


def sample(
    t: float,
    running: float,
    waiting: float = 0.0,
    kv: float | None = None,
    ttft: float | None = None,
    prompt: float | None = None,
    ready: int = 1,
) -> LoadSample:
    return LoadSample(
        time=t,
        running=running,
        waiting=waiting,
        kv_usage=kv,
        ttft_percentile=ttft,
        prompt_tokens_per_second=prompt,
        replicas_reporting=ready,
    )


def test_level_rule() -> None:
    d = decide(sample(0, running=100), History(), CAP, LIMITS, Cluster(current=1, ready=1), 0)
    assert d.desired == 3 and d.reason == "load"  # ceil(100 / 48)
    assert d.inputs["targetRunningPerReplica"] == 48


def test_trend_looks_ahead_by_the_cold_start() -> None:
    history = History()
    for t in range(0, 60, 15):
        history = history.add(sample(t, running=10 + t), t, 400)
    d = decide(sample(60, running=70), history, CAP, LIMITS, Cluster(current=2, ready=2), 60)
    # +1 sequence/s for 120 s of cold start: 70 now, ~190 by the time a replica serves.
    assert d.reason == "trend" and d.desired == 4


def test_ttft_breach_adds_capacity() -> None:
    d = decide(
        sample(0, running=40, waiting=3, ttft=3.0),
        History(),
        CAP,
        LIMITS,
        Cluster(current=2, ready=2),
        0,
    )
    assert d.desired == 3 and d.reason == "ttft-slo"


def test_prefill_floor() -> None:
    d = decide(
        sample(0, running=5, prompt=90000), History(), CAP, LIMITS, Cluster(current=1, ready=1), 0
    )
    assert d.desired == 5 and d.reason == "prefill"


def test_scale_down_waits_for_the_window() -> None:
    history = History()
    cluster = Cluster(current=5, ready=5)
    desired = []
    for t in range(0, 400, 15):
        d = decide(sample(t, running=30), history, CAP, LIMITS, cluster, t)
        history = d.history
        desired.append((t, d.desired))
    assert all(v == 5 for t, v in desired if t < 300)
    assert desired[-1][1] == 1


def test_max_step_down() -> None:
    limits = Limits(
        min_replicas=1, max_replicas=20, scale_down_stabilization=0, scale_down_max_step=2
    )
    d = decide(sample(0, running=1), History(), CAP, limits, Cluster(current=8, ready=8), 0)
    assert d.desired == 6


def test_missing_data_holds_and_says_so() -> None:
    d = decide(None, History(), CAP, LIMITS, Cluster(current=7, ready=7), 0)
    assert d.desired == 7 and not d.metrics_available
    d = decide(
        sample(0, running=0), History(), CAP, LIMITS, Cluster(current=7, ready=7), 0, stale=True
    )
    assert d.desired == 7 and not d.metrics_available


def test_budget_limits_and_says_so() -> None:
    limits = Limits(min_replicas=1, max_replicas=20, max_cost_per_hour=30)
    d = decide(sample(0, running=1000), History(), CAP, limits, Cluster(current=1, ready=1), 0)
    assert d.desired == 4 and d.limited_by is not None and "budget" in d.limited_by


def test_unschedulable_holds_scale_up() -> None:
    cluster = Cluster(
        current=3,
        ready=2,
        unschedulable=1,
        unschedulable_reason="0/13 nodes: Insufficient nvidia.com/gpu",
    )
    d = decide(sample(0, running=1000), History(), CAP, LIMITS, cluster, 0)
    assert d.desired == 3 and "Insufficient nvidia.com/gpu" in (d.limited_by or "")


def test_capacity_from_placement_and_objective() -> None:
    base = dict(
        max_concurrency=64,
        kv_concurrency=97,
        prefill_tokens_per_second=10000,
        startup_seconds=100,
        slo_ttft_seconds=2,
    )
    assert capacity_for(**base, objective="cost").target_running == 64 * 0.9
    assert capacity_for(**base, objective="latency").target_running == 64 * 0.6
    assert capacity_for(**base, running_per_replica=20, queue_per_replica=2).target_running == 22
    small_kv = capacity_for(**{**base, "kv_concurrency": 10})
    assert small_kv.target_running == 10 * 0.75


loads = st.floats(0, 5000, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(
    loads,
    st.floats(0, 500),
    st.integers(0, 50),
    st.integers(1, 10),
    st.integers(1, 60),
    st.one_of(st.none(), st.floats(1, 500)),
)
def test_bounds_and_budget_always_hold(
    running: float, waiting: float, current: int, lo: int, span: int, budget: float | None
) -> None:
    limits = Limits(min_replicas=lo, max_replicas=lo + span, max_cost_per_hour=budget)
    d = decide(
        sample(0, running, waiting),
        History(),
        CAP,
        limits,
        Cluster(current=current, ready=current),
        0,
    )
    assert lo <= d.desired <= lo + span
    if budget is not None and d.desired > lo:
        assert d.desired * CAP.price_per_replica_hour <= budget + 1e-9


@settings(max_examples=300, deadline=None)
@given(loads, loads, st.integers(1, 20))
def test_monotone_in_load(a: float, b: float, current: int) -> None:
    lo, hi = sorted((a, b))
    cluster = Cluster(current=current, ready=current)
    d_lo = decide(sample(0, lo), History(), CAP, LIMITS, cluster, 0)
    d_hi = decide(sample(0, hi), History(), CAP, LIMITS, cluster, 0)
    assert d_hi.desired >= d_lo.desired


@settings(max_examples=100, deadline=None)
@given(st.floats(0, 900), st.integers(1, 20))
def test_never_scales_down_without_data(running: float, current: int) -> None:
    d = decide(None, History(), CAP, LIMITS, Cluster(current=current, ready=current), 0)
    assert d.desired >= min(current, LIMITS.max_replicas)


@settings(max_examples=50, deadline=None)
@given(st.floats(1, 900), st.integers(0, 2**16))
def test_no_flapping_on_constant_load(level: float, seed: int) -> None:
    """An hour of steady load with +-5% noise: after settling, the count never moves."""
    import random

    rng = random.Random(seed)
    history, current = History(), 1
    changes = []
    for t in range(0, 3600, 15):
        noisy = level * (1 + rng.uniform(-0.05, 0.05))
        d = decide(
            sample(t, noisy), history, CAP, LIMITS, Cluster(current=current, ready=current), t
        )
        history = d.history
        if d.desired != current:
            changes.append((t, current, d.desired))
        current = d.desired
    # Flapping is a reversal: once settled, the count may creep one step in the
    # direction of a noise extreme, but never turn back.
    late = [c for c in changes if c[0] > 600]
    directions = {c[2] > c[1] for c in late}
    assert len(late) <= 1 and len(directions) <= 1, late


def test_ttft_guard_does_not_compound() -> None:
    """The TTFT window keeps showing the breach after a scale-up: act once, then wait."""
    history, current, seen = History(), 2, []
    for t in range(0, 60, 5):
        d = decide(
            sample(t, running=40, waiting=3, ttft=3.5),
            history,
            CAP,
            LIMITS,
            Cluster(current=current, ready=current),
            t,
        )
        history, current = d.history, d.desired
        seen.append(current)
    assert seen[0] == 4 and max(seen) == 4, seen
