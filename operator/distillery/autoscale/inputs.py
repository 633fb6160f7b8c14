"""From a DMD, its pods and the scraped metrics to the policy's inputs (pure).

Kept apart from the Prometheus client so the aggregation rules are tested without a
server: which pods count, when data is stale or partial, how TTFT percentiles combine.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from distillery.api.conditions import parse_rfc3339
from distillery.api.types import DistilledModelDeploymentSpec, ScalingTargets
from distillery.autoscale.histogram import histogram_quantile
from distillery.autoscale.policy import (
    Capacity,
    Cluster,
    Limits,
    LoadSample,
    capacity_for,
)
from distillery.catalog import ModelEntry
from distillery.sizing import Option, Plan
from distillery.sizing.memory import BATCHED_TOKENS
from distillery.sizing.steptime import step_model

PodKey = tuple[str, str]  # (namespace, pod)


@dataclass
class PodMetrics:
    running: float = 0.0
    waiting: float = 0.0
    kv_usage: float | None = None
    prompt_tokens_rate: float | None = None
    completions_rate: float | None = None
    generation_tokens_rate: float | None = None
    computed_prompt_tokens_rate: float | None = None
    ttft_buckets: dict[float, float] = field(default_factory=dict)
    ttft_sum: float | None = None  # rate of the TTFT histogram's _sum
    last_sample: float = 0.0


@dataclass
class PodCounts:
    """What one pod did over an analysis window: increases of its counters."""

    requests: float | None = None
    failures: float | None = None
    # Responses the failures are counted among, where that is another counter.
    responses: float | None = None
    ttft_buckets: dict[float, float] = field(default_factory=dict)
    ttft_sum: float | None = None  # increase of the TTFT histogram's _sum


def merge_buckets(pods: Iterable[PodMetrics | PodCounts]) -> dict[float, float]:
    out: dict[float, float] = defaultdict(float)
    for p in pods:
        for le, v in p.ttft_buckets.items():
            out[le] += v
    return dict(out)


def merge_sums(pods: Iterable[PodMetrics | PodCounts]) -> float | None:
    """The TTFT ``_sum`` over the pods that report buckets; None unless every one of
    them reports it (a partial sum would understate the latency)."""
    with_buckets = [p for p in pods if p.ttft_buckets]
    if not with_buckets or any(p.ttft_sum is None for p in with_buckets):
        return None
    return sum(p.ttft_sum or 0.0 for p in with_buckets)


@dataclass(frozen=True)
class PodFailure:
    """Why a pod's container is not running, as the kubelet reports it."""

    reason: str  # CrashLoopBackOff, ImagePullBackOff, CreateContainerConfigError, OOMKilled, ...
    message: str
    severity: int  # lower is worse: the one Ready shows when several pods fail


# Waiting reasons that do not clear on their own, worst first: a missing Secret or image
# never recovers; a crash loop might.
FAILING_WAIT_REASONS = (
    "CreateContainerConfigError",
    "InvalidImageName",
    "ErrImageNeverPull",
    "ImagePullBackOff",
    "ErrImagePull",
    "CreateContainerError",
    "RunContainerError",
    "CrashLoopBackOff",
)
POD_FAILURE_REASONS = frozenset({*FAILING_WAIT_REASONS, "OOMKilled", "Error"})


def start_to_ready_seconds(status: Mapping[str, Any]) -> float | None:
    """Seconds from the pod's start (``status.startTime``) to its Ready condition's last
    transition, while it is Ready: the cold start it measured."""
    start = status.get("startTime")
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    if not start or not ready or ready.get("status") != "True":
        return None
    at = ready.get("lastTransitionTime")
    if not at:
        return None
    seconds = parse_rfc3339(str(at)) - parse_rfc3339(str(start))
    return seconds if seconds >= 0 else None


def pod_failure(status: Mapping[str, Any]) -> PodFailure | None:
    """The worst container failure in a pod's ``status``, or None.

    vLLM's commonest failure is an OOM kill while loading weights, seen as
    ``CrashLoopBackOff`` with ``lastState.terminated.reason: OOMKilled``: the message
    names both. Messages are the kubelet's own (they name a Secret, never its value).
    """
    found: list[PodFailure] = []
    statuses = [
        *(status.get("initContainerStatuses") or []),
        *(status.get("containerStatuses") or []),
    ]
    for cs in statuses:
        state, last = cs.get("state") or {}, cs.get("lastState") or {}
        waiting, terminated = state.get("waiting") or {}, state.get("terminated") or {}
        previous = last.get("terminated") or {}
        why = ""
        if previous.get("reason"):
            why = f" (last exit: {previous['reason']}, code {previous.get('exitCode', '?')})"
        name = cs.get("name", "?")
        if waiting.get("reason") in FAILING_WAIT_REASONS:
            reason = str(waiting["reason"])
            text = str(waiting.get("message") or reason)
            found.append(
                PodFailure(
                    reason,
                    f"container {name}: {text}{why}",
                    FAILING_WAIT_REASONS.index(reason),
                )
            )
        elif terminated.get("reason") in ("OOMKilled", "Error") and not cs.get("ready"):
            reason = str(terminated["reason"])
            text = f"exit code {terminated.get('exitCode', '?')}"
            found.append(PodFailure(reason, f"container {name}: {text}", len(FAILING_WAIT_REASONS)))
        elif previous.get("reason") == "OOMKilled" and not cs.get("ready"):
            found.append(
                PodFailure(
                    "OOMKilled",
                    f"container {name} restarted {cs.get('restartCount', 0)} times{why}",
                    len(FAILING_WAIT_REASONS),
                )
            )
    return min(found, key=lambda f: f.severity) if found else None


@dataclass(frozen=True)
class PodInfo:
    name: str
    ready: bool
    unschedulable: str | None = None  # the scheduler's message when Unschedulable
    revision: str | None = None  # distillery.dev/revision: the pod template it runs
    track: str | None = None  # distillery.dev/track: stable or canary
    failure: PodFailure | None = None  # a container that is not running, and why
    terminating: bool = False  # deletionTimestamp set: it counts for nothing
    # A worker of a multi-node group (LeaderWorkerSet worker-index > 0): it serves no API
    # and exports no metrics, so it is never a replica; its trouble (unschedulable,
    # failing) still says why its group is missing.
    group_worker: bool = False
    # The multi-node group the pod belongs to (LeaderWorkerSet group-key); None: the pod
    # is a replica of its own.
    group: str | None = None
    # Seconds from the pod's start to its Ready condition (None until it is ready): what
    # a cold start measured, shown beside the estimate in status.startup.
    start_to_ready_seconds: float | None = None

    @property
    def replica(self) -> str:
        """Which replica the pod is (part of)."""
        return self.group or self.name


@dataclass(frozen=True)
class Observation:
    sample: LoadSample | None
    stale: bool
    partial: bool
    message: str


def observe(
    namespace: str,
    pods: Sequence[PodInfo],
    metrics: Mapping[PodKey, PodMetrics],
    now: float,
    is_fresh: Callable[[PodMetrics], bool],
    percentile: float,
) -> Observation:
    """Sum a DMD's ready pods' metrics into one sample; say when it cannot be trusted."""
    ready = [p for p in pods if p.ready and not p.group_worker]
    if not ready:
        return Observation(None, True, False, "no ready replica reports metrics yet")
    reporting = [
        metrics[(namespace, p.name)]
        for p in ready
        if (namespace, p.name) in metrics and is_fresh(metrics[(namespace, p.name)])
    ]
    if not reporting:
        return Observation(
            None, True, False, f"no fresh metrics for any of {len(ready)} ready pod(s)"
        )
    kv = [m.kv_usage for m in reporting if m.kv_usage is not None]

    def total(values: list[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return sum(present) if present else None

    buckets = merge_buckets(reporting)
    sample = LoadSample(
        time=now,
        running=sum(m.running for m in reporting),
        waiting=sum(m.waiting for m in reporting),
        kv_usage=sum(kv) / len(kv) if kv else None,
        ttft_percentile=histogram_quantile(percentile / 100.0, buckets),
        # Prefill work is what the engine computed: prefix-cache hits cost no prefill.
        prompt_tokens_per_second=total(
            [
                m.computed_prompt_tokens_rate
                if m.computed_prompt_tokens_rate is not None
                else m.prompt_tokens_rate
                for m in reporting
            ]
        ),
        replicas_reporting=len(reporting),
        completions_per_second=total([m.completions_rate for m in reporting]),
        generation_tokens_per_second=total([m.generation_tokens_rate for m in reporting]),
        ttft_buckets=buckets or None,
        ttft_sum=merge_sums(reporting),
        queued_replicas=sum(1 for m in reporting if m.waiting > 0),
    )
    partial = len(reporting) < len(ready)
    message = (
        f"{len(reporting)}/{len(ready)} ready pods report metrics"
        if partial
        else f"{len(reporting)} ready pod(s) report metrics"
    )
    return Observation(sample, False, partial, message)


def cluster_view(current: int, pods: Sequence[PodInfo]) -> Cluster:
    stuck = {p.replica: p.unschedulable for p in pods if p.unschedulable}
    return Cluster(
        current=current,
        ready=sum(1 for p in pods if p.ready and not p.group_worker),
        unschedulable=len(stuck),
        unschedulable_reason=next(iter(stuck.values()), ""),
    )


def replica_speeds(
    model: ModelEntry, option: Option, max_concurrency: int, typical_tokens: int
) -> tuple[float, float]:
    """(output tokens per second at the batch slots, prompt tokens per second with
    whole prefill steps) of one replica, from the step model of its placement."""
    sm = step_model(
        model,
        option.gpu,
        max(1, option.gpu_count),
        option.quantization,
        tensor_parallel=max(1, option.tensor_parallel),
    )
    slots = max(1, min(max_concurrency, option.kv_cache_tokens // max(1, typical_tokens)))
    decode = slots / sm.seconds(slots, 0, slots * typical_tokens / 2)
    prefill = BATCHED_TOKENS / sm.seconds(0, BATCHED_TOKENS, 0, BATCHED_TOKENS / 2)
    return decode, prefill


def placement_capacity(
    model: ModelEntry,
    option: Option,
    *,
    max_concurrency: int,
    typical_tokens: int,
    startup_seconds: float,
    slo_ttft_seconds: float,
    slo_percentile: float,
    objective: str,
    targets: ScalingTargets | None = None,
) -> Capacity:
    """A replica's capacity on ``option``: the operator's (from a DMD) and the
    simulator's (from a scenario) are this one function."""
    decode, prefill = replica_speeds(model, option, max_concurrency, typical_tokens)
    return capacity_for(
        max_concurrency=max_concurrency,
        kv_concurrency=option.kv_cache_tokens // max(1, typical_tokens),
        prefill_tokens_per_second=prefill,
        decode_tokens_per_second=decode,
        startup_seconds=startup_seconds,
        slo_ttft_seconds=slo_ttft_seconds,
        slo_percentile=slo_percentile,
        objective=objective,
        price_per_replica_hour=option.cost_per_replica_hour,
        queue_per_replica=targets.queue_per_replica if targets else None,
        running_per_replica=targets.running_per_replica if targets else None,
        kv_cache_utilization=targets.kv_cache_utilization if targets else None,
    )


def capacity(spec: DistilledModelDeploymentSpec, plan: Plan, startup_seconds: float) -> Capacity:
    return placement_capacity(
        plan.model,
        plan.chosen,
        max_concurrency=spec.serving.concurrency,
        typical_tokens=plan.requirements.typical_tokens,
        startup_seconds=startup_seconds,
        slo_ttft_seconds=spec.scaling.slo.ttft_seconds,
        slo_percentile=spec.scaling.slo.percentile,
        objective=spec.scaling.objective,
        targets=spec.scaling.targets,
    )


def limits(spec: DistilledModelDeploymentSpec) -> Limits:
    s = spec.scaling
    return Limits(
        min_replicas=s.min_replicas,
        max_replicas=s.max_replicas,
        scale_up_stabilization=float(s.scale_up.stabilization_seconds),
        scale_down_stabilization=float(s.scale_down.stabilization_seconds),
        scale_up_max_step=s.scale_up.max_step,
        scale_down_max_step=s.scale_down.max_step,
        max_cost_per_hour=s.max_cost_per_hour,
    )
