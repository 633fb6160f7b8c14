"""Scaling policies for the simulator: ours (imported, not copied), the anchors with
their published defaults and tuned to the replica, static peak, and scheduled references.

Every policy sees :class:`~distillery.simulate.signals.Signals` (what Prometheus returns:
gauges as of the last scrape, rates over a window) at its own polling interval and
returns the replica count it wants. None of them sees the fleet model's live state.

Each anchor runs twice (``tuned=False`` as its docs ship it, the source cited in its
docstring; ``tuned=True`` with its target set to the replica's capacity at the SLO the
way a competent operator would set it, from the same :class:`Capacity` distillery uses).
Damping (windows, cooldowns, step limits) stays as documented in both.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from distillery.autoscale.policy import (
    Capacity,
    Cluster,
    History,
    Limits,
    LoadSample,
    decide,
)
from distillery.simulate.signals import Signals

_Sample = TypeVar("_Sample", bound=tuple[float, ...])


def _slide(samples: deque[_Sample], sample: _Sample, seconds: float) -> None:
    """Add a (time, values...) sample to an anchor's metric window and drop the samples
    older than ``seconds``."""
    samples.append(sample)
    while samples[0][0] < sample[0] - seconds:
        samples.popleft()


class Policy:
    name = "policy"
    interval = 15.0

    def desired(self, sig: Signals, current: int) -> int:
        raise NotImplementedError


@dataclass
class Distillery(Policy):
    """distillery's own policy (:func:`distillery.autoscale.policy.decide`), fed what the
    operator's Prometheus source gives it."""

    capacity: Capacity
    limits: Limits
    interval: float = 15.0
    name: str = "distillery"
    history: History = field(default_factory=History)
    last_reason: str = ""
    last_inputs: dict[str, float] = field(default_factory=dict)

    def desired(self, sig: Signals, current: int) -> int:
        sample = LoadSample(
            time=sig.time,
            running=float(sig.running),
            waiting=float(sig.waiting),
            kv_usage=sig.kv_mean,
            ttft_percentile=sig.ttft_quantile(self.capacity.slo_percentile / 100.0),
            # As the operator reads it: computed prompt tokens (vLLM's local_compute).
            prompt_tokens_per_second=sig.computed_prompt_tokens_per_second,
            replicas_reporting=sig.gauges.ready,
            completions_per_second=sig.requests_per_second,
            generation_tokens_per_second=sig.generation_tokens_per_second,
            ttft_buckets=sig.ttft_buckets,
            ttft_sum=sig.ttft_sum,
            held=float(sig.gauges.pending),
            queued_replicas=sum(1 for w in sig.gauges.waiting if w > 0),
        )
        decision = decide(
            sample,
            self.history,
            self.capacity,
            self.limits,
            Cluster(current=current, ready=sig.gauges.ready),
            sig.time,
        )
        self.history = decision.history
        self.last_reason = decision.reason
        self.last_inputs = decision.inputs
        return decision.desired


@dataclass
class KedaProductionStack(Policy):
    """KEDA Prometheus scaler as shipped by vLLM production-stack: desired =
    ceil(sum(vllm:num_requests_waiting) / 5), polled every 15 s, through the HPA
    (AverageValue target 5; 10% tolerance; scale-up at most max(+100%, +4 pods) per 15 s;
    scale-down stabilization 300 s). KEDA's cooldownPeriod (360 s) only gates scaling to
    zero, which this setup (minReplicaCount 1) never does.
    Sources: vllm-project/production-stack helm chart (keda ScaledObject), KEDA and
    Kubernetes HPA documentation.

    Tuned: the query becomes sum(running + waiting) and the target the replica's
    sequences at the SLO (``target``), so it scales on load before a queue forms."""

    name: str = "keda"
    interval: float = 15.0
    target: float = 5.0
    on_running: bool = False
    stabilization: float = 300.0
    max_replicas: int = 1000
    recs: deque[tuple[float, int]] = field(default_factory=deque)

    def desired(self, sig: Signals, current: int) -> int:
        metric = float(sig.waiting + (sig.running if self.on_running else 0))
        ratio = metric / (self.target * max(current, 1))
        want = current if abs(ratio - 1.0) <= 0.1 else math.ceil(metric / self.target)
        want = max(1, min(self.max_replicas, want))
        self.recs.append((sig.time, want))
        while self.recs and self.recs[0][0] < sig.time - self.stabilization:
            self.recs.popleft()
        if want < current:
            want = min(current, max(v for _, v in self.recs))
        if want > current:
            want = min(want, max(current * 2, current + 4))
        return want


@dataclass
class KubeAI(Policy):
    """KubeAI's autoscaler: desired = ceil(moving average of in-flight requests over
    10 min, sampled every 10 s / targetRequests 100); scale down only after 30 s of
    consecutive lower readings. Source: kubeai.org docs (autoscaling), defaults
    autoscalingInterval 10s, averageWindow 10m, targetRequests 100, scaleDownDelay 30s.

    Tuned: targetRequests = the replica's sequences at the SLO (100 exceeds the batch
    slots of most placements, so the default never adds a replica before a queue)."""

    name: str = "kubeai"
    interval: float = 10.0
    target_requests: float = 100.0
    window: float = 600.0
    scale_down_delay: float = 30.0
    max_replicas: int = 1000
    samples: deque[tuple[float, float]] = field(default_factory=deque)
    low_since: float | None = None

    def desired(self, sig: Signals, current: int) -> int:
        inflight = sig.running + sig.waiting
        _slide(self.samples, (sig.time, float(inflight)), self.window)
        avg = sum(v for _, v in self.samples) / len(self.samples)
        want = max(1, min(self.max_replicas, math.ceil(avg / self.target_requests)))
        if want < current:
            if self.low_since is None:
                self.low_since = sig.time
            if sig.time - self.low_since < self.scale_down_delay:
                return current
        else:
            self.low_since = None
        return want


@dataclass
class AIBrixAPA(Policy):
    """AIBrix Pod Autoscaler, APA mode on vllm:kv_cache_usage_perc with target 0.5: act
    only when the windowed metric leaves 1 +/- 0.1 of the target; per step at most x2 up
    and x1/2 down; metric window 180 s; no scale-down within 300 s of the last scaling.
    Source: vllm-project/aibrix docs (autoscaling, APA defaults).

    Tuned: the target is the KV-cache use of a replica running its sequences at the SLO
    at the typical context (0.5 is unreachable with short requests and far too late
    with long ones)."""

    name: str = "aibrix-apa"
    interval: float = 15.0
    target: float = 0.5
    tolerance: float = 0.1
    window: float = 180.0
    down_cooldown: float = 300.0
    max_replicas: int = 1000
    samples: deque[tuple[float, float]] = field(default_factory=deque)
    last_scale: float = -1e18

    def desired(self, sig: Signals, current: int) -> int:
        kv = sig.kv_mean or 0.0
        _slide(self.samples, (sig.time, kv), self.window)
        avg = sum(v for _, v in self.samples) / len(self.samples)
        ratio = avg / self.target
        if 1 - self.tolerance <= ratio <= 1 + self.tolerance:
            return current
        want = math.ceil(current * ratio)
        want = max(math.ceil(current / 2), min(current * 2, want))
        if want < current and sig.time - self.last_scale < self.down_cooldown:
            return current
        want = max(1, min(self.max_replicas, want))
        if want != current:
            self.last_scale = sig.time
        return want


@dataclass
class LlmdSaturation(Policy):
    """llm-d workload-variant-autoscaler, saturation rule: a replica is saturated at
    KV >= 0.80 or queue >= 5 (max over 1 min); add one replica when the average spare
    KV (0.80 - kv) < 0.10 or the average spare queue (5 - queue) < 3 across replicas;
    remove one only if the load spread over one replica fewer stays below both
    thresholds with the same spare margins. Source: llm-d-incubation
    workload-variant-autoscaler docs (saturation-based scaling).

    Tuned: the KV threshold is the KV-cache use at the replica's sequences at the SLO
    (as for AIBrix), so "saturated" means the same as the replica's capacity."""

    name: str = "llmd-saturation"
    interval: float = 15.0
    kv_sat: float = 0.80
    queue_sat: float = 5.0
    kv_spare: float = 0.10
    queue_spare: float = 3.0
    window: float = 60.0
    max_replicas: int = 1000
    samples: deque[tuple[float, float, float]] = field(default_factory=deque)

    def desired(self, sig: Signals, current: int) -> int:
        ready = sig.gauges.ready
        n = max(1, ready)
        kv = sum(sig.gauges.kv_usage) / n if sig.gauges.kv_usage else 0.0
        queue = sig.waiting / n
        _slide(self.samples, (sig.time, kv, queue), self.window)
        kv_max = max(s[1] for s in self.samples)
        q_max = max(s[2] for s in self.samples)
        if ready < current:  # replicas still starting: wait for them
            return current
        if self.kv_sat - kv_max < self.kv_spare or self.queue_sat - q_max < self.queue_spare:
            return min(self.max_replicas, current + 1)
        if current > 1:
            kv_after = kv_max * n / (n - 1)
            q_after = q_max * n / (n - 1)
            if (
                self.kv_sat - kv_after >= self.kv_spare
                and self.queue_sat - q_after >= self.queue_spare
            ):
                return current - 1
        return current


@dataclass
class Static(Policy):
    """A fixed replica count for the whole run (static provisioning at the trace's peak,
    computed by the instant reference's capacity rule)."""

    replicas: int
    name: str = "static-peak"
    interval: float = 15.0

    def desired(self, sig: Signals, current: int) -> int:
        return self.replicas


@dataclass
class Scheduled(Policy):
    """Replays a precomputed schedule of (time, replicas): the instant and clairvoyant
    references. Sees no metrics."""

    schedule: list[tuple[float, int]]
    name: str = "scheduled"
    interval: float = 15.0

    def at(self, t: float) -> int:
        value = self.schedule[0][1] if self.schedule else 1
        for when, n in self.schedule:
            if when <= t + 1e-9:
                value = n
            else:
                break
        return value

    def desired(self, sig: Signals, current: int) -> int:
        return self.at(sig.time)


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    k = (len(ordered) - 1) * q / 100.0
    lo = math.floor(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)
