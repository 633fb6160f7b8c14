"""Where a DMD's weight cache stands, and what that means for its children (pure).

The cache of the revision the spec asks for is *Filling* until its Job completes,
*Ready* after, *Failed* when the Job gave up. Until it is Ready the serving workload
is held: a new DMD gets no pods (no GPU is paid for while weights download), and a
revision change keeps the running pods on the old cache until the new one is complete,
so the rollout that follows starts from a full cache. Once Ready, the caches of earlier
revisions are retired and deleted after the spec's grace period (Kubernetes keeps a
claim a pod still mounts until that pod is gone).

What the fill said comes from its pod: the one-line JSON summary or error that
``distillery cache-fill`` leaves in the termination log, or the kubelet's reason when
the pod cannot start at all (a missing Secret, an image that cannot be pulled).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from distillery.api import conditions as cond
from distillery.api.conditions import ConditionState
from distillery.api.types import CacheStatus, DistilledModelDeployment, RetiredCache
from distillery.autoscale.inputs import PodFailure, pod_failure
from distillery.reconcile.children import ChildState, child_key
from distillery.render.cache import PROGRESS_PREFIX, WeightCache

PVC_KIND = "PersistentVolumeClaim"
JOB_KIND = "Job"
DAEMONSET_KIND = "DaemonSet"
CACHE_KINDS = (PVC_KIND, JOB_KIND, DAEMONSET_KIND)
WEIGHTS_CACHED = "WeightsCached"
FILLING, DISTRIBUTING, READY, FAILED = "Filling", "Distributing", "Ready", "Failed"


@dataclass(frozen=True)
class FillPod:
    """A pod of a fill Job, reduced to what the DMD's status says about it."""

    job: str
    name: str
    phase: str  # Pending | Running | Succeeded | Failed
    message: str | None = None  # the container's termination message
    failure: PodFailure | None = None  # why it cannot run (missing Secret, bad image)
    finished_at: str = ""  # when its container terminated (RFC 3339): the newest speaks
    progress_bytes: int | None = None  # a running fill's bytes on disk, from its log


def parse_progress(log: str) -> int | None:
    """The bytes of the last progress line in a fill pod's log (see cachefill)."""
    for line in reversed(log.splitlines()):
        if line.startswith(PROGRESS_PREFIX):
            try:
                data = json.loads(line[len(PROGRESS_PREFIX) :])
            except ValueError:
                return None
            done = data.get("bytes") if isinstance(data, dict) else None
            return int(done) if isinstance(done, int | float) and done >= 0 else None
    return None


@dataclass(frozen=True)
class CacheStep:
    """The cache's state and what it changes about this reconcile."""

    status: CacheStatus
    condition: ConditionState
    hold_workload: bool  # serving pods wait for the cache
    drop_job: bool  # the Job exists: its template is immutable, never re-applied
    drop_prepull: bool = False  # NodeLocal while the claim fills: nothing to copy yet
    delete: list[tuple[str, str]] = field(default_factory=list)  # (kind, name)


JOB_NAME_LABEL = "batch.kubernetes.io/job-name"


def fill_pod(body: Mapping[str, Any]) -> FillPod:
    """A fill Job's pod from its API object."""
    meta, status = body.get("metadata") or {}, body.get("status") or {}
    message, finished = None, ""
    for cs in status.get("containerStatuses") or []:
        terminated = (cs.get("state") or {}).get("terminated") or {}
        message = terminated.get("message") or message
        finished = str(terminated.get("finishedAt") or finished)
    return FillPod(
        job=str((meta.get("labels") or {}).get(JOB_NAME_LABEL, "")),
        name=str(meta.get("name", "")),
        phase=str(status.get("phase") or "Pending"),
        message=message,
        failure=pod_failure(status),
        finished_at=finished,
    )


def _report(pods: Sequence[FillPod], job: str) -> dict[str, Any]:
    """The newest termination message of the Job's pods, parsed: after a retry, the
    attempt that succeeded (or failed last) speaks, not the first one."""
    mine = sorted(
        (p for p in pods if p.job == job),
        key=lambda p: (p.phase == "Succeeded", p.finished_at, p.name),
        reverse=True,
    )
    for pod in mine:
        if pod.message:
            try:
                data = json.loads(pod.message.strip().splitlines()[-1])
            except (ValueError, IndexError):
                return {"error": pod.message.strip()[-512:]}
            if isinstance(data, dict):
                return data
    return {}


def _progress(pods: Sequence[FillPod], job: str) -> int | None:
    """How far the running fill of ``job`` is (the most a pod of it reported)."""
    seen = [p.progress_bytes for p in pods if p.job == job and p.progress_bytes is not None]
    return max(seen) if seen else None


def _stuck(pods: Sequence[FillPod], job: str) -> str | None:
    """Why the Job's pod cannot run, when it cannot (the Job itself would wait forever)."""
    for pod in pods:
        if pod.job == job and pod.failure is not None and pod.phase == "Pending":
            return f"pod {pod.name}: {pod.failure.reason}: {pod.failure.message}"
    return None


def _seconds_between(start: str, end: str) -> float:
    return cond.parse_rfc3339(end) - cond.parse_rfc3339(start)


def cache_step(
    dmd: DistilledModelDeployment,
    cache: WeightCache,
    children: Mapping[str, ChildState],
    fill_pods: Sequence[FillPod],
    old: Mapping[str, Any] | None,
    now: str,
    gen: int | None,
) -> CacheStep:
    """The cache's phase from its Job, the DMD's ``WeightsCached`` condition, whether
    the workload waits, and which retired caches are due for deletion."""
    name = dmd.name
    pvc = children.get(child_key(PVC_KIND, cache.claim, name))
    job = children.get(child_key(JOB_KIND, cache.job, name))
    # What the last status said of this same claim (nothing after a revision change).
    prev = old if old and old.get("claim") == cache.claim else {}
    complete = job is not None and (job.condition("Complete") or ("",))[0] == "True"
    failed = job is not None and (job.condition("Failed") or ("",))[0] == "True"
    report = _report(fill_pods, cache.job)
    stuck = _stuck(fill_pods, cache.job)
    written_so_far = _progress(fill_pods, cache.job)
    delete: list[tuple[str, str]] = []
    drop_job = job is not None
    if job is not None and pvc is None and prev.get("phase") == READY:
        # The claim was deleted under a complete Job: fill a new one from scratch.
        delete.append((JOB_KIND, cache.job))
        complete = failed = False
    if complete and pvc is not None:
        phase, message = READY, f"{cache.claim} holds {cache.source}"
    elif failed:
        why = str(report.get("error") or "")
        if not why and job is not None:
            why = (job.condition("Failed") or ("", "", ""))[2]
        phase = FAILED
        message = (
            f"filling {cache.claim} from {cache.source} failed: {why or 'see the Job'}; "
            f"fix the cause, then delete Job {cache.job} to retry"
        )
    else:
        phase = FILLING
        so_far = (
            f", {written_so_far / 1e9:.1f} of {cache.expected_bytes / 1e9:.1f} GB written"
            if written_so_far is not None and cache.expected_bytes
            else ""
        )
        message = (
            f"filling {cache.claim} from {cache.source} (about {cache.fill_seconds:.0f}s at "
            f"the source's bandwidth{so_far}); serving pods start when it is complete"
        )
        if stuck:
            message += f"; {stuck}"
    started = prev.get("startedAt") or now
    completed = prev.get("completedAt") if prev.get("phase") == READY else None
    if phase == READY and completed is None:
        completed = now
    written = report.get("bytes") if phase == READY else None
    nodes = nodes_ready = None
    if cache.prepull is not None and phase == READY:
        phase, message, nodes, nodes_ready = _distribution(cache, children, name, prev)
    retired, due = _retire(dmd, cache, children, old, now, phase == READY)
    delete += due
    current = cache.prepull["metadata"]["name"] if cache.prepull is not None else None
    # Another revision's (or mode's) copies: their DaemonSet goes at once; the folders
    # stay on the nodes, so a pod of that revision still starting reads its copy.
    delete += sorted(
        (DAEMONSET_KIND, s.name)
        for s in children.values()
        if s.kind == DAEMONSET_KIND and s.name != current
    )
    status = CacheStatus(
        claim=cache.claim,
        source=cache.source,
        phase=phase,
        expected_bytes=cache.expected_bytes,
        bytes=int(written) if isinstance(written, int | float) else prev.get("bytes"),
        started_at=started,
        completed_at=completed if phase == READY else None,
        estimated_fill_seconds=round(cache.fill_seconds, 1),
        filled_bytes=written_so_far if phase == FILLING else None,
        nodes=nodes,
        nodes_ready=nodes_ready,
        message=message,
        retired=retired,
    )
    reason = {
        READY: "Filled",
        FAILED: "FillFailed",
        FILLING: "Filling",
        DISTRIBUTING: "Distributing",
    }[phase]
    if phase == FILLING and stuck:
        reason = "FillBlocked"
    return CacheStep(
        status=status,
        condition=cond.condition(WEIGHTS_CACHED, phase == READY, reason, message, gen),
        hold_workload=phase != READY,
        drop_job=drop_job,
        drop_prepull=phase in (FILLING, FAILED),
        delete=delete,
    )


def _distribution(
    cache: WeightCache, children: Mapping[str, ChildState], name: str, prev: Mapping[str, Any]
) -> tuple[str, str, int | None, int | None]:
    """A NodeLocal cache once its claim is full: Distributing (replicas held) until every
    node the pre-pull DaemonSet runs on has a complete copy, then Ready. Once Ready it
    stays Ready: a node that joins later gets its copy while the replicas already
    serving go on, and a replica scheduled there waits for that node's copy. A pool with
    no node yet holds nothing, or no replica would ever ask the cluster for one."""
    assert cache.prepull is not None
    ds = children.get(child_key(DAEMONSET_KIND, cache.prepull["metadata"]["name"], name))
    # Counts only once the DaemonSet controller has seen this generation.
    counted = ds if ds is not None and ds.observed_generation >= ds.generation > 0 else None
    nodes = counted.replicas if counted is not None else None
    ready = counted.ready_replicas if counted is not None else None
    was_ready = prev.get("phase") == READY and prev.get("nodesReady") is not None
    held = f"{cache.claim} holds {cache.source}"
    if nodes is None or ready is None:
        if was_ready:
            return READY, f"{held}; copying it to the nodes", None, None
        return DISTRIBUTING, f"{held}; starting its copy to every node of the pool", None, None
    if nodes == 0:
        message = f"{held}; no node of the pool yet: each replica waits for its node's copy"
        return READY, message, 0, 0
    if ready >= nodes:
        return READY, f"{held}, copied to all {nodes} node(s) of the pool", nodes, ready
    copying = f"copied to {ready}/{nodes} node(s) of the pool"
    if was_ready:
        return READY, f"{held}, {copying}: a replica on another waits for it", nodes, ready
    return DISTRIBUTING, f"{held}; {copying}: serving pods start when all are", nodes, ready


def unused_caches(children: Mapping[str, ChildState]) -> list[tuple[str, str]]:
    """Every cache claim and fill Job of a DMD whose spec no longer has a cache."""
    return sorted((s.kind, s.name) for s in children.values() if s.kind in CACHE_KINDS)


def _retire(
    dmd: DistilledModelDeployment,
    cache: WeightCache,
    children: Mapping[str, ChildState],
    old: Mapping[str, Any] | None,
    now: str,
    current_ready: bool,
) -> tuple[list[RetiredCache], list[tuple[str, str]]]:
    """Caches of other revisions: kept while the current one fills (pods still read
    them), then timed from when it became Ready and deleted after the grace period."""
    if not current_ready:
        return [], []
    grace = dmd.spec.model.cache.previous_revision_grace_seconds
    since_of = {
        str(r.get("claim")): str(r.get("since"))
        for r in (old or {}).get("retired") or []
        if isinstance(r, Mapping) and r.get("claim") and r.get("since")
    }
    others = sorted(
        s.name for s in children.values() if s.kind == PVC_KIND and s.name != cache.claim
    )
    jobs = {s.name for s in children.values() if s.kind == JOB_KIND and s.name != cache.job}
    kept: list[RetiredCache] = []
    due: list[tuple[str, str]] = []
    for claim in others:
        since = since_of.get(claim, now)
        if _seconds_between(since, now) >= grace:
            due.append((PVC_KIND, claim))
            # The fill Job of that claim: same key, named after it (see render.cache).
            key = claim.rsplit("-", 1)[-1]
            due += [(JOB_KIND, j) for j in sorted(jobs) if j.endswith(f"-weights-{key}")]
        else:
            kept.append(RetiredCache(claim=claim, since=since))
    return kept[:16], due
