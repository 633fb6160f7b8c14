"""The autoscaling policy: load, capacity and history in, desired replicas out (pure).

The unit of load is *outstanding sequences*: requests running plus requests waiting. A
replica holds the SLO while it runs at most ``target_running`` sequences: above that its
batch slots or KV cache fill, new requests queue, and time to first token grows without
bound. ``target_running`` comes from the model, the GPU and the objective (see
:func:`capacity_for`), never from a trace, so the policy carries over to traffic it has
never seen.

One decision:

1. **Level**: replicas = ceil(outstanding / target_running), with floors from prompt
   throughput against the replica's prefill capacity and from KV-cache use against its
   target.
2. **Trend**: a new replica serves only after its cold start (minutes for a 32B model),
   so scale-up looks ahead: the outstanding load is extrapolated ``startup_seconds``
   ahead by a least-squares slope over the recent window (only upward trends count).
3. **Latency guard**: when the measured TTFT percentile breaks the SLO while requests
   wait, add capacity in proportion to the breach even if the level looks fine.
4. **Damping**: scale-up follows the highest recommendation of its (short) window at
   once; scale-down follows the highest recommendation over ``scaleDown`` stabilization
   and never by more than ``maxStep``. Replicas still starting count as capacity.
5. **Limits**: ``[minReplicas, maxReplicas]``, the hourly budget, and the cluster: while
   pods are unschedulable for lack of GPUs, never ask for more than exist.
6. **Missing data**: no fresh metrics means hold — never scale down blind.

The same function runs in the operator (fed from Prometheus) and in the simulator (fed
from the fleet model); nothing here knows which.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

# Fraction of a replica's sequence capacity to run at, by objective: headroom for bursts
# (latency) versus utilization (cost).
OBJECTIVE_UTILIZATION = {"latency": 0.60, "balanced": 0.75, "cost": 0.90}
# Fraction of prefill compute to plan for: prefill shares the GPU with decode steps.
PREFILL_UTILIZATION = {"latency": 0.35, "balanced": 0.45, "cost": 0.55}
KV_TARGET = {"latency": 0.70, "balanced": 0.80, "cost": 0.90}
# Hysteresis: scale up on load only above this much over the current capacity, scale
# down only when the lower count would run at most (1 - DOWN_TOLERANCE) of its target.
UP_TOLERANCE = 0.10
DOWN_TOLERANCE = 0.10
# How far back the trend is fitted, as a multiple of the decision interval, bounded.
TREND_MIN_SECONDS = 30.0
TREND_MAX_SECONDS = 180.0
TREND_MIN_T = 4.0
# A TTFT percentile is measured over a window (Prometheus rate over 1 min): after a
# scale-up it keeps reporting the breach that caused it. The guard waits this long
# before it acts again, so one breach never compounds into x2 per decision.
TTFT_GUARD_COOLDOWN = 60.0


@dataclass(frozen=True)
class LoadSample:
    """The DMD's load at one time, summed (or averaged) over its serving replicas."""

    time: float
    running: float
    waiting: float
    kv_usage: float | None = None  # mean over replicas, 0-1
    ttft_percentile: float | None = None  # seconds, at the SLO's percentile
    prompt_tokens_per_second: float | None = None
    replicas_reporting: int = 0

    @property
    def outstanding(self) -> float:
        return self.running + self.waiting


@dataclass(frozen=True)
class Capacity:
    """What one replica can carry at the SLO; derived from model, GPU and objective."""

    target_running: float
    prefill_tokens_per_second: float
    kv_target: float
    startup_seconds: float
    slo_ttft_seconds: float
    price_per_replica_hour: float = 0.0


@dataclass(frozen=True)
class Limits:
    """Bounds and damping from spec.scaling."""

    min_replicas: int
    max_replicas: int
    scale_up_stabilization: float = 0.0
    scale_down_stabilization: float = 300.0
    scale_up_max_step: int | None = None
    scale_down_max_step: int | None = None
    max_cost_per_hour: float | None = None


@dataclass(frozen=True)
class Cluster:
    """What the cluster says about this DMD's pods."""

    current: int  # spec.replicas now (ready + starting + pending)
    ready: int
    unschedulable: int = 0
    unschedulable_reason: str = ""


@dataclass(frozen=True)
class History:
    """Recent samples and recommendations; the caller keeps it between decisions."""

    samples: tuple[LoadSample, ...] = ()
    recommendations: tuple[tuple[float, int], ...] = ()
    last_scale_up: float = -math.inf

    def add(self, sample: LoadSample | None, now: float, keep_seconds: float) -> History:
        samples = self.samples + ((sample,) if sample is not None else ())
        cutoff = now - keep_seconds
        return History(
            tuple(s for s in samples if s.time >= cutoff),
            tuple(r for r in self.recommendations if r[0] >= cutoff),
            self.last_scale_up,
        )

    def recommend(self, now: float, value: int) -> History:
        return replace(self, recommendations=(*self.recommendations, (now, value)))


@dataclass(frozen=True)
class Decision:
    desired: int
    reason: str
    limited_by: str | None = None
    metrics_available: bool = True
    recommendation: int = 0
    inputs: dict[str, float] = field(default_factory=dict)
    history: History = field(default_factory=History)


def capacity_for(
    *,
    max_concurrency: int,
    kv_concurrency: int,
    prefill_tokens_per_second: float,
    startup_seconds: float,
    slo_ttft_seconds: float,
    objective: str = "balanced",
    price_per_replica_hour: float = 0.0,
    queue_per_replica: float | None = None,
    running_per_replica: float | None = None,
    kv_cache_utilization: float | None = None,
) -> Capacity:
    """A replica's capacity at the SLO from its placement (and optional user targets).

    Sequences a replica can run at once are bounded by the engine's batch slots
    (maxConcurrency) and by its KV cache at the typical length; the objective decides
    how close to that bound to run. A user's ``runningPerReplica`` replaces it;
    ``queuePerReplica`` adds tolerated waiting requests on top.
    """
    slots = max(1.0, float(min(max_concurrency, kv_concurrency)))
    target = running_per_replica or slots * OBJECTIVE_UTILIZATION.get(objective, 0.75)
    if queue_per_replica:
        target += queue_per_replica
    return Capacity(
        target_running=max(1.0, target),
        prefill_tokens_per_second=prefill_tokens_per_second
        * PREFILL_UTILIZATION.get(objective, 0.45),
        kv_target=kv_cache_utilization or KV_TARGET.get(objective, 0.80),
        startup_seconds=startup_seconds,
        slo_ttft_seconds=slo_ttft_seconds,
        price_per_replica_hour=price_per_replica_hour,
    )


def _slope(samples: Sequence[LoadSample]) -> float:
    """Least-squares slope of outstanding load per second, or 0 when the fit does not
    tell a trend from noise (t-statistic below ``TREND_MIN_T``)."""
    if len(samples) < 4:
        return 0.0
    ts = [s.time for s in samples]
    ys = [s.outstanding for s in samples]
    mt, my = sum(ts) / len(ts), sum(ys) / len(ys)
    var = sum((t - mt) ** 2 for t in ts)
    if var <= 0:
        return 0.0
    slope = sum((t - mt) * (y - my) for t, y in zip(ts, ys, strict=True)) / var
    residual = sum((y - my - slope * (t - mt)) ** 2 for t, y in zip(ts, ys, strict=True))
    stderr = math.sqrt(residual / (len(ts) - 2) / var)
    if stderr > 0 and slope / stderr < TREND_MIN_T:
        return 0.0
    return slope


def _ceil(x: float) -> int:
    # Tolerate float noise so that 4.0000001 does not become 5.
    return math.ceil(x - 1e-9)


def recommend(
    sample: LoadSample,
    history: Sequence[LoadSample],
    cap: Capacity,
    cluster: Cluster,
    ttft_guard: bool = True,
) -> tuple[int, str, dict[str, float]]:
    """Replicas the load asks for, before damping and limits, and why."""
    window = min(TREND_MAX_SECONDS, max(TREND_MIN_SECONDS, cap.startup_seconds))
    recent = [s for s in history if s.time >= sample.time - window]
    slope = max(0.0, _slope(recent))
    # Noise is not a trend: the fitted rise over the window must exceed the larger of two
    # sequences and a tenth of the current level.
    if recent and slope * window < max(2.0, 0.1 * sample.outstanding):
        slope = 0.0
    lead = cap.startup_seconds
    # Don't extrapolate further than the window we fitted supports.
    forecast = sample.outstanding + slope * min(lead, 2 * window)
    current = max(cluster.current, 0)

    def count(load: float) -> int:
        n = _ceil(load / cap.target_running)
        if n > current and load <= current * cap.target_running * (1 + UP_TOLERANCE):
            return current
        if n < current:
            return min(current, max(n, _ceil(load / (cap.target_running * (1 - DOWN_TOLERANCE)))))
        return n

    level = count(sample.outstanding)
    trend = count(forecast)
    inputs = {
        "running": round(sample.running, 3),
        "waiting": round(sample.waiting, 3),
        "outstanding": round(sample.outstanding, 3),
        "slopePerSecond": round(slope, 4),
        "forecast": round(forecast, 3),
        "targetRunningPerReplica": round(cap.target_running, 3),
    }
    candidates: list[tuple[int, str]] = [(level, "load"), (trend, "trend")]
    if sample.prompt_tokens_per_second is not None and cap.prefill_tokens_per_second > 0:
        prefill = _ceil(sample.prompt_tokens_per_second / cap.prefill_tokens_per_second)
        inputs["promptTokensPerSecond"] = round(sample.prompt_tokens_per_second, 1)
        candidates.append((prefill, "prefill"))
    if sample.kv_usage is not None and cluster.ready > 0:
        inputs["kvUsage"] = round(sample.kv_usage, 4)
        candidates.append((_ceil(cluster.ready * sample.kv_usage / cap.kv_target), "kv-cache"))
    if sample.ttft_percentile is not None:
        inputs["ttftPercentile"] = round(sample.ttft_percentile, 4)
        if ttft_guard and sample.ttft_percentile > cap.slo_ttft_seconds and sample.waiting > 0:
            breach = min(2.0, sample.ttft_percentile / cap.slo_ttft_seconds)
            candidates.append((_ceil(max(cluster.ready, 1) * breach), "ttft-slo"))
    value, reason = max(candidates, key=lambda c: c[0])
    return value, reason, inputs


def decide(
    sample: LoadSample | None,
    history: History,
    cap: Capacity,
    limits: Limits,
    cluster: Cluster,
    now: float,
    *,
    stale: bool = False,
) -> Decision:
    """The next replica count. ``sample`` None or ``stale`` means no usable metrics."""
    keep = (
        max(limits.scale_down_stabilization, limits.scale_up_stabilization, TREND_MAX_SECONDS) + 1
    )
    current = cluster.current
    if sample is None or stale:
        floor = max(limits.min_replicas, min(current, limits.max_replicas))
        return Decision(
            desired=floor,
            reason="no fresh metrics: holding",
            limited_by=None,
            metrics_available=False,
            recommendation=floor,
            history=history.add(None, now, keep),
        )
    history = history.add(sample, now, keep)
    guard = now - history.last_scale_up >= TTFT_GUARD_COOLDOWN
    raw, reason, inputs = recommend(sample, history.samples, cap, cluster, guard)
    history = history.recommend(now, raw)

    # Damping: up at once (or the max over its window), down only when the highest
    # recommendation over the down window is lower.
    up_window = [v for t, v in history.recommendations if t >= now - limits.scale_up_stabilization]
    down_window = [
        v for t, v in history.recommendations if t >= now - limits.scale_down_stabilization
    ]
    oldest = min((t for t, _ in history.recommendations), default=now)
    if oldest > now - limits.scale_down_stabilization:
        # History shorter than the window (a restart): what runs now is the evidence.
        down_window.append(current)
    if raw > current:
        target = min(up_window) if limits.scale_up_stabilization > 0 else raw
        target = max(target, current)
        if limits.scale_up_max_step:
            target = min(target, current + limits.scale_up_max_step)
    elif raw < current:
        target = max(down_window) if down_window else current
        target = min(target, current)
        if limits.scale_down_max_step:
            target = max(target, current - limits.scale_down_max_step)
        if target < current:
            reason = f"{reason} (lower for {limits.scale_down_stabilization:.0f}s)"
        else:
            reason = "stabilizing before scale-down"
    else:
        target = current

    limited_by: str | None = None
    bounded = max(limits.min_replicas, min(limits.max_replicas, target))
    if target > limits.max_replicas:
        limited_by = f"maxReplicas {limits.max_replicas}"
    if limits.max_cost_per_hour and cap.price_per_replica_hour > 0:
        affordable = int(limits.max_cost_per_hour // cap.price_per_replica_hour)
        if bounded > affordable:
            # minReplicas is the floor the user asked for, even above the budget.
            bounded = max(affordable, limits.min_replicas)
            limited_by = (
                f"budget {limits.max_cost_per_hour:g}/h affords {affordable} "
                f"replicas at {cap.price_per_replica_hour:g}/h"
            )
    if cluster.unschedulable > 0 and bounded > current:
        bounded = current
        limited_by = f"{cluster.unschedulable} pod(s) unschedulable: {cluster.unschedulable_reason}"
    inputs["recommendation"] = raw
    if bounded > current:
        history = replace(history, last_scale_up=now)
    return Decision(
        desired=bounded,
        reason=reason,
        limited_by=limited_by,
        metrics_available=True,
        recommendation=raw,
        inputs=inputs,
        history=history,
    )
