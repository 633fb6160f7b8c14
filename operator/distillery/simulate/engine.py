"""Replay a workload against a fleet under each policy and score them (pure, seeded).

Scores per policy: GPU-hours and cost (every replica that exists costs, starting and
draining ones too), SLO attainment (share of requests whose time to first token met
the SLO; dropped requests miss it), TTFT percentiles of served requests, scale events,
dropped requests, and the replica time series.

The oracle is the lower bound: for each interval it provisions the fewest replicas
whose batch slots cover the peak concurrency that actually arrived in it (service times
at a full batch), with zero start-up delay. Static provisioning runs the oracle's peak
all day.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from distillery.autoscale.policy import Limits, capacity_for
from distillery.catalog import GpuType, ModelEntry
from distillery.simulate.fleet import Fleet, ReplicaModel
from distillery.simulate.policies import (
    AIBrixAPA,
    Distillery,
    KedaProductionStack,
    KubeAI,
    LlmdSaturation,
    Policy,
    Scheduled,
    Static,
    _percentile,
)
from distillery.simulate.workload import Request
from distillery.sizing import Option
from distillery.sizing import memory as mem
from distillery.sizing.startup import cold_start_seconds, drain_seconds

POLICY_NAMES = (
    "distillery",
    "keda",
    "kubeai",
    "aibrix-apa",
    "llmd-saturation",
    "static-peak",
    "oracle",
)
ORACLE_INTERVAL = 60.0
TTFT_WINDOW = 60.0


@dataclass(frozen=True)
class Scenario:
    """Everything a run depends on besides the workload."""

    model: ModelEntry
    option: Option  # the placement (from the planner)
    max_concurrency: int
    typical_tokens: int
    slo_ttft: float
    slo_percentile: float = 95.0
    objective: str = "balanced"
    min_replicas: int = 1
    max_replicas: int = 1000
    source_scheme: str = "hf"
    engine: str = "vllm"
    dt: float = 1.0
    max_cost_per_hour: float | None = None
    max_model_len: int = 32768


def replica_model(s: Scenario, startup: float | None = None) -> ReplicaModel:
    o, gpu = s.option, s.option.gpu
    weights = mem.weight_bytes(s.model, o.quantization)
    return ReplicaModel(
        weights_bytes=weights,
        kv_bytes_per_token=mem.kv_bytes_per_token(s.model),
        kv_capacity_tokens=o.kv_cache_tokens,
        max_seqs=s.max_concurrency,
        params=s.model.params_billions * 1e9,
        tflops=gpu.bf16_tflops * 1e12 * max(1, o.gpu_count),
        bandwidth=gpu.bandwidth_g_bs * 1e9 * max(1, o.gpu_count),
        gpus=max(1, o.gpus),
        price_per_hour=o.cost_per_replica_hour,
        startup_seconds=(
            cold_start_seconds(weights, s.source_scheme, s.engine) if startup is None else startup
        ),
        # The same grace the rendered pods get (terminationGracePeriodSeconds).
        drain_seconds=drain_seconds(
            s.max_model_len,
            o.decode_tokens_per_second / max(1, min(s.max_concurrency, o.max_concurrency)),
        ),
    )


def distillery_policy(s: Scenario) -> Distillery:
    rm = replica_model(s)
    kv_concurrency = rm.kv_capacity_tokens // max(1, s.typical_tokens)
    cap = capacity_for(
        max_concurrency=s.max_concurrency,
        kv_concurrency=kv_concurrency,
        prefill_tokens_per_second=rm.tflops * rm.mfu / (2.0 * rm.params),
        startup_seconds=rm.startup_seconds,
        slo_ttft_seconds=s.slo_ttft,
        objective=s.objective,
        price_per_replica_hour=rm.price_per_hour,
    )
    limits = Limits(
        min_replicas=s.min_replicas,
        max_replicas=s.max_replicas,
        max_cost_per_hour=s.max_cost_per_hour,
    )
    return Distillery(capacity=cap, limits=limits, slo_percentile=s.slo_percentile)


def oracle_schedule(requests: Sequence[Request], s: Scenario) -> list[tuple[float, int]]:
    rm = replica_model(s)
    slots = max(1, min(s.max_concurrency, rm.kv_capacity_tokens // max(1, s.typical_tokens)))
    step = rm.step_seconds(slots * s.typical_tokens / 2)
    events: list[tuple[float, int]] = []
    for r in requests:
        service = rm.prefill_seconds(r.prompt_tokens) + r.output_tokens * step
        events.append((r.arrival, 1))
        events.append((r.arrival + service, -1))
    events.sort()
    end = max((t for t, _ in events), default=0.0)
    buckets = int(end // ORACLE_INTERVAL) + 1
    peak = [0] * buckets
    level = 0
    for t, d in events:
        level += d
        b = int(t // ORACLE_INTERVAL)
        if b < buckets:
            peak[b] = max(peak[b], level)
    # Also carry the level at each bucket start (requests spanning whole buckets).
    level = 0
    i = 0
    for b in range(buckets):
        start = b * ORACLE_INTERVAL
        while i < len(events) and events[i][0] < start:
            level += events[i][1]
            i += 1
        peak[b] = max(peak[b], level)
    # Prefill compute: prompt tokens arriving in any SLO-long window must be prefilled
    # within about that window, or their first tokens come late.
    rate = rm.tflops * rm.mfu / (2.0 * rm.params)
    window = max(s.dt, s.slo_ttft)
    prefill_need = [0] * buckets
    arrivals = sorted((r.arrival, r.prompt_tokens) for r in requests)
    lo = 0
    acc = 0.0
    for t, tokens in arrivals:
        acc += tokens
        while arrivals[lo][0] < t - window:
            acc -= arrivals[lo][1]
            lo += 1
        b = int(t // ORACLE_INTERVAL)
        if b < buckets:
            prefill_need[b] = max(prefill_need[b], math.ceil(acc / (rate * window)))
    return [
        (b * ORACLE_INTERVAL, max(s.min_replicas, math.ceil(p / slots), prefill_need[b]))
        for b, p in enumerate(peak)
    ]


def make_policy(name: str, s: Scenario, schedule: list[tuple[float, int]]) -> Policy:
    if name == "distillery":
        return distillery_policy(s)
    if name == "keda":
        return KedaProductionStack(max_replicas=s.max_replicas)
    if name == "kubeai":
        return KubeAI(max_replicas=s.max_replicas)
    if name == "aibrix-apa":
        return AIBrixAPA(max_replicas=s.max_replicas)
    if name == "llmd-saturation":
        return LlmdSaturation(max_replicas=s.max_replicas)
    if name == "static-peak":
        return Static(replicas=max(n for _, n in schedule))
    if name == "oracle":
        return Scheduled(schedule=schedule)
    raise ValueError(f"unknown policy {name!r}: {', '.join(POLICY_NAMES)}")


def run_policy(
    requests: Sequence[Request],
    s: Scenario,
    policy: Policy,
    *,
    zero_startup: bool = False,
    progress: Callable[[float], None] | None = None,
    series_every: float = 60.0,
) -> dict[str, Any]:
    rm = replica_model(s, startup=0.0 if zero_startup else None)
    fleet = Fleet(rm, policy.initial())
    dt = s.dt
    t = 0.0
    i = 0
    n = len(requests)
    end_of_arrivals = requests[-1].arrival if requests else 0.0
    horizon = end_of_arrivals + 3600.0
    next_decision = 0.0
    next_series = 0.0
    ttft_window: deque[tuple[float, float]] = deque()
    ttft_seen = 0
    prompt_marks: deque[tuple[float, float]] = deque([(0.0, 0.0)])
    series: list[list[float]] = []
    while t < horizon:
        j = i
        while j < n and requests[j].arrival < t + dt:
            j += 1
        fleet.step(t, dt, requests[i:j])
        i = j
        t += dt
        # Metrics the policy would scrape.
        for k in range(ttft_seen, len(fleet.ttfts)):
            ttft_window.append(fleet.ttfts[k])
        ttft_seen = len(fleet.ttfts)
        while ttft_window and ttft_window[0][0] < t - TTFT_WINDOW:
            ttft_window.popleft()
        done = sum(r.prompt_tokens_done for r in fleet.replicas)
        if t >= next_decision:
            prompt_marks.append((t, done))
            while len(prompt_marks) > 2 and prompt_marks[1][0] <= t - TTFT_WINDOW:
                prompt_marks.popleft()
            t0, d0 = prompt_marks[0]
            prompt_tps = max(0.0, done - d0) / max(dt, t - t0) if t > t0 else 0.0
            snap = fleet.snapshot(t)
            want = policy.desired(snap, fleet.desired, [v for _, v in ttft_window], prompt_tps)
            fleet.set_replicas(max(0, want), t)
            next_decision = t + policy.interval
        if t >= next_series:
            snap = fleet.snapshot(t)
            series.append([round(t, 1), fleet.desired, snap.ready, len(ttft_window)])
            next_series = t + series_every
        if progress is not None and int(t) % 600 == 0:
            progress(t)
        if (
            i >= n
            and all(o.finish is not None or o.dropped for o in fleet.outcomes[-1:])
            and not any(r.outstanding for r in fleet.replicas)
            and not fleet.pending
        ):
            break
    fleet.finish(t)
    return score(fleet, s, series)


def score(fleet: Fleet, s: Scenario, series: list[list[float]]) -> dict[str, Any]:
    outcomes = fleet.outcomes
    served = [o.ttft for o in outcomes if o.ttft is not None and not o.dropped]
    met = sum(1 for o in outcomes if not o.dropped and o.ttft is not None and o.ttft <= s.slo_ttft)
    total = len(outcomes)
    gpu_hours = fleet.replica_seconds * fleet.model.gpus / 3600.0
    cost = fleet.replica_seconds / 3600.0 * fleet.model.price_per_hour
    return {
        "gpuHours": round(gpu_hours, 3),
        "cost": round(cost, 2),
        "sloAttainment": round(met / total, 5) if total else 1.0,
        "ttftP50": round(_percentile(served, 50), 4) if served else None,
        "ttftP95": round(_percentile(served, 95), 4) if served else None,
        "ttftP99": round(_percentile(served, 99), 4) if served else None,
        "scaleEvents": fleet.scale_events,
        "dropped": sum(1 for o in outcomes if o.dropped),
        "requests": total,
        "completed": sum(1 for o in outcomes if o.finish is not None),
        "replicas": series,
    }


def simulate(
    requests: Sequence[Request],
    s: Scenario,
    policies: Sequence[str] = POLICY_NAMES,
    progress: Callable[[str, float], None] | None = None,
) -> dict[str, dict[str, Any]]:
    schedule = oracle_schedule(requests, s)
    out: dict[str, dict[str, Any]] = {}
    for name in policies:
        policy = make_policy(name, s, schedule)
        cb = (lambda t, n=name: progress(n, t)) if progress else None
        result = run_policy(requests, s, policy, zero_startup=(name == "oracle"), progress=cb)
        if name == "distillery" and isinstance(policy, Distillery):
            result["targetRunningPerReplica"] = round(policy.capacity.target_running, 2)
        out[name] = result
    return out


def scenario_for(
    model: ModelEntry, option: Option, gpu: GpuType | None = None, **kwargs: Any
) -> Scenario:
    base = Scenario(
        model=model,
        option=option,
        max_concurrency=kwargs.pop("max_concurrency", 64),
        typical_tokens=kwargs.pop("typical_tokens", 4096),
        slo_ttft=kwargs.pop("slo_ttft", 2.0),
    )
    return replace(base, **kwargs)
