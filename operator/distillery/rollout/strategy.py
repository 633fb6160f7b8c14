"""How a new revision replaces the running one (pure).

A revision is the hash of the rendered pod template: a commit that changes the model
revision, quantization, engine, image or arguments makes a new one. :func:`decide` is
level-triggered like the reconciler that calls it: from the DMD's rollout settings, the
live stable and canary Deployments, the pods of each revision, the last analysis and the
state recorded in ``status.rollout``, it says how many replicas each track runs, whether
the stable Deployment takes the new template, and what ``status.rollout`` says now.
Everything needed to go on is in ``status.rollout`` (phase, step, when the step's canary
became ready), so a restarted operator resumes at the same step.

``RollingUpdate``: the stable Deployment takes the new template and rolls with a surge
counted in GPUs (``maxSurgeGPUs``, default one replica). When a surge pod cannot be
scheduled (no spare GPU) the Deployment is switched to one-at-a-time replacement
(``maxSurge: 0, maxUnavailable: 1``) until the rollout completes: slower and one replica
short for a while, but it finishes instead of hanging.

``Canary``: the new revision runs as a second Deployment (``<name>-canary``, pods labelled
``distillery.dev/track: canary``) behind the same Service, so traffic follows the replica
ratio. Each step sets the canary's share of the replicas, waits until the canary is
ready, pauses, and asks the analysis (:mod:`distillery.rollout.analysis`). A pass moves
to the next step; after the last, the stable Deployment takes the new template, and the
canary is retired as the stable one's new pods become ready (replica for replica, so a
cluster without spare GPUs still completes). A failure scales the canary to zero at once
and leaves the stable revision serving everything: ``phase: RolledBack`` until a new
revision is committed, or a person annotates ``distillery.dev/rollout`` with ``retry``,
``promote`` or ``abort``.

The autoscaler sets the total (``spec.replicas``); this module only splits it, so the
capacity held at the SLO counts both revisions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from distillery.api.conditions import parse_rfc3339, rfc3339
from distillery.api.events import Event
from distillery.api.types import CanaryAnalysisStatus, RolloutSpec, RolloutStatus, clip
from distillery.rollout.analysis import Criteria, Measurement, Verdict, judge

COMMAND_ANNOTATION = "distillery.dev/rollout"
COMMANDS = ("promote", "abort", "retry")
STABLE, PROGRESSING, PROMOTING, ROLLED_BACK = "Stable", "Progressing", "Promoting", "RolledBack"
# A measurement whose window starts this much before the step's start still counts:
# the analysis loop and the reconciler read clocks a moment apart.
WINDOW_SLACK_SECONDS = 5.0


@dataclass(frozen=True)
class TrackState:
    """One Deployment (stable or canary) and its pods, as the rollout needs them."""

    revision: str | None  # the pod template revision it was last given
    spec_replicas: int | None
    replicas: int = 0
    ready: int = 0
    updated: int = 0
    generation: int = 0
    observed_generation: int = 0
    deadline_exceeded: bool = False
    one_at_a_time: bool = False  # its strategy is maxSurge 0
    new_ready: int = 0  # ready pods of the desired revision
    new_unschedulable: int = 0  # pods of the desired revision the scheduler cannot place
    unschedulable_message: str = ""

    def rolling(self) -> bool:
        """The Deployment controller is still replacing pods of an older template."""
        return self.observed_generation < self.generation or self.updated < self.replicas

    def surge_blocked(self, revision: str) -> bool:
        """Rolling to ``revision`` one replica at a time: already switched, or a pod of it
        cannot be scheduled (no spare GPU for a surge)."""
        return self.revision == revision and (self.one_at_a_time or self.new_unschedulable > 0)

    def settled(self, count: int) -> bool:
        """Runs exactly ``count`` up-to-date, ready replicas."""
        return (
            self.observed_generation >= self.generation
            and self.updated >= count
            and self.replicas <= count
            and self.ready >= count
        )


@dataclass(frozen=True)
class RolloutInput:
    spec: RolloutSpec
    desired_revision: str
    total: int  # replicas the DMD should run, both tracks together
    stable: TrackState | None
    canary: TrackState | None
    status: RolloutStatus  # the recorded status.rollout
    now: str  # RFC 3339
    criteria: Criteria | None = None
    measurement: Measurement | None = None
    analysis_configured: bool = True  # False: no Prometheus, steps advance on pauses
    command: str | None = None


@dataclass(frozen=True, kw_only=True)
class RolloutDecision:
    stable_replicas: int
    status: RolloutStatus
    progressing: tuple[bool, str, str]  # RolloutProgressing: status, reason, message
    canary_replicas: int = 0  # 0 retires the canary Deployment
    stable_takes_desired: bool = True  # False: the stable Deployment keeps its template
    one_at_a_time: bool = False  # render the stable Deployment with maxSurge 0
    events: tuple[Event, ...] = ()


def canary_split(total: int, weight: int) -> tuple[int, int]:
    """(stable, canary) replicas for a step's weight: the canary gets its share rounded
    up, at least one; the stable keeps at least one until the weight is 100."""
    if total <= 0:
        return 0, 0
    canary = min(max(1, math.ceil(total * weight / 100)), total)
    if weight >= 100:
        return 0, canary
    if total >= 2:
        canary = min(canary, total - 1)
    # One replica in all: the canary is a surge of one next to it.
    return max(1, total - canary), canary


def decide(inp: RolloutInput) -> RolloutDecision:
    """Split the replicas between the tracks and advance the rollout by what is seen."""
    if inp.spec.strategy == "Canary" and inp.spec.canary is not None:
        return _canary(inp)
    return _rolling(inp)


def route_weights(spec: RolloutSpec, decision: RolloutDecision) -> tuple[int, int]:
    """(stable, canary) HTTPRoute weights. A step's exact weight once its canary is
    ready (before that, the previous step's: a backend without ready pods would fail
    its share); during promotion, by replicas, as both tracks run the new revision."""
    status = decision.status
    if status.phase == PROMOTING:
        total = decision.stable_replicas + decision.canary_replicas
        return (
            (100, 0)
            if total == 0
            else (
                round(100 * decision.stable_replicas / total),
                round(100 * decision.canary_replicas / total),
            )
        )
    if status.phase != PROGRESSING or spec.canary is None or status.step is None:
        return 100, 0
    index = status.step - 1 if status.step_started_at else status.step - 2
    weight = spec.canary.steps[index].weight if index >= 0 else 0
    return 100 - weight, weight


def _with(status: RolloutStatus, **fields: Any) -> RolloutStatus:
    """``status`` with ``fields`` (snake_case names) replaced, its message clipped to
    what the API server takes."""
    out = status.model_copy(update=fields)
    if out.message is not None and out.message != clip(out.message):
        out = out.model_copy(update={"message": clip(out.message)})
    return out


def _overlaid(base: RolloutStatus, over: RolloutStatus) -> RolloutStatus:
    """``base`` with every field ``over`` sets."""
    return _with(base, **{k: v for k, v in over if v is not None})


# ---- RollingUpdate -----------------------------------------------------------------------


def _rolling(inp: RolloutInput) -> RolloutDecision:
    old, stable, n, rev = inp.status, inp.stable, inp.total, inp.desired_revision
    events: list[Event] = []
    if inp.command is not None:
        events.append(
            Event(
                "Warning",
                "RolloutCommandIgnored",
                f"{COMMAND_ANNOTATION}={inp.command}: only Canary rollouts take commands",
            )
        )
    canary = _retire(inp.canary, stable, n)
    # Right after an apply the controller has not counted the new pods yet: a generation
    # it has not observed is a rollout only if the recorded revision is another one.
    # A rolling update under way is complete when every replica runs the new revision
    # and is ready, as `kubectl rollout status` waits for; a scale-up is never a rollout.
    rolling = old.phase == PROGRESSING and old.canary_revision == rev
    in_flight = stable is not None and (
        stable.updated < stable.replicas
        or (stable.observed_generation < stable.generation and old.stable_revision != rev)
        or (rolling and stable.ready < stable.replicas)
    )
    if stable is None or (stable.revision == rev and not in_flight):
        settled = RolloutStatus(strategy="RollingUpdate", phase=STABLE, stable_revision=rev)
        if old.phase == PROGRESSING and old.strategy == "RollingUpdate":
            events.append(Event("Normal", "RolloutComplete", f"all replicas run revision {rev}"))
        return RolloutDecision(
            stable_replicas=n,
            canary_replicas=canary,
            status=settled,
            progressing=(False, "RolloutComplete", f"serving {rev}"),
            events=tuple(events),
        )
    # The stable Deployment rolls to the desired revision (or is about to).
    previous = old.stable_revision if old.stable_revision != rev else None
    if previous is None and stable.revision != rev:
        previous = stable.revision
    fallback = stable.surge_blocked(rev)
    updated = stable.updated if stable.revision == rev else 0
    how = "one replica at a time (no spare GPU for a surge pod)" if fallback else "with surge"
    message = f"rolling to {rev} {how}: {updated}/{n} replicas updated"
    status = _with(
        RolloutStatus(strategy="RollingUpdate", phase=PROGRESSING),
        stable_revision=previous,
        canary_revision=rev,
        message=message,
    )
    if old.phase != PROGRESSING or old.canary_revision != rev:
        events.append(Event("Normal", "RolloutStarted", f"rolling update to revision {rev}"))
    if fallback and not stable.one_at_a_time:
        events.append(
            Event(
                "Warning",
                "SurgeUnschedulable",
                f"a surge pod cannot be scheduled ({stable.unschedulable_message or 'no GPU'}):"
                " replacing one replica at a time",
            )
        )
    return RolloutDecision(
        stable_replicas=n,
        canary_replicas=canary,
        one_at_a_time=fallback,
        status=status,
        progressing=(True, "RollingUpdate", message),
        events=tuple(events),
    )


def _retire(canary: TrackState | None, stable: TrackState | None, total: int) -> int:
    """A canary left over (strategy changed, revision reverted) serves until the stable
    Deployment holds the full count again."""
    if canary is None or not canary.spec_replicas:
        return 0
    if stable is not None and stable.ready >= total:
        return 0
    return canary.spec_replicas


# ---- Canary ------------------------------------------------------------------------------


def _canary(inp: RolloutInput) -> RolloutDecision:
    old, stable, rev = inp.status, inp.stable, inp.desired_revision
    assert inp.spec.canary is not None
    steps = inp.spec.canary.steps
    phase = old.phase
    same = old.canary_revision == rev
    settled = RolloutStatus(strategy="Canary", phase=STABLE, stable_revision=rev)
    if stable is None or stable.revision is None:
        # First deployment: nothing to compare a canary with.
        return RolloutDecision(
            stable_replicas=inp.total,
            status=settled,
            progressing=(False, "RolloutComplete", f"serving {rev}"),
        )
    if stable.revision == rev and not (phase == PROMOTING and same):
        return _canary_settled(inp)
    if inp.total == 0:
        # Scaled to zero: no traffic to compare, nothing to protect. The new revision is
        # taken as is, and the next scale-up starts on it.
        message = f"scaled to zero: revision {rev} taken without a canary"
        return RolloutDecision(
            stable_replicas=0,
            status=_with(settled, message=message),
            progressing=(False, "RolloutComplete", message),
            events=(Event("Normal", "RolloutComplete", message),)
            if old.stable_revision != rev
            else (),
        )
    if phase == PROMOTING and same:
        return _promoting(inp)
    if phase == ROLLED_BACK and same:
        if inp.command == "retry":
            return _start(inp, "retry requested")
        if inp.command == "promote":
            return _promote(inp, old, [], "promote requested after rollback")
        return _rolled_back(inp)
    if phase == PROGRESSING and same and old.step is not None:
        step = max(1, min(old.step, len(steps)))
        return _progress(inp, step)
    return _start(inp, None)


def _base(inp: RolloutInput, stable_revision: str | None) -> RolloutStatus:
    assert inp.spec.canary is not None
    return RolloutStatus(
        strategy="Canary",
        stable_revision=stable_revision,
        canary_revision=inp.desired_revision,
        steps=len(inp.spec.canary.steps),
        last_analysis=inp.status.last_analysis,
        verdict=inp.status.verdict,
    )


def _start(inp: RolloutInput, why: str | None) -> RolloutDecision:
    assert inp.stable is not None
    old = inp.status
    stable_rev = old.stable_revision or inp.stable.revision
    if old.phase in (STABLE, None) or stable_rev == inp.desired_revision:
        stable_rev = inp.stable.revision
    status = _with(_base(inp, stable_rev), last_analysis=None, verdict=None)
    events = [
        Event(
            "Normal",
            "RolloutStarted",
            f"canary of revision {inp.desired_revision} against {stable_rev}"
            + (f" ({why})" if why else ""),
        )
    ]
    return _progress(inp, 1, status=status, events=events, fresh=True)


def _progress(
    inp: RolloutInput,
    step: int,
    *,
    status: RolloutStatus | None = None,
    events: list[Event] | None = None,
    fresh: bool = False,
) -> RolloutDecision:
    assert inp.spec.canary is not None and inp.stable is not None
    old = inp.status
    steps = inp.spec.canary.steps
    status = status if status is not None else _base(inp, old.stable_revision)
    events = events if events is not None else []
    if inp.command == "abort":
        return _roll_back(inp, status, events, "Aborted", f"{COMMAND_ANNOTATION}=abort")
    if inp.command == "promote":
        return _promote(inp, status, events, "promote requested")
    if inp.command == "retry":
        events.append(
            Event("Warning", "RolloutCommandIgnored", "retry: the rollout is already running")
        )
    canary, stable, n = inp.canary, inp.stable, inp.total
    weight = steps[step - 1].weight
    pause = steps[step - 1].pause_seconds
    stable_n, canary_n = canary_split(n, weight)
    if canary is not None and canary.revision == inp.desired_revision and canary.deadline_exceeded:
        return _roll_back(
            inp,
            status,
            events,
            "CanaryNotReady",
            f"the canary Deployment exceeded its progress deadline with "
            f"{canary.ready}/{canary_n} replicas ready",
        )
    ready = (
        canary is not None
        and canary.revision == inp.desired_revision
        and canary.observed_generation >= canary.generation
        and canary.new_ready >= canary_n
    )
    started_at = None if fresh else old.step_started_at
    if ready and started_at is None:
        started_at = inp.now
    if started_at is None:
        # Until the canary is ready the stable track keeps what it runs (never more than
        # the total): capacity first. A canary that cannot be scheduled gets the GPUs the
        # stable track would give up at this step.
        squeezed = canary is not None and canary.new_unschedulable > 0
        held = min(n, stable.spec_replicas if stable.spec_replicas is not None else n)
        stable_target = stable_n if squeezed else max(stable_n, held)
        message = (
            f"step {step}/{len(steps)}: waiting for {canary_n} canary replica(s) "
            f"({canary.new_ready if canary else 0} ready)"
        )
        if squeezed and canary is not None:
            message += f"; unschedulable: {canary.unschedulable_message}"
        status = _at_step(status, step, stable_target, canary_n, None, message)
        return _decision(status, stable_target, canary_n, events, message)

    elapsed = parse_rfc3339(inp.now) - parse_rfc3339(started_at)
    m = inp.measurement
    usable = (
        m is not None
        and m.revision == inp.desired_revision
        and m.step == step
        and m.start >= parse_rfc3339(started_at) - WINDOW_SLACK_SECONDS
    )
    verdict: Verdict | None = None
    if usable and m is not None and inp.criteria is not None:
        verdict = judge(m, inp.criteria)
        status = _with(
            status, last_analysis=_analysis_status(m, verdict, step), verdict=verdict.result
        )
        if verdict.result == "Fail":
            return _roll_back(inp, status, events, "AnalysisFailed", verdict.message)
    covers = usable and m is not None and m.end >= parse_rfc3339(started_at) + pause - 1
    if elapsed < pause:
        # The end of the pause, not the time left: the same text every pass, so a pause
        # costs no status writes.
        until = rfc3339(parse_rfc3339(started_at) + pause)
        message = f"step {step}/{len(steps)} at {weight}%: pausing until {until}"
    elif not inp.analysis_configured:
        return _advance(inp, status, events, step, "no Prometheus configured: pause elapsed")
    elif verdict is not None and verdict.result == "Pass" and covers:
        return _advance(inp, status, events, step, verdict.message)
    elif verdict is not None and verdict.result == "Inconclusive":
        message = f"step {step}/{len(steps)} held: {verdict.message}"
    else:
        message = f"step {step}/{len(steps)}: waiting for the analysis of the full pause"
    status = _at_step(status, step, stable_n, canary_n, started_at, message)
    return _decision(status, stable_n, canary_n, events, message)


def _at_step(
    status: RolloutStatus,
    step: int,
    stable_n: int,
    canary_n: int,
    started_at: str | None,
    message: str,
) -> RolloutStatus:
    total = stable_n + canary_n
    return _with(
        status,
        phase=PROGRESSING,
        step=step,
        weight=round(100 * canary_n / total) if total else 0,
        stable_replicas=stable_n,
        canary_replicas=canary_n,
        step_started_at=started_at,
        message=message,
    )


def _decision(
    status: RolloutStatus,
    stable_n: int,
    canary_n: int,
    events: list[Event],
    message: str,
) -> RolloutDecision:
    return RolloutDecision(
        stable_replicas=stable_n,
        canary_replicas=canary_n,
        stable_takes_desired=False,
        status=status,
        progressing=(True, "CanaryStep", message),
        events=tuple(events),
    )


def _advance(
    inp: RolloutInput,
    status: RolloutStatus,
    events: list[Event],
    step: int,
    why: str,
) -> RolloutDecision:
    assert inp.spec.canary is not None
    steps = inp.spec.canary.steps
    events.append(Event("Normal", "CanaryStepPassed", f"step {step}/{len(steps)} passed: {why}"))
    if step >= len(steps):
        return _promote(inp, status, events, "all steps passed")
    nxt = replace(inp, status=_with(status, step_started_at=None))
    return _progress(nxt, step + 1, status=status, events=events, fresh=True)


def _promote(
    inp: RolloutInput,
    status: RolloutStatus,
    events: list[Event],
    why: str,
) -> RolloutDecision:
    events.append(Event("Normal", "Promoting", f"promoting revision {inp.desired_revision}: {why}"))
    status = _with(status, phase=PROMOTING, step_started_at=None)
    decision = _promoting(replace(inp, status=status, command=None))
    return replace(
        decision,
        events=tuple(events) + decision.events,
    )


def _promoting(inp: RolloutInput) -> RolloutDecision:
    """The stable Deployment takes the new template; the canary gives up one replica for
    each new stable replica that is ready (and one more when a new stable pod cannot be
    scheduled, so the GPUs it holds go to the stable track)."""
    assert inp.stable is not None
    stable, canary, n, rev = inp.stable, inp.canary, inp.total, inp.desired_revision
    status = _overlaid(_base(inp, inp.status.stable_revision), inp.status)
    events: list[Event] = []
    if inp.command is not None:
        events.append(
            Event("Warning", "RolloutCommandIgnored", f"{inp.command}: the rollout is promoting")
        )
    current = (canary.spec_replicas or 0) if canary is not None else 0
    on_new = stable.new_ready if stable.revision == rev else 0
    canary_n = max(0, min(current, n - on_new))
    if stable.revision == rev and stable.new_unschedulable > 0 and canary_n > 0:
        canary_n = min(canary_n, current - 1)
    if stable.revision == rev and stable.settled(n) and on_new >= n:
        canary_n = 0
    if (
        stable.revision == rev
        and stable.settled(n)
        and canary_n == 0
        and (canary is None or canary.replicas == 0 or canary.spec_replicas == 0)
    ):
        events.append(Event("Normal", "Promoted", f"revision {rev} is stable"))
        return RolloutDecision(
            stable_replicas=n,
            status=_stable_after(status, rev, message=f"promoted {rev}"),
            progressing=(False, "RolloutComplete", f"serving {rev}"),
            events=tuple(events),
        )
    message = f"promoting {rev}: {on_new}/{n} stable replicas on the new revision"
    status = _with(
        status,
        phase=PROMOTING,
        stable_replicas=n,
        canary_replicas=canary_n,
        weight=None,
        step_started_at=None,
        message=message,
    )
    fallback = stable.surge_blocked(rev)
    return RolloutDecision(
        stable_replicas=n,
        canary_replicas=canary_n,
        one_at_a_time=fallback,
        status=status,
        progressing=(True, "Promoting", message),
        events=tuple(events),
    )


def _stable_after(old: RolloutStatus, rev: str, message: str | None = None) -> RolloutStatus:
    """A canary rollout's settled status: ``rev`` is stable; the last analysis stays."""
    return _with(
        RolloutStatus(strategy="Canary", phase=STABLE, stable_revision=rev),
        steps=old.steps,
        verdict=old.verdict,
        last_analysis=old.last_analysis,
        message=message,
    )


def _roll_back(
    inp: RolloutInput,
    status: RolloutStatus,
    events: list[Event],
    reason: str,
    why: str,
) -> RolloutDecision:
    message = (
        f"rolled back to {status.stable_revision}: canary {inp.desired_revision} "
        f"{'aborted' if reason == 'Aborted' else 'failed'}: {why}"
    )
    events.append(Event("Warning", "RolledBack", message))
    status = _with(status, phase=ROLLED_BACK, message=message)
    decision = _rolled_back(replace(inp, status=status, command=None))
    return replace(decision, events=tuple(events))


def _rolled_back(inp: RolloutInput) -> RolloutDecision:
    """The canary is gone at once; the stable revision serves the full count until a new
    revision is committed or a person says retry/promote."""
    message = inp.status.message or f"canary {inp.desired_revision} rolled back"
    status = _with(
        inp.status,
        phase=ROLLED_BACK,
        step=None,
        weight=0,
        stable_replicas=inp.total,
        step_started_at=None,
    )
    events: list[Event] = []
    if inp.command == "abort":
        events.append(Event("Warning", "RolloutCommandIgnored", "abort: already rolled back"))
    return RolloutDecision(
        stable_replicas=inp.total,
        stable_takes_desired=False,
        status=status,
        progressing=(False, "RolledBack", message),
        events=tuple(events),
    )


def _canary_settled(inp: RolloutInput) -> RolloutDecision:
    """The stable Deployment runs the desired revision: nothing to roll (the revision was
    promoted, or Git went back to the stable one during a canary)."""
    assert inp.stable is not None
    old, rev = inp.status, inp.desired_revision
    events: list[Event] = []
    if inp.command is not None:
        events.append(
            Event("Warning", "RolloutCommandIgnored", f"{inp.command}: no rollout in progress")
        )
    if old.phase in (PROGRESSING, ROLLED_BACK) and old.canary_revision != rev:
        events.append(
            Event("Normal", "RolloutCancelled", f"the spec went back to the stable revision {rev}")
        )
    canary_n = _retire(inp.canary, inp.stable, inp.total)
    fallback = inp.stable.rolling() and inp.stable.surge_blocked(rev)
    return RolloutDecision(
        stable_replicas=inp.total,
        canary_replicas=canary_n,
        one_at_a_time=fallback,
        status=_stable_after(old, rev),
        progressing=(False, "RolloutComplete", f"serving {rev}"),
        events=tuple(events),
    )


def _analysis_status(m: Measurement, verdict: Verdict, step: int) -> CanaryAnalysisStatus:
    return CanaryAnalysisStatus(
        time=rfc3339(m.end),
        step=step,
        result=verdict.result,
        message=clip(verdict.message),
        **verdict.numbers,
    )
