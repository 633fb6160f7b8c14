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
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from distillery.api.conditions import parse_rfc3339, rfc3339
from distillery.api.events import Event
from distillery.api.types import RolloutSpec, clip
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
    status: Mapping[str, Any]  # the recorded status.rollout
    now: str  # RFC 3339
    criteria: Criteria | None = None
    measurement: Measurement | None = None
    analysis_configured: bool = True  # False: no Prometheus, steps advance on pauses
    command: str | None = None


@dataclass(frozen=True, kw_only=True)
class RolloutDecision:
    stable_replicas: int
    canary_replicas: int  # 0 retires the canary Deployment
    stable_takes_desired: bool  # False: the stable Deployment keeps its template
    one_at_a_time: bool  # render the stable Deployment with maxSurge 0
    status: dict[str, Any]
    progressing: tuple[bool, str, str]  # RolloutProgressing: status, reason, message
    events: tuple[Event, ...] = ()
    consume_command: bool = False


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
    phase = status.get("phase")
    if phase == PROMOTING:
        total = decision.stable_replicas + decision.canary_replicas
        return (
            (100, 0)
            if total == 0
            else (
                round(100 * decision.stable_replicas / total),
                round(100 * decision.canary_replicas / total),
            )
        )
    if phase != PROGRESSING or spec.canary is None or not isinstance(status.get("step"), int):
        return 100, 0
    step = int(status["step"])
    index = step - 1 if status.get("stepStartedAt") else step - 2
    weight = spec.canary.steps[index].weight if index >= 0 else 0
    return 100 - weight, weight


# ---- RollingUpdate -----------------------------------------------------------------------


def _rolling(inp: RolloutInput) -> RolloutDecision:
    old, stable, n, rev = inp.status, inp.stable, inp.total, inp.desired_revision
    events: list[Event] = []
    consume = inp.command is not None
    if consume:
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
    rolling = old.get("phase") == PROGRESSING and old.get("canaryRevision") == rev
    in_flight = stable is not None and (
        stable.updated < stable.replicas
        or (stable.observed_generation < stable.generation and old.get("stableRevision") != rev)
        or (rolling and stable.ready < stable.replicas)
    )
    if stable is None or (stable.revision == rev and not in_flight):
        settled = {"strategy": "RollingUpdate", "phase": STABLE, "stableRevision": rev}
        if old.get("phase") == PROGRESSING and old.get("strategy") == "RollingUpdate":
            events.append(Event("Normal", "RolloutComplete", f"all replicas run revision {rev}"))
        return RolloutDecision(
            stable_replicas=n,
            canary_replicas=canary,
            stable_takes_desired=True,
            one_at_a_time=False,
            status=settled,
            progressing=(False, "RolloutComplete", f"serving {rev}"),
            events=tuple(events),
            consume_command=consume,
        )
    # The stable Deployment rolls to the desired revision (or is about to).
    previous = old.get("stableRevision") if old.get("stableRevision") != rev else None
    if previous is None and stable.revision != rev:
        previous = stable.revision
    fallback = stable.surge_blocked(rev)
    updated = stable.updated if stable.revision == rev else 0
    how = "one replica at a time (no spare GPU for a surge pod)" if fallback else "with surge"
    message = f"rolling to {rev} {how}: {updated}/{n} replicas updated"
    status: dict[str, Any] = {
        "strategy": "RollingUpdate",
        "phase": PROGRESSING,
        "stableRevision": previous,
        "canaryRevision": rev,
        "message": message,
    }
    if old.get("phase") != PROGRESSING or old.get("canaryRevision") != rev:
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
        stable_takes_desired=True,
        one_at_a_time=fallback,
        status=_clean(status),
        progressing=(True, "RollingUpdate", message),
        events=tuple(events),
        consume_command=consume,
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
    phase = old.get("phase")
    same = old.get("canaryRevision") == rev
    if stable is None or stable.revision is None:
        # First deployment: nothing to compare a canary with.
        status = {"strategy": "Canary", "phase": STABLE, "stableRevision": rev}
        return RolloutDecision(
            stable_replicas=inp.total,
            canary_replicas=0,
            stable_takes_desired=True,
            one_at_a_time=False,
            status=status,
            progressing=(False, "RolloutComplete", f"serving {rev}"),
        )
    if stable.revision == rev and not (phase == PROMOTING and same):
        return _canary_settled(inp)
    if inp.total == 0:
        # Scaled to zero: no traffic to compare, nothing to protect. The new revision is
        # taken as is, and the next scale-up starts on it.
        status = {"strategy": "Canary", "phase": STABLE, "stableRevision": rev}
        message = f"scaled to zero: revision {rev} taken without a canary"
        return RolloutDecision(
            stable_replicas=0,
            canary_replicas=0,
            stable_takes_desired=True,
            one_at_a_time=False,
            status={**status, "message": message},
            progressing=(False, "RolloutComplete", message),
            events=(Event("Normal", "RolloutComplete", message),)
            if old.get("stableRevision") != rev
            else (),
            consume_command=inp.command is not None,
        )
    if phase == PROMOTING and same:
        return _promoting(inp)
    if phase == ROLLED_BACK and same:
        if inp.command == "retry":
            return _start(inp, "retry requested")
        if inp.command == "promote":
            return _promote(inp, dict(old), [], "promote requested after rollback")
        return _rolled_back(inp)
    if phase == PROGRESSING and same and isinstance(old.get("step"), int):
        step = max(1, min(int(old["step"]), len(steps)))
        return _progress(inp, step)
    return _start(inp, None)


def _base(inp: RolloutInput, stable_revision: str | None) -> dict[str, Any]:
    assert inp.spec.canary is not None
    return {
        "strategy": "Canary",
        "stableRevision": stable_revision,
        "canaryRevision": inp.desired_revision,
        "steps": len(inp.spec.canary.steps),
        "lastAnalysis": inp.status.get("lastAnalysis"),
        "verdict": inp.status.get("verdict"),
    }


def _start(inp: RolloutInput, why: str | None) -> RolloutDecision:
    assert inp.stable is not None
    old = inp.status
    stable_rev = old.get("stableRevision") or inp.stable.revision
    if old.get("phase") in (STABLE, None) or stable_rev == inp.desired_revision:
        stable_rev = inp.stable.revision
    status = {**_base(inp, stable_rev), "lastAnalysis": None, "verdict": None}
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
    status: dict[str, Any] | None = None,
    events: list[Event] | None = None,
    fresh: bool = False,
) -> RolloutDecision:
    assert inp.spec.canary is not None and inp.stable is not None
    old = inp.status
    steps = inp.spec.canary.steps
    status = status if status is not None else _base(inp, old.get("stableRevision"))
    events = events if events is not None else []
    consume = inp.command is not None
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
    started_at = None if fresh else old.get("stepStartedAt")
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
        status.update(_split_fields(step, stable_target, canary_n, None, message))
        return _decision(status, stable_target, canary_n, events, consume, message)

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
        status["lastAnalysis"] = _analysis_status(m, verdict, step)
        status["verdict"] = verdict.result
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
    status.update(_split_fields(step, stable_n, canary_n, started_at, message))
    return _decision(status, stable_n, canary_n, events, consume, message)


def _split_fields(
    step: int, stable_n: int, canary_n: int, started_at: str | None, message: str
) -> dict[str, Any]:
    total = stable_n + canary_n
    return {
        "phase": PROGRESSING,
        "step": step,
        "weight": round(100 * canary_n / total) if total else 0,
        "stableReplicas": stable_n,
        "canaryReplicas": canary_n,
        "stepStartedAt": started_at,
        "message": message,
    }


def _decision(
    status: dict[str, Any],
    stable_n: int,
    canary_n: int,
    events: list[Event],
    consume: bool,
    message: str,
) -> RolloutDecision:
    return RolloutDecision(
        stable_replicas=stable_n,
        canary_replicas=canary_n,
        stable_takes_desired=False,
        one_at_a_time=False,
        status=_clean(status),
        progressing=(True, "CanaryStep", message),
        events=tuple(events),
        consume_command=consume,
    )


def _advance(
    inp: RolloutInput,
    status: dict[str, Any],
    events: list[Event],
    step: int,
    why: str,
) -> RolloutDecision:
    assert inp.spec.canary is not None
    steps = inp.spec.canary.steps
    events.append(Event("Normal", "CanaryStepPassed", f"step {step}/{len(steps)} passed: {why}"))
    if step >= len(steps):
        return _promote(inp, status, events, "all steps passed")
    nxt = replace(inp, status={**status, "stepStartedAt": None})
    return _progress(nxt, step + 1, status=status, events=events, fresh=True)


def _promote(
    inp: RolloutInput,
    status: dict[str, Any],
    events: list[Event],
    why: str,
) -> RolloutDecision:
    events.append(Event("Normal", "Promoting", f"promoting revision {inp.desired_revision}: {why}"))
    status = {**status, "phase": PROMOTING, "stepStartedAt": None}
    decision = _promoting(replace(inp, status=status, command=None))
    return replace(
        decision,
        events=tuple(events) + decision.events,
        consume_command=inp.command is not None,
    )


def _promoting(inp: RolloutInput) -> RolloutDecision:
    """The stable Deployment takes the new template; the canary gives up one replica for
    each new stable replica that is ready (and one more when a new stable pod cannot be
    scheduled, so the GPUs it holds go to the stable track)."""
    assert inp.stable is not None
    stable, canary, n, rev = inp.stable, inp.canary, inp.total, inp.desired_revision
    status = {**_base(inp, inp.status.get("stableRevision")), **dict(inp.status)}
    consume = inp.command is not None
    events: list[Event] = []
    if consume:
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
        done = {
            "strategy": "Canary",
            "phase": STABLE,
            "stableRevision": rev,
            "steps": status.get("steps"),
            "verdict": status.get("verdict"),
            "lastAnalysis": status.get("lastAnalysis"),
            "message": f"promoted {rev}",
        }
        return RolloutDecision(
            stable_replicas=n,
            canary_replicas=0,
            stable_takes_desired=True,
            one_at_a_time=False,
            status=_clean(done),
            progressing=(False, "RolloutComplete", f"serving {rev}"),
            events=tuple(events),
            consume_command=consume,
        )
    message = f"promoting {rev}: {on_new}/{n} stable replicas on the new revision"
    status.update(
        {
            "phase": PROMOTING,
            "stableReplicas": n,
            "canaryReplicas": canary_n,
            "weight": None,
            "stepStartedAt": None,
            "message": message,
        }
    )
    fallback = stable.surge_blocked(rev)
    return RolloutDecision(
        stable_replicas=n,
        canary_replicas=canary_n,
        stable_takes_desired=True,
        one_at_a_time=fallback,
        status=_clean(status),
        progressing=(True, "Promoting", message),
        events=tuple(events),
        consume_command=consume,
    )


def _roll_back(
    inp: RolloutInput,
    status: dict[str, Any],
    events: list[Event],
    reason: str,
    why: str,
) -> RolloutDecision:
    message = (
        f"rolled back to {status.get('stableRevision')}: canary {inp.desired_revision} "
        f"{'aborted' if reason == 'Aborted' else 'failed'}: {why}"
    )
    events.append(Event("Warning", "RolledBack", message))
    status = {**status, "phase": ROLLED_BACK, "message": message}
    decision = _rolled_back(replace(inp, status=status, command=None))
    return replace(decision, events=tuple(events), consume_command=inp.command is not None)


def _rolled_back(inp: RolloutInput) -> RolloutDecision:
    """The canary is gone at once; the stable revision serves the full count until a new
    revision is committed or a person says retry/promote."""
    status = {**dict(inp.status)}
    message = str(status.get("message") or f"canary {inp.desired_revision} rolled back")
    status.update(
        {
            "phase": ROLLED_BACK,
            "step": None,
            "weight": 0,
            "stableReplicas": inp.total,
            "canaryReplicas": 0,
            "stepStartedAt": None,
        }
    )
    events: list[Event] = []
    consume = inp.command is not None
    if inp.command == "abort":
        events.append(Event("Warning", "RolloutCommandIgnored", "abort: already rolled back"))
    return RolloutDecision(
        stable_replicas=inp.total,
        canary_replicas=0,
        stable_takes_desired=False,
        one_at_a_time=False,
        status=_clean(status),
        progressing=(False, "RolledBack", message),
        events=tuple(events),
        consume_command=consume,
    )


def _canary_settled(inp: RolloutInput) -> RolloutDecision:
    """The stable Deployment runs the desired revision: nothing to roll (the revision was
    promoted, or Git went back to the stable one during a canary)."""
    assert inp.stable is not None
    old, rev = inp.status, inp.desired_revision
    events: list[Event] = []
    consume = inp.command is not None
    if consume:
        events.append(
            Event("Warning", "RolloutCommandIgnored", f"{inp.command}: no rollout in progress")
        )
    if old.get("phase") in (PROGRESSING, ROLLED_BACK) and old.get("canaryRevision") != rev:
        events.append(
            Event("Normal", "RolloutCancelled", f"the spec went back to the stable revision {rev}")
        )
    status = {
        "strategy": "Canary",
        "phase": STABLE,
        "stableRevision": rev,
        "steps": old.get("steps"),
        "verdict": old.get("verdict"),
        "lastAnalysis": old.get("lastAnalysis"),
    }
    canary_n = _retire(inp.canary, inp.stable, inp.total)
    fallback = inp.stable.rolling() and inp.stable.surge_blocked(rev)
    return RolloutDecision(
        stable_replicas=inp.total,
        canary_replicas=canary_n,
        stable_takes_desired=True,
        one_at_a_time=fallback,
        status=_clean(status),
        progressing=(False, "RolloutComplete", f"serving {rev}"),
        events=tuple(events),
        consume_command=consume,
    )


def _analysis_status(m: Measurement, verdict: Verdict, step: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "time": rfc3339(m.end),
        "step": step,
        "result": verdict.result,
        "message": clip(verdict.message),
    }
    out.update(verdict.numbers)
    return out


def _clean(status: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in status.items() if v is not None}
    if isinstance(out.get("message"), str):
        out["message"] = clip(out["message"])
    return out
