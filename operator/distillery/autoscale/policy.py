"""The autoscaling policy: load, capacity and history in, desired replicas out (pure).

The unit is a *replica-equivalent of GPU time*: the share of one replica's time that a
load keeps busy at the replica's full batch. Capacity comes from the placement (the
step model's decode tokens per second at the batch slots, and its prefill tokens per
second), never from a trace, so the policy carries over to traffic it has never seen.

One decision:

1. **Demand, not backlog.** The work the engines served over the last minute
   (generation tokens over decode capacity plus prompt tokens over prefill capacity)
   plus the work that arrived but was not served (the waiting queue's growth times the
   work of a mean request): ``demand``, in replicas at full use. Divided by the
   objective's target utilization (``utilization``: 0.70 / 0.85 / 0.92 for latency /
   balanced / cost: continuous batching absorbs noise within a minute, so a replica
   holds the SLO close to full use; headroom covers what a minute does not).
   **Prompts wait for the prefills ahead of them**: a replica computes prompts first
   come, first served, so a prompt's first token waits for the prompts before it. The
   prompt work (prompt tokens over prefill capacity) is held at the utilization that
   keeps no more than the SLO's allowance of the prompts that could meet the SLO
   alone from missing it in that wait (:func:`prefill_utilization`, from the mean
   prefill time this DMD's requests measure and the SLO): short prompts allow nearly
   full use, prompts near the SLO little. The replicas asked for are the larger of
   the demand's and the prompts'. The SLO record (5) lowers the demand's utilization
   only: this one is derived from the SLO already, and lowering it on breaches of
   prompts too long to meet the SLO alone doubled the replicas for nothing.
2. **Backlog, bounded.** The waiting requests' work, drained within two cold starts:
   ``waiting x work per request / (2 x startup)``, and never more replicas than the waiting
   requests could occupy at the target batch (``waiting / target_running``). Requests in
   an engine's own queue are served by that engine alone, so they keep at most one
   replica busy per replica holding a queue; only those held before the engines (a
   router's queue) are drained by new replicas. It is a level, recomputed from the
   queue each time, so replicas already starting are counted: a decision never adds
   the same backlog twice.
3. **Headroom from the DMD's own burstiness.** How far demand went, within one cold
   start (or the flap window, if longer), above where it is now — a high quantile over
   the minutes of this DMD's history (up to a day) — is held on top: bursty traffic
   gets more, smooth traffic less; bursts shorter than a cold start are held, not
   chased. A rise is held only as high as it went twice, a horizon apart: the
   minutes before one step all see the same step, and one step is not a pattern.
   Until 20 minutes of history exist, the largest rise seen so far (the
   largest of n samples estimates a high quantile from above), and never less than
   ``PRIOR_HEADROOM`` of the level: a burst in the first minutes is held until the
   quantile takes over, and after that if it comes again. The headroom and the
   backlog's replicas (2) are one reserve, the larger of the two, not their sum:
   replicas bought to drain a backlog are spare once it has drained, which is when a
   rise would need them, and while it drains the queued requests have already lost
   their first token.
4. **Latency guard, per episode.** When the TTFT histogram proves the SLO broken
   (more than the allowed share of requests, and at least five, surely above it: from
   the buckets and the histogram's ``_sum``, never a percentile guessed between coarse
   buckets) while the replicas are contended (requests wait, the replicas are at least
   half busy, or more sequences run than there are replicas, so that prefills share a
   GPU with other work: otherwise the slow requests are slow alone), add a quarter of
   the ready replicas per 5% of requests missed (or per the SLO's allowance, when
   looser; capped at four quarters: doubling; a p99 SLO proves a breach sooner, it
   does not make one larger),
   less those already starting, and less those the load asks for when the load
   explains the breach (the ready replicas carry more than their target): the guard
   never adds on top of the demand's own replicas. Within the episode, one more step
   only once the last step's replicas have served for a whole rate window with no
   queue and the share above the SLO fell by a tenth: a breach while replicas start,
   or a backlog's tail, never adds, and a step that did not help ends the stepping.
5. **The DMD's own SLO record.** The utilization target is what the placement says a
   replica carries; traffic with bursts shorter than a minute or long prompts that
   block the ones behind them carries less. Each proven breach episode that happens
   while the replicas the policy asks for are all serving lowers this DMD's target by
   15% (to half at most); each minute in which the share of requests
   surely within the SLO (bucket boundary below it) meets the percentile raises it
   0.5% back. Shown as ``utilizationScale`` in the decision inputs.
6. **Scale-down that pays for itself.** A replica removed and needed again costs a
   cold start of GPU time for nothing, and the SLO while it starts; so the count goes
   down only to the highest recommendation over ``max(scaleDown.stabilizationSeconds,
   2 x startup)``, and only if the removal is expected to last its payback time
   (two cold starts, at least the flap window): of the quiet stretches in this DMD's
   history that lasted as long as the current one (demand below what the lower count
   carries, less the headroom), at most a quarter ended sooner. No history, no
   evidence: the scale-down goes.
7. **Limits**: ``[minReplicas, maxReplicas]``, the hourly budget, and the cluster: while
   pods are unschedulable for lack of GPUs, never ask for more than exist.
8. **Missing data**: no fresh metrics means hold — never scale down blind.

The bound (tested as a property): a scale-up never asks for more than

    ceil(max(demand / utilization, prompt_work / prefill_utilization)
         + max((peak - demand) / utilization,
               min(waiting / target_running, waiting x work / (2 x startup),
                   drain(held) + queued_replicas))) + guard

where ``peak`` is the highest per-minute demand in the learned history (before there
is one, ``demand x (1 + prior headroom)``, with a one-replica floor) and ``guard`` at
most the ready replicas per step, one step per served rate window; or the KV-cache
floor ``ready x kv_usage / kv_target`` when the cache, not the batch, is what fills. A
backlog alone never asks for more replicas than its requests could occupy at the
target batch. ``prefill_utilization`` is never below ``PREFILL_UTILIZATION_FLOOR``:
prompts never ask for more than ten replicas per replica of prompt work.

The same function runs in the operator (fed from Prometheus) and in the simulator (fed
from the fleet model through a Prometheus view); nothing here knows which.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from distillery.api.types import LimitReason
from distillery.autoscale.histogram import attainment_bounds, share_above_bounds

# Target GPU-time utilization by objective: headroom for bursts within a minute
# (latency) versus cost.
OBJECTIVE_UTILIZATION = {"latency": 0.70, "balanced": 0.85, "cost": 0.92}
KV_TARGET = {"latency": 0.70, "balanced": 0.80, "cost": 0.90}
# Quantile of the learned rise held as headroom, by objective.
HEADROOM_QUANTILE = {"latency": 0.99, "balanced": 0.95, "cost": 0.90}
PRIOR_HEADROOM = {"latency": 0.4, "balanced": 0.2, "cost": 0.1}
# History the headroom is learned from: one point a minute (the minute's peak demand).
LEARN_MINUTES = 24 * 60
LEARN_MIN_MINUTES = 20
# A scale-down reversed within this long is a flap; rises over this horizon are held.
FLAP_SECONDS = 300.0
# The guard adds this share of the ready replicas per allowed share of requests missed
# (up to GUARD_MAX_SEVERITY of them), and only when the replicas are contended (at
# least this busy, requests wait, or sequences share replicas).
GUARD_STEP = 0.25
GUARD_MAX_SEVERITY = 4.0
# The share of requests missed that counts as one quarter step (or the SLO's own
# allowance when looser): a quarter per 5% missed.
GUARD_SEVERITY_UNIT = 0.05
GUARD_MIN_LOAD = 0.5
# Another step within an episode only if the last cut the share above the SLO this much.
GUARD_HELPED = 0.9
# A guard episode ends after this long without a proven breach.
GUARD_CLEAR_SECONDS = 60.0
# Rates are read over 1 minute; the queue's growth over the same window.
RATE_WINDOW = 60.0
# Smoothing of the mean work per request (per decision), and how many completions a
# measurement must rest on to move it that much.
WORK_SMOOTHING = 0.2
WORK_PRIOR_REQUESTS = 300.0
# SLO feedback: a proven breach episode lowers the utilization target this much (to a
# floor); every minute the SLO is surely met raises it back this much.
BREACH_BACKOFF = 0.85
UTILIZATION_FLOOR = 0.5
RELAX_PER_MINUTE = 0.005
# Prompts near the SLO alone allow little prefill use of a replica, never less than this.
PREFILL_UTILIZATION_FLOOR = 0.1
# A backlog is drained within this many cold starts.
DRAIN_COLD_STARTS = 2.0
DOWN_TOLERANCE = 0.10
# A scale-down pays for itself when it lasts this many cold starts (at least the flap
# window): one pays back the GPU time of starting the replica again, one the SLO risk
# of serving while it starts. It is made only when, in this DMD's own history, at most
# this share of the quiet stretches that lasted as long as the current one ended sooner.
PAYBACK_COLD_STARTS = 2.0
RETURN_RISK = 0.25


@dataclass(frozen=True)
class LoadSample:
    """The DMD's load at one time, summed (or averaged) over its serving replicas."""

    time: float
    running: float
    waiting: float
    kv_usage: float | None = None  # mean over replicas, 0-1
    ttft_percentile: float | None = None  # seconds, at the SLO's percentile (display)
    prompt_tokens_per_second: float | None = None
    replicas_reporting: int = 0
    completions_per_second: float | None = None
    generation_tokens_per_second: float | None = None
    # Increase per cumulative TTFT bucket {le: count} over the rate window, and of the
    # histogram's _sum (what tells 2.1 s from 1.9 s inside vLLM's 1.0-2.5 s bucket).
    ttft_buckets: Mapping[float, float] | None = None
    ttft_sum: float | None = None
    # Of ``waiting``: the requests held before any engine (the router's queue, or no
    # replica ready to take them), which any replica can serve; and how many reporting
    # replicas have a queue of their own. An engine's queue is served by that engine
    # alone: a new replica takes new arrivals, never what another engine holds.
    held: float = 0.0
    queued_replicas: int | None = None  # None: not known, every waiting request is held

    @property
    def outstanding(self) -> float:
        return self.running + self.waiting


@dataclass(frozen=True)
class Capacity:
    """What one replica can carry; derived from model, GPU and objective."""

    target_running: float  # sequences per replica at the objective's utilization
    prefill_tokens_per_second: float  # prompt tokens per second with whole prefill steps
    kv_target: float
    startup_seconds: float
    slo_ttft_seconds: float
    price_per_replica_hour: float = 0.0
    # Output tokens per second at the batch slots (0: estimate from target_running).
    decode_tokens_per_second: float = 0.0
    utilization: float = 0.75
    slo_percentile: float = 95.0
    headroom_quantile: float = 0.95
    prior_headroom: float = 0.3


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
    # Where the budget comes from when it is not the DMD's own (a route's shared one).
    budget_source: str = ""


@dataclass(frozen=True)
class Cluster:
    """What the cluster says about this DMD's pods."""

    current: int  # spec.replicas now (ready + starting + pending)
    ready: int
    unschedulable: int = 0
    unschedulable_reason: str = ""


@dataclass(frozen=True, kw_only=True)
class DownVerdict:
    """The payback rule's verdict on one proposed scale-down, and its evidence."""

    minute: int
    proposed: int
    current: int
    allowed: int
    returned: int  # quiet stretches like this one that ended within the payback time
    judged: int  # quiet stretches that lasted as long as this one


@dataclass(frozen=True)
class History:
    """What the policy remembers between decisions; the caller keeps it."""

    # (time, waiting requests) over the last window or two: the queue's growth.
    queue: tuple[tuple[float, float], ...] = ()
    recommendations: tuple[tuple[float, int], ...] = ()
    # One point a minute for up to a day (the minute's peak demand, replicas at full
    # use), for the learned headroom: float32, ~6 KiB a DMD; and the minute of the last.
    demand_values: array[float] = field(default_factory=lambda: array("f"))
    demand_minute: int | None = None
    # The demand (replicas at full use) to be ready for, learned once a minute, and the
    # rise above that minute's level it came from.
    learned_peak: float | None = None
    learned_rise: float | None = None
    work_per_request: float | None = None  # GPU-seconds of one replica, smoothed
    prefill_per_request: float | None = None  # seconds of one replica's prefill, smoothed
    guard_until: float = -math.inf  # a guard episode lasts until then (extended by breaches)
    guard_added: int = 0
    # The ready count the guard's last step waits for, and since when it is met: a breach
    # that outlasts a rate window with those replicas serving earns another step.
    guard_ready_needed: int = 0
    guard_ready_since: float | None = None
    # The share of requests surely above the SLO when the last step was taken: another
    # step only if that one helped.
    guard_share: float = 1.0
    started: float | None = None  # the first decision this history saw
    # What this DMD's own SLO record says about its utilization target (1 = as planned).
    utilization_scale: float = 1.0
    last_time: float | None = None
    # The last payback verdict: judged again when the minute (its evidence) or the
    # counts change.
    down_verdict: DownVerdict | None = None

    def add(self, sample: LoadSample | None, now: float, keep_seconds: float) -> History:
        queue = self.queue + (((sample.time, sample.waiting),) if sample is not None else ())
        cutoff = now - keep_seconds
        return replace(
            self,
            queue=tuple(q for q in queue if q[0] >= max(cutoff, now - 2 * RATE_WINDOW)),
            recommendations=tuple(r for r in self.recommendations if r[0] >= cutoff),
            started=now if self.started is None else self.started,
        )

    def recommend(self, now: float, value: int) -> History:
        return replace(self, recommendations=(*self.recommendations, (now, value)))


@dataclass(frozen=True)
class Limit:
    """What holds the replicas below what the load asks, and why."""

    reason: LimitReason
    message: str


@dataclass(frozen=True)
class Decision:
    desired: int
    reason: str
    limited_by: Limit | None = None
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
    decode_tokens_per_second: float = 0.0,
    slo_percentile: float = 95.0,
    queue_per_replica: float | None = None,
    running_per_replica: float | None = None,
    kv_cache_utilization: float | None = None,
) -> Capacity:
    """A replica's capacity from its placement (and optional user targets).

    Batch slots are bounded by the engine's ``maxConcurrency`` and by the KV cache at
    the typical length; the objective decides the target utilization. A user's
    ``runningPerReplica`` replaces the sequences target; ``queuePerReplica`` adds
    tolerated waiting requests on top.
    """
    slots = max(1.0, float(min(max_concurrency, kv_concurrency)))
    rho = OBJECTIVE_UTILIZATION.get(objective, 0.75)
    target = running_per_replica or slots * rho
    if queue_per_replica:
        target += queue_per_replica
    if running_per_replica:
        # The user's sequences per replica set the utilization in GPU time too.
        rho = min(1.0, max(0.05, running_per_replica / slots))
    return Capacity(
        target_running=max(1.0, target),
        prefill_tokens_per_second=prefill_tokens_per_second,
        kv_target=kv_cache_utilization or KV_TARGET.get(objective, 0.80),
        startup_seconds=startup_seconds,
        slo_ttft_seconds=slo_ttft_seconds,
        price_per_replica_hour=price_per_replica_hour,
        decode_tokens_per_second=decode_tokens_per_second,
        utilization=rho,
        slo_percentile=slo_percentile,
        headroom_quantile=HEADROOM_QUANTILE.get(objective, 0.95),
        prior_headroom=PRIOR_HEADROOM.get(objective, 0.3),
    )


def _ceil(x: float) -> int:
    # Tolerate float noise so that 4.0000001 does not become 5.
    return math.ceil(x - 1e-9)


def _work_rate(sample: LoadSample, cap: Capacity) -> float | None:
    """Served work over the rate window, in replicas at full use, or None."""
    gen, prompt = sample.generation_tokens_per_second, sample.prompt_tokens_per_second
    if gen is None and prompt is None:
        return None
    decode = cap.decode_tokens_per_second
    work = 0.0
    if gen is not None and decode > 0:
        work += gen / decode
    elif decode <= 0:
        work += sample.running / max(1.0, cap.target_running / cap.utilization)
    if prompt is not None and cap.prefill_tokens_per_second > 0:
        work += prompt / cap.prefill_tokens_per_second
    return work


def _learned_headroom(
    values: Sequence[float], horizon: float, q: float, level: float, *, seen_twice: bool = False
) -> float:
    """Replicas (at full use) to hold above ``level``: a high quantile, over the minutes
    of history, of how far demand went within ``horizon`` seconds above both that
    minute's level and ``level``. Rises seen from a quiet night count only as far as
    they went above where the DMD is now; a regime change teaches nothing above its
    new level; bursts that repeat teach their height.

    With ``seen_twice``, a rise is held only as high as it went at least twice, more
    than one horizon apart: the minutes before one step all see the same step, and a
    rise seen once is a one-off, not a pattern (a recurring burst is seen again)."""
    span = max(1, _ceil(horizon / 60.0))
    rises = []
    for i, d in enumerate(values[:-1]):
        ahead = max(values[i + 1 : i + 1 + span])
        rises.append((max(0.0, ahead - max(d, level)), i))
    if not rises:
        return 0.0
    rises.sort()
    k = min(len(rises) - 1, int(q * len(rises)))
    if not seen_twice:
        return rises[k][0]
    # The highest rise at or below the quantile reached in two places a span apart:
    # walking down from the top, the first value at which the minutes seen so far
    # (all rising at least that far) are more than a span apart.
    first = last = rises[-1][1]
    for j in range(len(rises) - 1, -1, -1):
        value, i = rises[j]
        first, last = min(first, i), max(last, i)
        if j <= k and last - first > span:
            return value
    return 0.0


def return_risk(values: Sequence[float], level: float, within: int) -> tuple[int, int]:
    """How often demand came back: of the past stretches of minutes with demand at or
    below ``level`` that lasted at least as long as the current one has, how many ended
    (a minute above ``level``) within ``within`` more minutes, and how many there were.

    The stretch a scale-down starts is conditioned on the quiet it has already shown;
    the stretches this DMD's traffic had before are the evidence of how long such quiet
    lasts. A stretch at the start of the history counts as long as it is seen (shorter
    than it was: the safe side)."""
    age = 0
    for v in reversed(values):
        if v > level:
            break
        age += 1
    stretches: list[int] = []
    run = 0
    for v in values[: len(values) - age]:
        if v <= level:
            run += 1
        elif run:
            stretches.append(run)
            run = 0
    alike = [n for n in stretches if n >= age]
    return sum(1 for n in alike if n < age + within), len(alike)


def _paying_scale_down(
    history: History, proposed: int, current: int, cap: Capacity, headroom: float
) -> tuple[int, int, int]:
    """The lowest count in [proposed, current) whose scale-down is expected to last its
    payback time, by this DMD's own history; ``current`` when none is. Also the
    stretches that came back too soon and the stretches judged, for the decision's
    inputs. A count n is left when demand rises above what n carries less the headroom
    held (``n x utilization - headroom``): that is when the recommendation exceeds n."""
    rho = cap.utilization * history.utilization_scale
    within = _ceil(_payback_seconds(cap) / 60.0)
    returned, judged = 0, 0
    for n in range(proposed, current):
        returned, judged = return_risk(history.demand_values, n * rho - headroom, within)
        # One stretch that did not come back is assumed: a single early return is no
        # proof, and no evidence at all lets the scale-down go.
        if returned / (judged + 1) <= RETURN_RISK:
            return n, returned, judged
    return current, returned, judged


def _payback_seconds(cap: Capacity) -> float:
    """How long a scale-down must last to pay for the cold start that would undo it."""
    return max(FLAP_SECONDS, PAYBACK_COLD_STARTS * cap.startup_seconds)


def _judge_scale_down(
    history: History,
    proposed: int,
    current: int,
    cap: Capacity,
    inputs: Mapping[str, float],
    now: float,
) -> DownVerdict:
    """The verdict on a scale-down from ``current`` to ``proposed``: the last one while
    its minute and counts are the same, else judged afresh."""
    minute = int(now // 60)
    cached = history.down_verdict
    if cached is not None and (cached.minute, cached.proposed, cached.current) == (
        minute,
        proposed,
        current,
    ):
        return cached
    allowed, returned, judged = _paying_scale_down(
        history, proposed, current, cap, inputs.get("headroomReplicas", 0.0)
    )
    return DownVerdict(
        minute=minute,
        proposed=proposed,
        current=current,
        allowed=allowed,
        returned=returned,
        judged=judged,
    )


def _remember_demand(history: History, now: float, demand: float, cap: Capacity) -> History:
    """Record the minute's peak demand; once a minute, learn the demand to be ready
    for above the current level."""
    minute = int(now // 60)
    values = history.demand_values
    learned, rise = history.learned_peak, history.learned_rise
    if values and history.demand_minute == minute:
        if demand > values[-1]:
            values = array("f", values)
            values[-1] = demand
    else:
        values = array("f", values[max(0, len(values) + 1 - LEARN_MINUTES) :])
        values.append(demand)
        # Once a minute: cheap enough for thousands of DMDs per pass.
        horizon = max(cap.startup_seconds, FLAP_SECONDS)
        if len(values) >= LEARN_MIN_MINUTES:
            rise = _learned_headroom(
                values, horizon, cap.headroom_quantile, demand, seen_twice=True
            )
            learned = demand + rise
        elif len(values) >= 2:
            # Too few minutes for the quantile: the largest rise seen so far estimates
            # it from above (the largest of n samples sits near the 1 - 1/(n+1)
            # quantile), and the objective's prior stays the floor. A burst in the
            # first minutes is held from then on, not learned again at minute 20.
            seen = _learned_headroom(values, horizon, 1.0, demand)
            learned = demand + max(seen, cap.prior_headroom * max(demand, 1.0))
    return replace(
        history,
        demand_minute=minute,
        demand_values=values,
        learned_peak=learned,
        learned_rise=rise,
    )


def recommend(
    sample: LoadSample,
    history: History,
    cap: Capacity,
    cluster: Cluster,
    now: float,
) -> tuple[int, str, dict[str, float], History]:
    """Replicas the load asks for, before damping and limits; why; and the history."""
    inputs: dict[str, float] = {
        "running": round(sample.running, 3),
        "waiting": round(sample.waiting, 3),
    }
    served = _work_rate(sample, cap)
    done = sample.completions_per_second
    measured = served / done if served and done else None
    prompt = sample.prompt_tokens_per_second
    work, prefill = _per_request(sample, history, cap, measured, now)
    # The queue's growth over the window: work that arrived and was not served.
    past = [q for q in history.queue if q[0] <= now - RATE_WINDOW * 0.75]
    growth = 0.0
    if past and work is not None:
        then, waited = past[-1]
        growth = (sample.waiting - waited) / max(1.0, sample.time - then)
    if served is None:
        served = sample.running / max(1.0, cap.target_running / cap.utilization)
    demand = max(0.0, served + growth * (work or 0.0))
    history = replace(history, work_per_request=work, prefill_per_request=prefill)
    history = _remember_demand(history, now, demand, cap)
    # The demand to be ready for: learned from history (a rise above the level the
    # minute started at can only be smaller from a higher level, so the learned peak,
    # not level + headroom, is what holds within the minute).
    learned = history.learned_peak
    if history.learned_rise is None or learned is None:
        # Young: the prior share above the current level, or the largest rise seen.
        peak = max(learned or 0.0, demand + cap.prior_headroom * max(demand, 1.0))
    else:
        peak = learned
    ready_for = max(demand, peak)
    headroom = ready_for - demand
    rho = cap.utilization * history.utilization_scale
    backlog = _backlog_replicas(sample, cap, work if work is not None else measured)
    # Prompts wait for the prefills ahead of them: the prompt work is held at the
    # utilization that keeps that wait within the SLO's slack.
    # (A prefill time is measured only when the placement has a prefill capacity.)
    rho_prefill, prompt_demand = 1.0, 0.0
    if prefill and prompt is not None:
        rho_prefill = prefill_utilization(prefill, cap.slo_ttft_seconds, cap.slo_percentile)
        prompt_demand = prompt / cap.prefill_tokens_per_second
    # One reserve: the backlog's replicas are the headroom once it has drained.
    want = max(demand / rho, prompt_demand / rho_prefill) + max(headroom / rho, backlog)
    inputs.update(
        {
            "demandReplicas": round(demand, 3),
            "workPerRequestSeconds": round(work or 0.0, 4),
            "queueGrowthPerSecond": round(growth, 3),
            "headroomReplicas": round(headroom, 3),
            "backlogReplicas": round(backlog, 3),
            "targetRunningPerReplica": round(cap.target_running, 3),
            "utilizationScale": round(history.utilization_scale, 3),
        }
    )
    if rho_prefill < 1.0:
        inputs["prefillSecondsPerRequest"] = round(prefill or 0.0, 4)
        inputs["prefillUtilization"] = round(rho_prefill, 3)
    if sample.prompt_tokens_per_second is not None:
        inputs["promptTokensPerSecond"] = round(sample.prompt_tokens_per_second, 1)
    if sample.generation_tokens_per_second is not None:
        inputs["generationTokensPerSecond"] = round(sample.generation_tokens_per_second, 1)
    if done is not None:
        inputs["completionsPerSecond"] = round(done, 3)
    candidates: list[tuple[int, str]] = [(_ceil(want), "demand" if backlog < 0.5 else "backlog")]
    if sample.kv_usage is not None and cluster.ready > 0:
        inputs["kvUsage"] = round(sample.kv_usage, 4)
        candidates.append((_ceil(cluster.ready * sample.kv_usage / cap.kv_target), "kv-cache"))
    if sample.ttft_percentile is not None:
        inputs["ttftPercentile"] = round(sample.ttft_percentile, 4)
    history = _ttft_guard(sample, history, cap, cluster, now, demand=demand, rho=rho, want=want)
    if now <= history.guard_until and history.guard_added > 0:
        inputs["ttftGuardReplicas"] = float(history.guard_added)
        candidates.append((_ceil(want) + history.guard_added, "ttft-slo"))
    value, reason = max(candidates, key=lambda c: c[0])
    return value, reason, inputs, history


def prefill_utilization(prefill_seconds: float, slo_seconds: float, percentile: float) -> float:
    """The share of a replica's time its prompts may take so that no more than the
    SLO's allowance of the requests that can meet it alone miss it waiting for the
    prefills ahead of them (first come, first served).

    A replica taking prompts of mean prefill time ``S`` at utilization ``rho`` makes a
    prompt wait longer than ``t`` with probability about ``rho x exp(-(1 - rho) t /
    S)`` (the single-server queue with exponential service). A prompt of prefill time
    ``s`` misses when it waits longer than ``slo - s``; over prompts whose prefill
    times are exponential with mean ``S`` and below the SLO (long-prompt tails are at
    least that spread), the share that misses is ``(exp(-(1 - rho) x) - exp(-x)) / (1
    - exp(-x))`` with ``x = slo / S``; set to the allowance ``a`` and solved:

        rho = 1 + ln(a + (1 - a) exp(-x)) / x

    Short prompts (``x`` large) allow nearly full use; prompts near the SLO little,
    never below ``PREFILL_UTILIZATION_FLOOR``."""
    if prefill_seconds <= 0:
        return 1.0
    allowed = min(0.5, max(1e-3, 1.0 - percentile / 100.0))
    x = slo_seconds / prefill_seconds
    rho = 1.0 + math.log(allowed + (1.0 - allowed) * math.exp(-x)) / x
    return min(1.0, max(PREFILL_UTILIZATION_FLOOR, rho))


def _per_request(
    sample: LoadSample, history: History, cap: Capacity, measured: float | None, now: float
) -> tuple[float | None, float | None]:
    """The smoothed work of a mean request (replica-seconds at full use) and its prefill
    time (seconds of one replica's prefill), from this window's served work over its
    finished requests."""
    work, prefill = history.work_per_request, history.prefill_per_request
    done, prompt = sample.completions_per_second, sample.prompt_tokens_per_second
    started = history.started if history.started is not None else now
    if measured is None or not done or now - started < RATE_WINDOW:
        return work, prefill
    # Served work over finished requests is biased high while the window is young (the
    # short requests finish first): trust it after one window, and weigh each new
    # measurement by the completions it rests on.
    weight = min(WORK_SMOOTHING, done * RATE_WINDOW / WORK_PRIOR_REQUESTS)
    work = measured if work is None else work + weight * (measured - work)
    if prompt is not None and cap.prefill_tokens_per_second > 0:
        seconds = prompt / done / cap.prefill_tokens_per_second
        prefill = seconds if prefill is None else prefill + weight * (seconds - prefill)
    return work, prefill


def _backlog_replicas(sample: LoadSample, cap: Capacity, work: float | None) -> float:
    """Replicas kept busy by the queue, on top of the demand.

    Each waiting request needs a slot; with a measured work per request (early: biased
    high, so safe), no more than drains the queue within two cold starts (replicas
    added for a backlog serve after one; the backlog's own demand is already in the
    queue's growth). Requests held before the engines (a router's queue) go to whichever
    replica is free. Those in an engine's own queue are served by that engine alone:
    each replica with a queue is at most one replica busy with it, and replicas added
    for it would only take new arrivals, which the demand already counts."""

    def drained(waiting: float) -> float:
        replicas = waiting / max(1.0, cap.target_running)
        if work is not None:
            drain = DRAIN_COLD_STARTS * max(1.0, cap.startup_seconds)
            replicas = min(replicas, waiting * work / drain)
        return replicas

    backlog = drained(sample.waiting)
    if sample.queued_replicas is not None:
        held = min(max(0.0, sample.held), sample.waiting)
        backlog = min(backlog, drained(held) + sample.queued_replicas)
    return backlog


def _ttft_guard(
    sample: LoadSample,
    history: History,
    cap: Capacity,
    cluster: Cluster,
    now: float,
    *,
    demand: float,
    rho: float,
    want: float,
) -> History:
    """The TTFT guard: a proven SLO breach under contention adds replicas for an
    episode and, when the capacity asked for was serving, lowers the utilization target;
    an SLO met relaxes it again. A breach that persists once the step's replicas have
    served for a rate window earns one more step (a long-prompt tail that one step does
    not cure); a breach while they start earns nothing."""
    share = share_above_bounds(sample.ttft_buckets, cap.slo_ttft_seconds, sample.ttft_sum)
    proven = share is not None and share.proves_breach(cap.slo_percentile)
    current = max(cluster.current, 0)
    elapsed = 0.0 if history.last_time is None else max(0.0, now - history.last_time)
    history = replace(history, last_time=now)
    # Contention: requests wait, or the ready replicas are at least half busy (a long
    # prompt in prefill delays the requests behind it while vLLM counts them running).
    # A breach without it is requests slow on their own: more replicas would not help.
    # Requests that share a replica slow each other's first token too (a prefill runs
    # beside the others' decode): more sequences running than replicas is contention.
    contended = (
        sample.waiting > 0
        or demand >= GUARD_MIN_LOAD * max(cluster.ready, 1) * rho
        or sample.running > cluster.ready
    )
    if history.guard_ready_since is None and cluster.ready >= history.guard_ready_needed:
        history = replace(history, guard_ready_since=now)
    above = share.low if share is not None else 1.0
    if proven and contended:
        new_episode = now > history.guard_until
        # Within an episode, a step is judged only once its replicas serve and a whole
        # rate window of TTFT has been measured with them: never on the backlog's tail;
        # and only if that step helped (requests slow on their own are not).
        since = history.guard_ready_since
        step_served = since is not None and now - since >= RATE_WINDOW
        # A backlog's requests report their TTFT after it drains: only a window with no
        # queue at all judges the step.
        no_queue = sample.waiting == 0 and all(
            w == 0 for t, w in history.queue if t > now - RATE_WINDOW
        )
        helped = no_queue and above < history.guard_share * GUARD_HELPED
        if new_episode or (step_served and helped):
            # A quarter of the ready replicas per 5% missed, up to doubling,
            # less those already starting; and when the load explains the breach (the
            # ready replicas carry more than their target), less those the load asks
            # for now: the demand's own replicas mend it, and the guard never adds on
            # top of them. A breach the load does not explain (long prompts slow on a
            # replica the model calls half busy) gets its whole step.
            overloaded = demand > cluster.ready * rho
            coming = (max(current, _ceil(want)) if overloaded else current) - cluster.ready
            # Sized by the share missed, never finer than GUARD_SEVERITY_UNIT: under a
            # p99 SLO 4% of requests over is not four times the trouble of 1%.
            unit = max(GUARD_SEVERITY_UNIT, 1.0 - cap.slo_percentile / 100.0)
            severity = min(GUARD_MAX_SEVERITY, max(1.0, above / unit))
            step = max(1, _ceil(GUARD_STEP * severity * max(cluster.ready, 1)))
            added = max(0, step - max(0, coming))
            history = replace(
                history,
                guard_added=added + (0 if new_episode else history.guard_added),
                # The step is judged once every replica asked for serves.
                guard_ready_needed=cluster.ready + max(0, coming) + added,
                guard_ready_since=None,
                guard_share=above,
            )
            if cluster.ready >= _ceil(want):
                # The capacity the model asks for was serving and the SLO broke anyway:
                # this traffic needs a lower utilization. (A breach while replicas the
                # model asked for are still starting teaches nothing about utilization.)
                scale = max(UTILIZATION_FLOOR, history.utilization_scale * BREACH_BACKOFF)
                history = replace(history, utilization_scale=scale)
        history = replace(history, guard_until=now + GUARD_CLEAR_SECONDS)
    else:
        bounds = attainment_bounds(sample.ttft_buckets, cap.slo_ttft_seconds)
        if bounds is not None and bounds[0] >= cap.slo_percentile / 100.0:
            scale = min(1.0, history.utilization_scale + RELAX_PER_MINUTE * elapsed / 60.0)
            history = replace(history, utilization_scale=scale)
    return history


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
    down_window = max(limits.scale_down_stabilization, 2.0 * cap.startup_seconds)
    keep = max(down_window, limits.scale_up_stabilization, RATE_WINDOW * 2) + 1
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
    raw, reason, inputs, history = recommend(sample, history, cap, cluster, now)
    history = history.add(sample, now, keep).recommend(now, raw)

    # Damping: up at once (or the min over its window), down only when the highest
    # recommendation over the down window is lower, and only past a tolerance.
    up = [v for t, v in history.recommendations if t >= now - limits.scale_up_stabilization]
    down = [v for t, v in history.recommendations if t >= now - down_window]
    started = history.started if history.started is not None else now
    if started > now - down_window:
        # History shorter than the window (a restart): what runs now is the evidence.
        down.append(current)
    if raw > current:
        target = min(up) if limits.scale_up_stabilization > 0 else raw
        target = max(target, current)
        if limits.scale_up_max_step:
            target = min(target, current + limits.scale_up_max_step)
    elif raw < current:
        target = max(down) if down else current
        target = min(target, current)
        # Hysteresis: the lower count must carry the load with some room left.
        if target < current and inputs.get("demandReplicas", 0.0) / cap.utilization > target * (
            1 - DOWN_TOLERANCE
        ):
            target = current
        if limits.scale_down_max_step:
            target = max(target, current - limits.scale_down_max_step)
        if target < current:
            verdict = _judge_scale_down(history, target, current, cap, inputs, now)
            history = replace(history, down_verdict=verdict)
            target = verdict.allowed
            inputs["quietStretchesReturned"] = float(verdict.returned)
            inputs["quietStretchesJudged"] = float(verdict.judged)
            if target < current:
                reason = f"{reason} (lower for {down_window:.0f}s)"
            else:
                reason = (
                    f"holding: demand came back within {_payback_seconds(cap):.0f}s in "
                    f"{verdict.returned} of {verdict.judged} quiet stretches like this one"
                )
        else:
            reason = "stabilizing before scale-down"
    else:
        target = current

    limited_by: Limit | None = None
    bounded = max(limits.min_replicas, min(limits.max_replicas, target))
    if target > limits.max_replicas:
        limited_by = Limit("MaxReplicas", f"maxReplicas {limits.max_replicas}")
    if limits.max_cost_per_hour is not None and cap.price_per_replica_hour > 0:
        affordable = int(limits.max_cost_per_hour // cap.price_per_replica_hour)
        if bounded > affordable:
            # minReplicas is the floor the user asked for, even above the budget.
            bounded = max(affordable, limits.min_replicas)
            source = f" ({limits.budget_source})" if limits.budget_source else ""
            limited_by = Limit(
                "BudgetLimited",
                f"budget {limits.max_cost_per_hour:g}/h{source} affords {affordable} "
                f"replicas at {cap.price_per_replica_hour:g}/h",
            )
    if cluster.unschedulable > 0 and bounded > current:
        bounded = current
        limited_by = Limit(
            "Unschedulable",
            f"{cluster.unschedulable} pod(s) unschedulable: {cluster.unschedulable_reason}",
        )
    inputs["recommendation"] = raw
    return Decision(
        desired=bounded,
        reason=reason,
        limited_by=limited_by,
        metrics_available=True,
        recommendation=raw,
        inputs=inputs,
        history=history,
    )


def from_zero(
    decision: Decision, router_queue: float | None, limits: Limits, current: int
) -> Decision:
    """Scale from zero: a DMD at zero replicas has no engine metrics, so ``decide`` holds
    it there; requests waiting at the router (its queue for the DMD's pool, or the DMD's
    ``demandQuery``) wake it to at least one replica. Unknown demand (None) holds: at
    zero there is nothing to lose by waiting for evidence."""
    if current > 0 or router_queue is None or router_queue <= 0:
        return decision
    wake = max(1, limits.min_replicas)
    if limits.max_replicas < wake:
        return decision
    inputs = {**decision.inputs, "routerQueue": round(router_queue, 1)}
    return replace(
        decision,
        desired=max(decision.desired, wake),
        reason=f"scale from zero: {router_queue:g} requests wait at the router",
        inputs=inputs,
    )


@dataclass(frozen=True, kw_only=True)
class SharedBudget:
    """An hourly budget several DMDs share (the tiers of a ReasoningRoute)."""

    name: str  # what it is, for the limit's message: "route r1's shared budget"
    max_cost_per_hour: float
    members: tuple[tuple[str, str], ...]


def within_shared_budget(
    limits: Limits, budget: SharedBudget, others_cost_per_hour: float
) -> Limits:
    """``limits`` with the budget left to this member once the others' current cost is
    paid: the tighter of that and the DMD's own budget."""
    left = max(0.0, budget.max_cost_per_hour - others_cost_per_hour)
    own = limits.max_cost_per_hour
    if own is not None and own <= left:
        return limits
    return replace(
        limits,
        max_cost_per_hour=left,
        budget_source=f"{budget.name}: {budget.max_cost_per_hour:g}/h, "
        f"{others_cost_per_hour:g}/h used by the other tiers",
    )
