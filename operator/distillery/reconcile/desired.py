"""The reconciler's decision, as a pure function of what is observed.

Given a DMD object and the live state of its children, :func:`desired_state` says which
children to apply, what the DMD's status should be, and which events are worth posting.
It is level-triggered: it recomputes everything from scratch each time, so it does not
matter which event woke it. The kube layer executes the result and writes only what
differs, which makes a steady state cost no writes.

Nothing that serves is ever deleted here. A spec that stops fitting (or a template that
breaks) leaves the running workload as it is and marks the DMD ``Stalled``: a bad commit
must not take down a serving model. The one deletion is a canary Deployment that
:mod:`distillery.rollout` retired (scaled to zero, its traffic back on the stable track).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import ValidationError

from distillery.api import conditions as cond
from distillery.api.conditions import ConditionState
from distillery.api.errors import validation_summary
from distillery.api.events import Event
from distillery.api.hashing import content_hash
from distillery.api.types import (
    Condition,
    CostStatus,
    DistilledModelDeployment,
    DistilledModelDeploymentStatus,
    MemoryBreakdown,
    PlacementStatus,
    RolloutStatus,
    StartupStatus,
)
from distillery.autoscale.inputs import POD_FAILURE_REASONS, PodInfo
from distillery.catalog import Catalog
from distillery.engines import ENGINES
from distillery.reconcile.cache import CacheStep, FillPod, cache_step, unused_caches
from distillery.reconcile.children import (
    APPLIED_HASH,
    CANARY,
    ChildState,
    child_key,
    edited_by,
)
from distillery.reconcile.slo import spec_slo_measurement
from distillery.render.workload import (
    WORKLOAD_KINDS,
    Rendered,
    RenderError,
    RenderOptions,
    canary_workload,
    desired_replicas,
    render,
    set_one_at_a_time,
    set_route_weights,
    weights_from,
)
from distillery.rollout.analysis import Criteria, Measurement
from distillery.rollout.strategy import (
    COMMAND_ANNOTATION,
    COMMANDS,
    PROGRESSING,
    PROMOTING,
    ROLLED_BACK,
    RolloutDecision,
    RolloutInput,
    TrackState,
    decide,
    route_weights,
)
from distillery.sizing import Plan, PlanError, UnknownModelError, plan

# The status fields the reconciler writes: every field of the status model but
# ``autoscaling``, which the autoscaler owns (the rollout's fields are decided here).
OWNED_STATUS = tuple(
    f.alias or n
    for n, f in DistilledModelDeploymentStatus.model_fields.items()
    if n != "autoscaling"
)


@dataclass(frozen=True)
class Desired:
    """What the DMD and its children should look like."""

    apply: list[dict[str, Any]] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)
    status_changed: bool = False
    events: list[Event] = field(default_factory=list)
    stalled_reason: str | None = None
    plan: Plan | None = None
    rendered: Rendered | None = None
    apply_reasons: dict[str, str] = field(default_factory=dict)
    # Workloads whose replicas change without a new template (the stable track while a
    # canary runs, or while a new weight cache fills): (kind, name) -> replicas, through
    # the scale subresource.
    scale: dict[tuple[str, str], int] = field(default_factory=dict)
    delete: list[tuple[str, str]] = field(default_factory=list)  # (kind, name)
    clear_command: bool = False  # remove the distillery.dev/rollout annotation
    rollout: RolloutDecision | None = None


def stamp(obj: dict[str, Any]) -> dict[str, Any]:
    """The object with the hash of its content in an annotation."""
    digest = content_hash(obj)
    meta = obj.setdefault("metadata", {})
    meta.setdefault("annotations", {})[APPLIED_HASH] = digest
    return obj


def parsed_metadata(meta: Mapping[str, Any]) -> dict[str, Any]:
    """What a parsed DMD keeps of its metadata."""
    return {k: meta[k] for k in ("name", "namespace", "uid", "generation") if k in meta}


def parse(body: Mapping[str, Any]) -> DistilledModelDeployment:
    return DistilledModelDeployment.model_validate(
        {
            "apiVersion": body.get("apiVersion"),
            "kind": body.get("kind"),
            "metadata": parsed_metadata(body.get("metadata") or {}),
            "spec": body.get("spec") or {},
        }
    )


def _stalled(
    body: Mapping[str, Any], reason: str, message: str, now: str, sized: bool | None
) -> Desired:
    meta = body.get("metadata") or {}
    gen = meta.get("generation")
    old_status = body.get("status") or {}
    old = cond.parse_conditions(old_status.get("conditions") or [])
    desired = [
        cond.condition(cond.READY, False, reason, message, gen),
        cond.condition(cond.RECONCILING, False, reason, "waiting for a spec change", gen),
        cond.condition(cond.STALLED, True, reason, message, gen),
    ]
    if sized is not None:
        desired.append(cond.condition(cond.SIZED, sized, reason, message, gen))
    merged = cond.merge_conditions(old, desired, now)
    events = _transition_events(old, merged)
    # What the last good reconcile recorded (placement, cost, ...) stays as it was.
    fresh = DistilledModelDeploymentStatus(observed_generation=gen, conditions=merged)
    status = {**_owned(old_status), **fresh.to_wire()}
    return Desired(
        status=status,
        status_changed=status != _owned(old_status),
        events=events,
        stalled_reason=reason,
    )


def _owned(status: Mapping[str, Any]) -> dict[str, Any]:
    return {k: status[k] for k in OWNED_STATUS if k in status and status[k] is not None}


def _transition_events(old: Sequence[Condition], new: Sequence[Condition]) -> list[Event]:
    events: list[Event] = []
    before = {c.type: c for c in old}
    for c in new:
        prev = before.get(c.type)
        flipped = prev is None or prev.status != c.status
        changed = flipped or (prev is not None and prev.reason != c.reason)
        if c.type == cond.STALLED and c.status == "True" and changed:
            events.append(Event("Warning", c.reason, c.message))
        elif c.type == cond.READY and c.status == "True" and flipped:
            events.append(Event("Normal", "Ready", c.message))
        elif c.type == cond.READY and c.reason in POD_FAILURE_REASONS and changed:
            events.append(Event("Warning", c.reason, c.message))
        elif (
            c.type == cond.SIZED
            and c.status == "True"
            and (flipped or (prev is not None and prev.message != c.message))
        ):
            events.append(Event("Normal", "Planned", c.message))
    return events


def _autoscaling_conditions(
    dmd: DistilledModelDeployment, auto: Mapping[str, Any], gen: int | None
) -> list[ConditionState]:
    """MetricsAvailable and ScalingLimited, from what the autoscaler recorded."""
    if dmd.spec.scaling.mode == "external":
        msg = "spec.replicas is left to an external scaler (HPA/KEDA) through /scale"
        return [
            cond.condition(cond.METRICS_AVAILABLE, None, "ExternalScaler", msg, gen),
            cond.condition(cond.SCALING_LIMITED, False, "ExternalScaler", msg, gen),
        ]
    available = auto.get("metricsAvailable")
    message = str(auto.get("metricsMessage") or "")
    if available is None:
        metrics_cond = cond.condition(
            cond.METRICS_AVAILABLE,
            None,
            "NotEvaluated",
            "the autoscaler has not evaluated this DMD yet",
            gen,
        )
    elif available:
        metrics_cond = cond.condition(cond.METRICS_AVAILABLE, True, "MetricsFresh", message, gen)
    else:
        metrics_cond = cond.condition(
            cond.METRICS_AVAILABLE,
            False,
            "MetricsMissing",
            message or "no fresh metrics: holding replicas",
            gen,
        )
    limited = auto.get("limitedBy")
    if limited:
        # "Limited": a status written before limitedReason existed, until the next pass.
        reason = str(auto.get("limitedReason") or "Limited")
        limit_cond = cond.condition(cond.SCALING_LIMITED, True, reason, str(limited), gen)
    else:
        limit_cond = cond.condition(cond.SCALING_LIMITED, False, "WithinLimits", "", gen)
    return [metrics_cond, limit_cond]


def _slo_condition(dmd: DistilledModelDeployment, gen: int | None) -> ConditionState:
    m = spec_slo_measurement(dmd.spec)
    return cond.condition(cond.SLO_MEASURABLE, m.exact, m.reason, m.message, gen)


def _deployment_conditions(
    desired_count: int,
    dep: ChildState | None,
    rendered: Rendered,
    gen: int | None,
    unschedulable: str | None = None,
    pods: Sequence[PodInfo] | None = None,
) -> tuple[ConditionState, ConditionState]:
    """Ready and Reconciling, from the Deployment's own status and, when known, its
    pods: a failing container names the reason (a missing Secret, a bad image, an OOM
    kill) instead of a bare count, and terminating pods do not count as ready.

    A Deployment its controller has not observed yet (no status at all) is still being
    created: its counts say nothing, and a status of "0/N ready" that the controller's
    first observation replaces a second later is a write for nothing (a burst of new
    DMDs would write each twice)."""
    if dep is None or dep.observed_generation == 0:
        msg = "creating the serving Deployment"
        return (
            cond.condition(cond.READY, False, "Creating", msg, gen),
            cond.condition(cond.RECONCILING, True, "Creating", msg, gen),
        )
    progressing = dep.condition("Progressing")
    if progressing is not None and progressing[1] == "ProgressDeadlineExceeded":
        msg = f"rollout stuck: {progressing[2]}"
        return (
            cond.condition(cond.READY, False, "ProgressDeadlineExceeded", msg, gen),
            cond.condition(cond.RECONCILING, True, "ProgressDeadlineExceeded", msg, gen),
        )
    behind = dep.observed_generation < dep.generation or dep.spec_replicas != desired_count
    ready_replicas = dep.ready_replicas
    if pods is not None:
        live = [p for p in pods if (p.track or "stable") == "stable" and not p.terminating]
        ready_replicas = min(ready_replicas, sum(p.ready for p in live if not p.group_worker))
        failing = [(p.failure, p.name) for p in live if p.failure and not p.ready]
    else:
        failing = []
    counts = f"{ready_replicas}/{desired_count} replicas ready"
    if failing and ready_replicas < desired_count:
        failure, pod = min(failing, key=lambda f: (f[0].severity, f[1]))
        msg = f"{counts}; pod {pod}: {failure.reason}: {failure.message}"
        if len(failing) > 1:
            msg += f" ({len(failing)} pods failing)"
        return (
            cond.condition(cond.READY, False, failure.reason, msg, gen),
            cond.condition(cond.RECONCILING, True, failure.reason, msg, gen),
        )
    if behind or dep.updated_replicas < desired_count:
        reason = "RollingOut" if dep.updated_replicas < dep.replicas else "ScalingUp"
        if dep.spec_replicas is not None and dep.spec_replicas > desired_count:
            reason = "ScalingDown"
        ready_now = ready_replicas >= desired_count and not behind
        return (
            cond.condition(cond.READY, ready_now, reason, counts, gen),
            cond.condition(cond.RECONCILING, True, reason, f"{reason}: {counts}", gen),
        )
    if ready_replicas < desired_count and unschedulable:
        msg = f"{counts}; pods cannot be scheduled: {unschedulable}"
        return (
            cond.condition(cond.READY, False, "Unschedulable", msg, gen),
            cond.condition(cond.RECONCILING, True, "Unschedulable", msg, gen),
        )
    if ready_replicas < desired_count:
        msg = f"{counts}; new replicas load {rendered.startup_seconds:.0f}s of weights and engine"
        return (
            cond.condition(cond.READY, False, "WaitingForReplicas", msg, gen),
            cond.condition(cond.RECONCILING, True, "WaitingForReplicas", msg, gen),
        )
    if dep.replicas > desired_count:
        return (
            cond.condition(cond.READY, True, "ScalingDown", counts, gen),
            cond.condition(cond.RECONCILING, True, "ScalingDown", counts, gen),
        )
    if desired_count == 0:
        # Nothing serves: Ready says so (a client would wait or fail), and Argo CD reads
        # the reason as Suspended. Demand at the router wakes it (the autoscaler).
        msg = f"{counts}; scaled to zero: no replica serves until demand wakes one"
        return (
            cond.condition(cond.READY, False, "ScaledToZero", msg, gen),
            cond.condition(cond.RECONCILING, False, "ScaledToZero", counts, gen),
        )
    return (
        cond.condition(cond.READY, True, "Ready", counts, gen),
        cond.condition(cond.RECONCILING, False, "Ready", counts, gen),
    )


def desired_state(
    body: Mapping[str, Any],
    children: Mapping[str, ChildState],
    catalog: Catalog,
    *,
    now: str,
    options: RenderOptions | None = None,
    user_template: str | None = None,
    user_template_error: str | None = None,
    unschedulable: str | None = None,
    pods: Sequence[PodInfo] | None = None,
    measurement: Measurement | None = None,
    analysis_configured: bool = False,
    resolved: tuple[DistilledModelDeployment, Plan] | None = None,
    fill_pods: Sequence[FillPod] = (),
) -> Desired:
    """Decide the children and the status of one DMD. ``children`` maps
    :func:`~distillery.reconcile.children.child_key` to state; ``unschedulable`` is the
    scheduler's message when some of its pods cannot be placed; ``pods`` tell the
    revisions apart during a rollout; ``measurement`` is the latest canary analysis
    window (``analysis_configured``: whether one can come at all); ``resolved`` is the
    DMD parsed and planned already for this generation and catalog (a shared cache);
    ``fill_pods`` are the pods of its weight cache's fill Jobs.

    The steps: resolve (parse, plan, render: a failure stalls), roll out (the rollout's
    step shapes the objects), diff (what to apply and why), then status and events."""
    outcome = _resolve(body, catalog, now, options, user_template, user_template_error, resolved)
    if isinstance(outcome, Desired):
        return outcome
    dmd, chosen_plan, rendered = outcome
    meta = body.get("metadata") or {}
    old_status = body.get("status") or {}
    raw_command = ((meta.get("annotations") or {}).get(COMMAND_ANNOTATION) or "").strip()
    command = raw_command if raw_command in COMMANDS else None
    cached = (
        cache_step(
            dmd, rendered.cache, children, fill_pods, old_status.get("cache"), now,
            meta.get("generation"),
        )
        if rendered.cache is not None
        else None
    )  # fmt: skip
    step = _rollout_step(
        dmd, rendered, children, pods, old_status, now, measurement, analysis_configured, command,
        hold=cached is not None and cached.hold_workload,
    )  # fmt: skip
    if cached is not None:
        step = _with_cache(step, cached, rendered)
    else:
        # The spec dropped its weight cache: the claims and Jobs go (Kubernetes keeps a
        # claim until the pods still mounting it are replaced).
        step = replace(step, delete=[*step.delete, *unused_caches(children)])
    apply, reasons = _diff(step.objects, children, dmd.name)
    old_conds = cond.parse_conditions(old_status.get("conditions") or [])
    new_status = _status(
        dmd, chosen_plan, rendered, step, old_status, old_conds, meta.get("generation"), now,
        unschedulable, pods, cached,
    )  # fmt: skip
    # Serialised once, in the API's shape; None fields are left out (the merge patch
    # writes nulls for what an older status had and this one drops).
    status = new_status.to_wire()
    events = _transition_events(old_conds, new_status.conditions)
    events += step.decision.events
    if raw_command and command is None:
        events.append(
            Event(
                "Warning",
                "RolloutCommandIgnored",
                f"{COMMAND_ANNOTATION}={raw_command[:64]!r} is not one of {', '.join(COMMANDS)}",
            )
        )
    return Desired(
        apply=apply,
        status=status,
        status_changed=_owned(status) != _owned(old_status),
        events=events,
        plan=chosen_plan,
        rendered=rendered,
        apply_reasons=reasons,
        scale=step.scale,
        delete=step.delete,
        clear_command=bool(raw_command),
        rollout=step.decision,
    )


def _resolve(
    body: Mapping[str, Any],
    catalog: Catalog,
    now: str,
    options: RenderOptions | None,
    user_template: str | None,
    user_template_error: str | None,
    resolved: tuple[DistilledModelDeployment, Plan] | None = None,
) -> tuple[DistilledModelDeployment, Plan, Rendered] | Desired:
    """Parse, plan and render; any failure is a Stalled DMD that keeps what runs."""
    meta = body.get("metadata") or {}
    if resolved is not None:
        dmd, chosen_plan = resolved
    else:
        try:
            dmd = parse(body)
        except ValidationError as exc:
            return _stalled(body, "InvalidSpec", validation_summary(exc), now, None)
        try:
            chosen_plan = plan(dmd.spec, catalog)
        except (PlanError, UnknownModelError) as exc:
            reason = "DoesNotFit" if isinstance(exc, PlanError) else "UnknownModel"
            return _stalled(body, reason, str(exc), now, False)
    if user_template_error is not None:
        return _stalled(body, "TemplateNotFound", user_template_error, now, True)
    try:
        rendered = render(
            dmd,
            chosen_plan,
            options=options,
            owner_uid=str(meta.get("uid") or "") or None,
            user_template=user_template,
        )
    except RenderError as exc:
        return _stalled(body, "RenderFailed", str(exc), now, True)
    return dmd, chosen_plan, rendered


@dataclass(frozen=True, kw_only=True)
class _RolloutStep:
    """The rollout's decision and the objects, resizes and deletes it leads to."""

    decision: RolloutDecision
    count: int
    stable_child: ChildState | None
    canary_child: ChildState | None
    objects: list[dict[str, Any]]
    scale: dict[tuple[str, str], int]
    delete: list[tuple[str, str]]


def _rollout_step(
    dmd: DistilledModelDeployment,
    rendered: Rendered,
    children: Mapping[str, ChildState],
    pods: Sequence[PodInfo] | None,
    old_status: Mapping[str, Any],
    now: str,
    measurement: Measurement | None,
    analysis_configured: bool,
    command: str | None,
    *,
    hold: bool = False,
) -> _RolloutStep:
    """Where the rollout stands, and what the rendered objects become at this step.
    With ``hold`` (the new revision's weight cache is not complete) the running
    revision stays the desired one: no rollout starts before its weights are there."""
    count = desired_replicas(dmd)
    name = dmd.name
    kind = rendered.workload["kind"]
    stable_child = children.get(kind)
    canary_child = children.get(child_key(kind, f"{name}-{CANARY}", name))
    revision = rendered.revision
    if hold and stable_child is not None and stable_child.revision:
        revision = stable_child.revision
    decision = decide(
        RolloutInput(
            spec=dmd.spec.rollout,
            desired_revision=revision,
            total=count,
            stable=_track(stable_child, pods, "stable", revision),
            canary=_track(canary_child, pods, CANARY, revision),
            status=_rollout_status(old_status.get("rollout") or {}),
            now=now,
            criteria=_criteria(dmd),
            measurement=measurement,
            analysis_configured=analysis_configured,
            command=command,
        )
    )
    workload = rendered.workload
    workload["spec"]["replicas"] = decision.stable_replicas
    if decision.one_at_a_time:
        set_one_at_a_time(workload)
    if rendered.http_route is not None:
        set_route_weights(rendered.http_route, *route_weights(dmd.spec.rollout, decision))
        traffic = f"HTTPRoute {rendered.http_route['metadata']['name']}"
        decision = replace(decision, status=decision.status.model_copy(update={"traffic": traffic}))
    elif dmd.spec.rollout.strategy == "Canary":
        traffic = f"replica ratio behind Service {rendered.service['metadata']['name']}"
        decision = replace(decision, status=decision.status.model_copy(update={"traffic": traffic}))
    objects = rendered.objects()
    scale: dict[tuple[str, str], int] = {}
    if not decision.stable_takes_desired:
        # The stable track keeps the template it runs; only its size follows the split.
        objects = [o for o in objects if o is not workload]
        if stable_child is not None and stable_child.spec_replicas != decision.stable_replicas:
            scale[(kind, stable_child.name)] = decision.stable_replicas
    delete: list[tuple[str, str]] = []
    if decision.canary_replicas > 0:
        objects.append(canary_workload(rendered, decision.canary_replicas))
    elif canary_child is not None:
        delete.append((kind, canary_child.name))
    return _RolloutStep(
        decision=decision,
        count=count,
        stable_child=stable_child,
        canary_child=canary_child,
        objects=objects,
        scale=scale,
        delete=delete,
    )


def _with_cache(step: _RolloutStep, cached: CacheStep, rendered: Rendered) -> _RolloutStep:
    """The rollout's objects with the weight cache's say: a live fill Job is never
    re-applied (its template is immutable); while the cache fills, no workload template
    is applied, the running one only follows the replica count; retired caches go."""
    job = rendered.cache.fill_job if rendered.cache is not None else None
    prepull = rendered.cache.prepull if rendered.cache is not None else None
    objects = [
        o
        for o in step.objects
        if not (cached.drop_job and o is job) and not (cached.drop_prepull and o is prepull)
    ]
    scale = dict(step.scale)
    if cached.hold_workload:
        objects = [o for o in objects if o["kind"] not in WORKLOAD_KINDS]
        live = step.stable_child
        if live is not None and live.spec_replicas != step.decision.stable_replicas:
            scale[(live.kind, live.name)] = step.decision.stable_replicas
    return replace(step, objects=objects, scale=scale, delete=[*step.delete, *cached.delete])


def _diff(
    objects: Sequence[dict[str, Any]], children: Mapping[str, ChildState], name: str
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The objects to apply, stamped with their hash, and why each one is applied."""
    apply: list[dict[str, Any]] = []
    reasons: dict[str, str] = {}
    for obj in objects:
        stamped = stamp(obj)
        key = child_key(obj["kind"], obj["metadata"]["name"], name)
        live = children.get(key)
        want = stamped["metadata"]["annotations"][APPLIED_HASH]
        if live is None:
            reasons[key] = "missing"
        elif live.applied_hash != want:
            reasons[key] = "changed"
        elif obj["kind"] in WORKLOAD_KINDS and live.spec_replicas not in (
            None,
            obj["spec"]["replicas"],
        ):
            # Resized through /scale (by a canary split, or by hand): the hash is stale.
            reasons[key] = "replicas"
        elif live.conflicts or edited_by(live.foreign, stamped):
            editors = sorted(set(live.conflicts) | set(edited_by(live.foreign, stamped)))
            reasons[key] = "edited by " + ", ".join(editors)
        else:
            continue
        apply.append(stamped)
    return apply, reasons


def _serving_conditions(
    step: _RolloutStep,
    rendered: Rendered,
    ready_count: int,
    gen: Any,
    unschedulable: str | None,
    pods: Sequence[PodInfo] | None,
) -> tuple[ConditionState, ConditionState, ConditionState]:
    """Ready, Reconciling and Stalled, from the rollout's phase and the Deployments."""
    decision, count = step.decision, step.count
    phase = decision.status.phase
    if phase == ROLLED_BACK:
        why = decision.progressing[2]
        return (
            cond.condition(cond.READY, False, "RolledBack", why, gen),
            cond.condition(
                cond.RECONCILING, False, "RolledBack", "waiting for a new revision", gen
            ),
            cond.condition(cond.STALLED, True, "RolledBack", why, gen),
        )
    stalled = cond.condition(cond.STALLED, False, "Reconciled", "", gen)
    if phase in (PROGRESSING, PROMOTING) and decision.status.strategy == "Canary":
        counts = f"{ready_count}/{count} replicas ready across the stable and canary tracks"
        return (
            cond.condition(cond.READY, ready_count >= count, "RolloutInProgress", counts, gen),
            cond.condition(
                cond.RECONCILING, True, "RolloutInProgress", decision.progressing[2], gen
            ),
            stalled,
        )
    ready, reconciling = _deployment_conditions(
        decision.stable_replicas, step.stable_child, rendered, gen, unschedulable, pods
    )
    return ready, reconciling, stalled


def _sized_message(chosen_plan: Plan) -> str:
    c = chosen_plan.chosen
    precision = "bf16" if c.quantization == "none" else c.quantization
    where = "CPU-only nodes" if c.gpus == 0 else f"{c.gpu_count}x {c.gpu.name}"
    if c.nodes > 1:
        where += f" on {c.nodes} nodes (a LeaderWorkerSet group per replica)"
    return (
        f"{where} (tensor parallel {c.tensor_parallel}, {precision}): "
        f"{c.max_concurrency} sequences of {chosen_plan.requirements.typical_tokens} tokens, "
        f"{c.cost_per_replica_hour:.2f} {chosen_plan.currency}/h per replica"
    )


def _status(
    dmd: DistilledModelDeployment,
    chosen_plan: Plan,
    rendered: Rendered,
    step: _RolloutStep,
    old_status: Mapping[str, Any],
    old_conds: Sequence[Condition],
    gen: Any,
    now: str,
    unschedulable: str | None,
    pods: Sequence[PodInfo] | None,
    cached: CacheStep | None = None,
) -> DistilledModelDeploymentStatus:
    """The status the reconciler owns, conditions merged with the old ones."""
    stable_child, canary_child = step.stable_child, step.canary_child
    canary_live = canary_child.replicas if canary_child else 0
    canary_ready = canary_child.ready_replicas if canary_child else 0
    running = (stable_child.replicas if stable_child else 0) + canary_live
    ready_count = (stable_child.ready_replicas if stable_child else 0) + canary_ready
    if pods is not None:  # a pod being deleted in a scale-down is not ready capacity
        ready_count = min(ready_count, sum(p.ready and not p.terminating for p in pods))
    ready, reconciling, stalled = _serving_conditions(
        step, rendered, ready_count, gen, unschedulable, pods
    )
    if cached is not None and cached.hold_workload:
        ready, reconciling, stalled = _cache_conditions(
            cached, ready, step.stable_child is None, gen
        )
    progressing_status, progressing_reason, progressing_msg = step.decision.progressing
    desired_conds = [
        ready,
        reconciling,
        stalled,
        cond.condition(cond.SIZED, True, "Planned", _sized_message(chosen_plan), gen),
        *_autoscaling_conditions(dmd, old_status.get("autoscaling") or {}, gen),
        _slo_condition(dmd, gen),
        cond.condition(
            cond.ROLLOUT_PROGRESSING, progressing_status, progressing_reason, progressing_msg, gen
        ),
        *([cached.condition] if cached is not None else []),
    ]
    c = chosen_plan.chosen
    old_cost = _owned(old_status).get("cost")
    # Keep what the reconciler does not compute this time (the measured cost per token).
    per_mtok = old_cost.get("perMillionTokens") if isinstance(old_cost, Mapping) else None
    return DistilledModelDeploymentStatus(
        observed_generation=gen,
        conditions=cond.merge_conditions(old_conds, desired_conds, now),
        replicas=running,
        ready_replicas=ready_count,
        selector=rendered.selector,
        placement=PlacementStatus(
            gpu_type=c.gpu.name,
            gpu_product=c.gpu.product,
            gpu_count=c.gpus,
            tensor_parallel=c.tensor_parallel,
            pipeline_parallel=c.pipeline_parallel,
            nodes=c.nodes,
            expert_parallel=c.expert_parallel,
            quantization=c.quantization,
            summary=c.summary,
            memory=MemoryBreakdown(
                weights_gi_b=round(c.weights_gib, 2),
                kv_cache_gi_b=round(c.kv_needed_gib, 2),
                overhead_gi_b=round(c.overhead_gib, 2),
                free_gi_b=round(c.free_gib, 2),
                budget_gi_b=round(c.budget_gib, 2),
            ),
            kv_cache_tokens=c.kv_cache_tokens,
            max_concurrency=c.max_concurrency,
        ),
        cost=CostStatus(
            currency=chosen_plan.currency,
            per_replica_hour=round(c.cost_per_replica_hour, 4),
            current_per_hour=round(c.cost_per_replica_hour * running, 4),
            per_million_tokens=per_mtok,
        ),
        endpoint=rendered.endpoint,
        revision=rendered.revision,
        rollout=step.decision.status,
        cache=cached.status if cached is not None else None,
        startup=_startup_status(dmd, rendered, pods),
    )


def _cache_conditions(
    cached: CacheStep, ready: ConditionState, no_workload: bool, gen: Any
) -> tuple[ConditionState, ConditionState, ConditionState]:
    """Ready, Reconciling and Stalled while the serving pods wait for the weight cache.
    Pods already serving the previous revision keep Ready as it was."""
    failed = cached.status.phase == "Failed"
    reason = "WeightCacheFailed" if failed else "FillingWeightCache"
    if cached.status.phase == "Distributing":
        reason = "CopyingWeightsToNodes"
    message = cached.status.message or ""
    if no_workload:
        ready = cond.condition(cond.READY, False, reason, message, gen)
    if failed:
        return (
            ready,
            cond.condition(
                cond.RECONCILING, False, reason, "waiting for the fill to be retried", gen
            ),
            cond.condition(cond.STALLED, True, reason, message, gen),
        )
    return (
        ready,
        cond.condition(cond.RECONCILING, True, reason, message, gen),
        cond.condition(cond.STALLED, False, reason, "", gen),
    )


def _startup_status(
    dmd: DistilledModelDeployment, rendered: Rendered, pods: Sequence[PodInfo] | None
) -> StartupStatus:
    """The start-up estimate beside the median start-to-ready of the ready pods."""
    measured = sorted(
        p.start_to_ready_seconds
        for p in pods or ()
        if p.ready and not p.group_worker and p.start_to_ready_seconds is not None
    )
    median = measured[len(measured) // 2] if measured else None
    return StartupStatus(
        estimated_seconds=round(rendered.startup_seconds, 1),
        weights_from=weights_from(dmd),
        measured_seconds=round(median, 1) if median is not None else None,
        measured_pods=len(measured) or None,
    )


def _rollout_status(raw: Mapping[str, Any]) -> RolloutStatus:
    """status.rollout as a model. The last analysis is carried over from the old status:
    recorded in another shape, it is dropped rather than stopping the reconcile."""
    try:
        return RolloutStatus.model_validate(raw)
    except ValidationError:
        return RolloutStatus.model_validate({k: v for k, v in raw.items() if k != "lastAnalysis"})


def _track(
    child: ChildState | None, pods: Sequence[PodInfo] | None, track: str, revision: str
) -> TrackState | None:
    """A Deployment and the pods of the desired revision on its track."""
    if child is None:
        return None
    progressing = child.condition("Progressing")
    if pods is None:
        # Without a pod view, trust the Deployment's counts for its own revision.
        mine_ready = min(child.ready_replicas, child.updated_replicas)
        new_ready = mine_ready if child.revision == revision else 0
        stuck: list[str] = []
    else:
        mine = [p for p in pods if (p.track or "stable") == track and p.revision == revision]
        new_ready = sum(1 for p in mine if p.ready and not p.group_worker)
        stuck = list({p.replica: p.unschedulable for p in mine if p.unschedulable}.values())
    return TrackState(
        revision=child.revision,
        spec_replicas=child.spec_replicas,
        replicas=child.replicas,
        ready=child.ready_replicas,
        updated=child.updated_replicas,
        generation=child.generation,
        observed_generation=child.observed_generation,
        deadline_exceeded=progressing is not None and progressing[1] == "ProgressDeadlineExceeded",
        one_at_a_time=child.one_at_a_time,
        new_ready=new_ready,
        new_unschedulable=len(stuck),
        unschedulable_message=stuck[0] if stuck else "",
    )


def _criteria(dmd: DistilledModelDeployment) -> Criteria | None:
    canary = dmd.spec.rollout.canary
    if canary is None:
        return None
    slo = dmd.spec.scaling.slo
    return Criteria(
        max_ttft_ratio=canary.analysis.max_ttft_ratio,
        max_error_rate=canary.analysis.max_error_rate,
        min_requests=canary.analysis.min_requests,
        percentile=slo.percentile,
        slo_ttft_seconds=slo.ttft_seconds,
        failure_signal=ENGINES[dmd.spec.serving.engine].analysis.failure_signal,
    )
