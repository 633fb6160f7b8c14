"""Replay a workload against a fleet under each policy and score them (pure, seeded).

Fair by construction:

- **Same start**: every policy starts with the same replicas, ready: in the ``warm``
  scenario the count the first minute needs (the instant reference's first value), in
  the ``cold`` scenario one replica under whatever load arrives.
- **Same signals**: policies see the fleet only through
  :class:`~distillery.simulate.signals.PrometheusView` (15 s scrapes, 1 m rates,
  vLLM's TTFT buckets).
- **References that mean what they say**: both start from the per-minute need of the
  load that actually arrived (:func:`need_schedule`) and search the headroom over it for
  the cheapest schedule that reaches ``REFERENCE_TARGET`` of feasible requests.
  ``instant`` resizes every minute with zero start-up: what no real system can do.
  ``clairvoyant`` knows the future but pays the same cold start: each replica starts one
  cold start before the minute that needs it. Costs are reported relative to it.
- **Feasibility**: a request that misses the SLO even alone on an idle replica (a long
  prompt) is infeasible; one whose prompt plus output exceeds ``maxModelLen`` is
  rejected as vLLM rejects it. Attainment is reported over all requests and over the
  feasible ones.

Scores per policy: GPU-hours and cost (every replica that exists costs, starting and
draining ones too), SLO attainment, TTFT percentiles of served requests, scale events,
flaps (a scale-down reversed by a scale-up within ``FLAP_SECONDS``, or the reverse),
peak replicas, dropped and rejected requests, and the replica time series.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from distillery.autoscale.inputs import placement_capacity
from distillery.autoscale.policy import Capacity, Limits
from distillery.catalog import ModelEntry
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
from distillery.simulate.signals import PrometheusView
from distillery.simulate.workload import Request
from distillery.sizing import Option
from distillery.sizing import memory as mem
from distillery.sizing.startup import cold_start_seconds, drain_seconds
from distillery.sizing.steptime import step_model

ANCHORS = ("keda", "kubeai", "aibrix-apa", "llmd-saturation")
POLICY_NAMES = (
    "distillery",
    *[name for anchor in ANCHORS for name in (anchor, f"{anchor}-tuned")],
    "static-peak",
    "instant",
    "clairvoyant",
)
SCENARIOS = ("warm", "cold")
REFERENCE_INTERVAL = 60.0
FLAP_SECONDS = 300.0
REFERENCES = ("instant", "clairvoyant")
REFERENCE_TARGET = 0.99
# Headroom over the instant need the clairvoyant search tries, cheapest first.
HEADROOMS = (0.0, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
BISECTIONS = 3


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
    batch_tokens: int = mem.BATCHED_TOKENS
    startup_seconds: float | None = None  # None: the estimate from the weights' source


def replica_model(s: Scenario, startup: float | None = None) -> ReplicaModel:
    o = s.option
    steps = step_model(
        s.model, o.gpu, max(1, o.gpu_count), o.quantization, tensor_parallel=o.tensor_parallel
    )
    if startup is None:
        startup = (
            s.startup_seconds
            if s.startup_seconds is not None
            else cold_start_seconds(
                mem.checkpoint_bytes(s.model, o.quantization), s.source_scheme, s.engine
            )
        )
    return ReplicaModel(
        steps=steps,
        kv_capacity_tokens=o.kv_cache_tokens,
        max_seqs=s.max_concurrency,
        price_per_hour=o.cost_per_replica_hour,
        startup_seconds=startup,
        # The same grace the rendered pods get (terminationGracePeriodSeconds).
        drain_seconds=drain_seconds(
            s.max_model_len,
            o.decode_tokens_per_second / max(1, min(s.max_concurrency, o.max_concurrency)),
        ),
        batch_tokens=s.batch_tokens,
        max_model_len=s.max_model_len,
    )


def distillery_capacity(s: Scenario, rm: ReplicaModel | None = None) -> Capacity:
    """The capacity the operator derives for this placement (also the tuned anchors')."""
    rm = rm or replica_model(s)
    return placement_capacity(
        s.model,
        s.option,
        max_concurrency=s.max_concurrency,
        typical_tokens=s.typical_tokens,
        startup_seconds=rm.startup_seconds,
        slo_ttft_seconds=s.slo_ttft,
        slo_percentile=s.slo_percentile,
        objective=s.objective,
    )


def distillery_policy(s: Scenario) -> Distillery:
    limits = Limits(
        min_replicas=s.min_replicas,
        max_replicas=s.max_replicas,
        max_cost_per_hour=s.max_cost_per_hour,
    )
    return Distillery(capacity=distillery_capacity(s), limits=limits)


def feasible(r: Request, rm: ReplicaModel, slo: float) -> bool:
    """Can this request meet the SLO at all: within maxModelLen, and its first token
    within the SLO alone on an idle replica."""
    if r.prompt_tokens + r.output_tokens > rm.max_model_len:
        return False
    return rm.idle_ttft(max(1, r.prompt_tokens - r.cached_tokens)) <= slo


def need_schedule(requests: Sequence[Request], s: Scenario) -> list[tuple[float, int]]:
    """Per minute, the fewest replicas whose capacity covers the load that arrived in it,
    at full utilization: the largest of
    concurrency (requests in service at a full batch's speed over the batch slots),
    GPU time (decode at a full batch plus prefill, spread over each request's service),
    and prefill (prompt tokens arriving within any SLO-long window over the prefill rate).
    The references add headroom to this by search (:func:`reference`)."""
    rm = replica_model(s, startup=0.0)
    slots = max(1, min(s.max_concurrency, rm.kv_capacity_tokens // max(1, s.typical_tokens)))
    step = rm.steps.seconds(slots, 0, slots * s.typical_tokens / 2)
    prefill_rate = rm.prefill_tokens_per_second()
    events: list[tuple[float, int]] = []
    spans: list[tuple[float, float, float]] = []  # (start, end, GPU-seconds of work)
    for r in requests:
        compute = max(1, r.prompt_tokens - r.cached_tokens)
        service = rm.idle_ttft(compute) + max(0, r.output_tokens - 1) * step
        events.append((r.arrival, 1))
        events.append((r.arrival + service, -1))
        work = compute / prefill_rate + max(0, r.output_tokens - 1) * step / slots
        spans.append((r.arrival, r.arrival + service, work))
    events.sort()
    end = max((t for t, _ in events), default=0.0)
    buckets = int(end // REFERENCE_INTERVAL) + 1
    peak = [0] * buckets
    level = 0
    for t, d in events:
        level += d
        b = int(t // REFERENCE_INTERVAL)
        if b < buckets:
            peak[b] = max(peak[b], level)
    level, i = 0, 0
    for b in range(buckets):
        start = b * REFERENCE_INTERVAL
        while i < len(events) and events[i][0] < start:
            level += events[i][1]
            i += 1
        peak[b] = max(peak[b], level)
    busy = [0.0] * buckets
    for a, z, work in spans:
        length = max(z - a, 1e-9)
        b = int(a // REFERENCE_INTERVAL)
        while b < buckets and b * REFERENCE_INTERVAL < z:
            lo, hi = max(a, b * REFERENCE_INTERVAL), min(z, (b + 1) * REFERENCE_INTERVAL)
            busy[b] += work * max(0.0, hi - lo) / length
            b += 1
    window = max(s.dt, s.slo_ttft)
    prefill_need = [0] * buckets
    arrivals = sorted((r.arrival, max(1, r.prompt_tokens - r.cached_tokens)) for r in requests)
    lo, acc = 0, 0.0
    for t, tokens in arrivals:
        acc += tokens
        while arrivals[lo][0] < t - window:
            acc -= arrivals[lo][1]
            lo += 1
        b = int(t // REFERENCE_INTERVAL)
        if b < buckets:
            prefill_need[b] = max(prefill_need[b], math.ceil(acc / (prefill_rate * window)))
    return [
        (
            b * REFERENCE_INTERVAL,
            min(
                s.max_replicas,
                max(
                    s.min_replicas,
                    math.ceil(p / slots),
                    math.ceil(busy[b] / REFERENCE_INTERVAL - 1e-9),
                    prefill_need[b],
                ),
            ),
        )
        for b, p in enumerate(peak)
    ]


def clairvoyant_schedule(
    need: Sequence[tuple[float, int]], lead: float, headroom: float, s: Scenario
) -> list[tuple[float, int]]:
    """Replicas one cold start ahead of need: at ``t``, ``(1 + headroom)`` times the
    largest need in ``[t, t + lead]``, so each replica is ready by its minute."""
    needs = [n for _, n in need]
    ahead = max(1, math.ceil(lead / REFERENCE_INTERVAL)) + 1
    out = []
    for b, (t, _) in enumerate(need):
        future = max(needs[b : b + ahead])
        n = math.ceil(future * (1.0 + headroom) - 1e-9)
        out.append((t, min(s.max_replicas, max(s.min_replicas, n))))
    return out


def _tuned_kv_target(cap: Capacity, s: Scenario, rm: ReplicaModel) -> float:
    live = cap.target_running * s.typical_tokens / 2
    return min(0.9, max(0.05, live / max(1, rm.kv_capacity_tokens)))


def make_policy(name: str, s: Scenario, need: Sequence[tuple[float, int]]) -> Policy:
    """A fresh policy by name (the references are built by :func:`reference`'s search)."""
    rm = replica_model(s)
    cap = distillery_capacity(s, rm)
    tuned = name.endswith("-tuned")
    base = name.removesuffix("-tuned")
    mx = s.max_replicas
    policy: Policy
    if name == "distillery":
        return distillery_policy(s)
    if base == "keda":
        policy = (
            KedaProductionStack(max_replicas=mx, target=cap.target_running, on_running=True)
            if tuned
            else KedaProductionStack(max_replicas=mx)
        )
    elif base == "kubeai":
        policy = KubeAI(max_replicas=mx, target_requests=cap.target_running if tuned else 100.0)
    elif base == "aibrix-apa":
        kv = _tuned_kv_target(cap, s, rm)
        policy = AIBrixAPA(max_replicas=mx, target=kv) if tuned else AIBrixAPA(max_replicas=mx)
    elif base == "llmd-saturation":
        kv = _tuned_kv_target(cap, s, rm)
        policy = (
            LlmdSaturation(max_replicas=mx, kv_sat=kv) if tuned else LlmdSaturation(max_replicas=mx)
        )
    elif name == "static-peak":
        return Static(replicas=max(n for _, n in need))
    else:
        raise ValueError(f"unknown policy {name!r}: valid are {', '.join(POLICY_NAMES)}")
    policy.name = name
    return policy


def initial_replicas(need: Sequence[tuple[float, int]], scenario: str) -> int:
    if scenario == "cold":
        return 1
    if scenario != "warm":
        raise ValueError(f"unknown scenario {scenario!r}: warm or cold")
    return need[0][1] if need else 1


def run_policy(
    requests: Sequence[Request],
    s: Scenario,
    policy: Policy,
    *,
    initial: int = 1,
    zero_startup: bool = False,
    progress: Callable[[float], None] | None = None,
    series_every: float = 60.0,
    finished: Callable[[Fleet], None] | None = None,
) -> dict[str, Any]:
    """One policy over ``requests``; ``finished`` sees the fleet at the end (its
    per-request outcomes, for a diagnosis beyond the score)."""
    rm = replica_model(s, startup=0.0 if zero_startup else None)
    fleet = Fleet(rm, initial)
    view = PrometheusView()
    dt = s.dt
    t, i, n = 0.0, 0, len(requests)
    end_of_arrivals = requests[-1].arrival if requests else 0.0
    horizon = end_of_arrivals + 3600.0
    next_decision = policy.interval
    next_series = 0.0
    series: list[list[float]] = []
    view.observe(0.0, fleet)
    while t < horizon:
        j = i
        while j < n and requests[j].arrival < t + dt:
            j += 1
        fleet.step(t, dt, requests[i:j])
        i = j
        t += dt
        view.observe(t, fleet)
        if t + 1e-9 >= next_decision:
            sig = view.signals(t)
            if sig is not None:
                fleet.set_replicas(max(0, policy.desired(sig, fleet.desired)), t)
            next_decision += policy.interval
        if t + 1e-9 >= next_series:
            snap = fleet.snapshot(t)
            series.append([round(t, 1), fleet.desired, snap.ready])
            next_series += series_every
        if progress is not None and int(t) % 600 == 0:
            progress(t)
        if i >= n and not any(r.outstanding for r in fleet.replicas) and not fleet.pending:
            break
    fleet.finish(t)
    if finished is not None:
        finished(fleet)
    return score(fleet, s, rm, series)


def flaps(events: Sequence[Any], window: float = FLAP_SECONDS) -> int:
    """Scale-downs reversed by a scale-up within ``window`` seconds, or the reverse."""
    count = 0
    for a, b in itertools.pairwise(events):
        up_a, up_b = a.after > a.before, b.after > b.before
        if up_a != up_b and b.time - a.time <= window:
            count += 1
    return count


def score(fleet: Fleet, s: Scenario, rm: ReplicaModel, series: list[list[float]]) -> dict[str, Any]:
    outcomes = fleet.outcomes
    served = [o.ttft for o in outcomes if o.ttft is not None and not o.dropped]

    def met(o: Any) -> bool:
        return not o.dropped and o.ttft is not None and o.ttft <= s.slo_ttft

    ok = [feasible(o.request, rm, s.slo_ttft) for o in outcomes]
    total = len(outcomes)
    n_feasible = sum(ok)
    met_all = sum(1 for o in outcomes if met(o))
    met_feasible = sum(1 for o, f in zip(outcomes, ok, strict=True) if f and met(o))
    peak = max([e.after for e in fleet.events] + [int(p[1]) for p in series] + [0])
    return {
        "gpuHours": round(fleet.replica_seconds * rm.gpus / 3600.0, 3),
        "cost": round(fleet.replica_seconds / 3600.0 * rm.price_per_hour, 2),
        "sloAttainment": round(met_all / total, 5) if total else 1.0,
        "sloAttainmentFeasible": round(met_feasible / n_feasible, 5) if n_feasible else 1.0,
        "ttftP50": round(_percentile(served, 50), 4) if served else None,
        "ttftP95": round(_percentile(served, 95), 4) if served else None,
        "ttftP99": round(_percentile(served, 99), 4) if served else None,
        "scaleEvents": fleet.scale_events,
        "flaps": flaps(fleet.events),
        "peakReplicas": int(peak),
        "dropped": sum(1 for o in outcomes if o.dropped),
        "rejected": sum(1 for o in outcomes if o.rejected),
        "infeasible": total - n_feasible,
        "requests": total,
        "completed": sum(1 for o in outcomes if o.finish is not None),
        "replicas": series,
    }


def reference(
    name: str,
    requests: Sequence[Request],
    s: Scenario,
    need: Sequence[tuple[float, int]],
    initial: int,
) -> dict[str, Any]:
    """A reference schedule: the cheapest headroom over the per-minute ``need`` (over
    ``HEADROOMS``, then bisected) that reaches ``REFERENCE_TARGET`` of feasible requests;
    the best attainment when none does. ``instant`` resizes with zero start-up;
    ``clairvoyant`` pays the real cold start and starts each replica one cold start
    ahead of the minute that needs it."""
    instant = name == "instant"
    lead = 0.0 if instant else replica_model(s).startup_seconds

    def run(h: float) -> dict[str, Any]:
        schedule = clairvoyant_schedule(need, lead, h, s)
        policy = Scheduled(schedule=schedule, name=name)
        return run_policy(requests, s, policy, initial=initial, zero_startup=instant)

    tried: list[tuple[float, dict[str, Any]]] = []
    for h in HEADROOMS:
        tried.append((h, run(h)))
        if tried[-1][1]["sloAttainmentFeasible"] >= REFERENCE_TARGET:
            break
    if len(tried) > 1 and tried[-1][1]["sloAttainmentFeasible"] >= REFERENCE_TARGET:
        # Narrow the headroom between the last miss and the first hit.
        lo, hi = tried[-2][0], tried[-1][0]
        for _ in range(BISECTIONS):
            mid = (lo + hi) / 2
            tried.append((mid, run(mid)))
            if tried[-1][1]["sloAttainmentFeasible"] >= REFERENCE_TARGET:
                hi = mid
            else:
                lo = mid
    reaching = [(h, r) for h, r in tried if r["sloAttainmentFeasible"] >= REFERENCE_TARGET]
    if reaching:
        h, best = min(reaching, key=lambda hr: hr[1]["cost"])
    else:
        h, best = max(tried, key=lambda hr: (hr[1]["sloAttainmentFeasible"], -hr[1]["cost"]))
    best["headroom"] = round(h, 4)
    best["reachedTarget"] = bool(reaching)
    return best


def simulate(
    requests: Sequence[Request],
    s: Scenario,
    policies: Sequence[str] = POLICY_NAMES,
    progress: Callable[[str, float], None] | None = None,
    scenario: str = "warm",
) -> dict[str, dict[str, Any]]:
    """Every policy on the same requests from the same start; see the module docstring."""
    unknown = [p for p in policies if p not in POLICY_NAMES]
    if unknown:
        raise ValueError(
            f"unknown policy {', '.join(map(repr, unknown))}: valid are {', '.join(POLICY_NAMES)}"
        )
    need = need_schedule(requests, s)
    initial = initial_replicas(need, scenario)
    out: dict[str, dict[str, Any]] = {}
    for name in policies:
        cb = (lambda t, n=name: progress(n, t)) if progress else None
        if name in REFERENCES:
            out[name] = reference(name, requests, s, need, initial)
            continue
        policy = make_policy(name, s, need)
        result = run_policy(requests, s, policy, initial=initial, progress=cb)
        if isinstance(policy, Distillery):
            result["targetRunningPerReplica"] = round(policy.capacity.target_running, 2)
        out[name] = result
    return out
