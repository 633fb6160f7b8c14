"""The reconciler's decision as a pure function: what to apply, what status to write."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from distillery.api.types import DistilledModelDeploymentStatus
from distillery.autoscale.inputs import PodInfo, pod_failure
from distillery.catalog import load_catalog
from distillery.reconcile import desired_state
from distillery.reconcile.children import APPLIED_HASH, ChildState, child_state, foreign_conflicts
from tests.support.dmds import dmd as support_dmd
from tests.support.dmds import spec as dmd_spec
from tests.support.fake_cluster import observed

CATALOG = load_catalog()
NOW = "2026-11-27T12:00:00Z"
LATER = "2026-11-27T12:05:00Z"


def dmd(spec: dict[str, Any] | None = None, status: dict[str, Any] | None = None) -> dict[str, Any]:
    default = dmd_spec("Qwen-1.5B", "nvidia-l4", scaling={"minReplicas": 2, "maxReplicas": 4})
    return support_dmd("m", spec or default, namespace="ns", status=status, uid="u-1", generation=2)


def live(objects: list[dict[str, Any]], ready: int) -> dict[str, ChildState]:
    """Children as the API server would return them after an apply, with a Deployment
    status of ``ready`` ready replicas."""
    return {obj["kind"]: child_state(observed(obj, ready)) for obj in objects}


def roundtrip(status: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(json.dumps(status))
    return out


def test_first_reconcile_creates_children_and_says_so() -> None:
    d = desired_state(dmd(), {}, CATALOG, now=NOW)
    assert [o["kind"] for o in d.apply] == ["Deployment", "Service", "PodDisruptionBudget"]
    assert all(o["metadata"]["annotations"][APPLIED_HASH] for o in d.apply)
    conds = {c["type"]: c for c in d.status["conditions"]}
    assert conds["Ready"]["status"] == "False" and conds["Ready"]["reason"] == "Creating"
    assert conds["Reconciling"]["status"] == "True"
    assert conds["Sized"]["status"] == "True" and "1x nvidia-l4" in conds["Sized"]["message"]
    assert d.status["selector"] == "distillery.dev/deployment=m"
    assert d.status["placement"]["summary"] == "nvidia-l4x1"
    assert d.status_changed
    assert [e.reason for e in d.events] == ["Planned"]
    # The status fits the CRD's status schema (nothing would be pruned).
    DistilledModelDeploymentStatus.model_validate(roundtrip(d.status))


def test_steady_state_writes_nothing() -> None:
    first = desired_state(dmd(), {}, CATALOG, now=NOW)
    children = live(first.apply, ready=2)
    second = desired_state(dmd(status=roundtrip(first.status)), children, CATALOG, now=LATER)
    assert second.apply == []
    conds = {c["type"]: c for c in second.status["conditions"]}
    assert conds["Ready"]["status"] == "True" and conds["Ready"]["reason"] == "Ready"
    assert conds["Ready"]["lastTransitionTime"] == LATER
    assert conds["Sized"]["lastTransitionTime"] == NOW  # unchanged status keeps its time
    assert [e.reason for e in second.events] == ["Ready"]
    third = desired_state(dmd(status=roundtrip(second.status)), children, CATALOG, now=LATER)
    assert third.apply == [] and not third.status_changed and third.events == []
    assert third.status["cost"]["currentPerHour"] == 2 * 0.80


def test_spec_change_reapplies_only_what_changed() -> None:
    first = desired_state(dmd(), {}, CATALOG, now=NOW)
    children = live(first.apply, ready=2)
    spec = dmd()["spec"]
    spec["model"]["revision"] = "v2"
    changed = desired_state(
        dmd(spec=spec, status=roundtrip(first.status)), children, CATALOG, now=LATER
    )
    assert [o["kind"] for o in changed.apply] == ["Deployment"]
    assert changed.apply_reasons == {"Deployment": "changed"}


def test_does_not_fit_stalls_and_touches_nothing() -> None:
    first = desired_state(dmd(), {}, CATALOG, now=NOW)
    children = live(first.apply, ready=2)
    spec = {
        "model": {"name": "deepseek-ai/DeepSeek-R1-Distill-Llama-70B", "quantization": "none"},
        "placement": {"gpuTypes": ["nvidia-t4"], "maxNodesPerReplica": 1},
    }
    d = desired_state(dmd(spec=spec, status=roundtrip(first.status)), children, CATALOG, now=LATER)
    assert d.apply == [] and d.stalled_reason == "DoesNotFit"
    conds = {c["type"]: c for c in d.status["conditions"]}
    assert conds["Stalled"]["status"] == "True"
    assert "does not fit nvidia-t4" in conds["Stalled"]["message"]
    assert "Would fit" in conds["Ready"]["message"]
    assert conds["Sized"]["status"] == "False"
    assert [(e.type, e.reason) for e in d.events] == [("Warning", "DoesNotFit")]
    # The fields of the last good placement stay, so users still see what runs.
    assert d.status["placement"]["summary"] == "nvidia-l4x1"


def test_invalid_spec_is_stalled_not_crashed() -> None:
    d = desired_state(
        dmd(spec={"model": {"name": "x"}, "scaling": {"minReplicas": 9, "maxReplicas": 1}}),
        {},
        CATALOG,
        now=NOW,
    )
    assert d.stalled_reason == "InvalidSpec" and d.apply == []
    assert "minReplicas" in d.status["conditions"][0]["message"]


def test_missing_template_is_stalled() -> None:
    d = desired_state(dmd(), {}, CATALOG, now=NOW, user_template_error="ConfigMap t not found")
    assert d.stalled_reason == "TemplateNotFound" and d.apply == []


def test_foreign_edit_is_taken_back() -> None:
    ours: dict[str, Any] = {
        "f:spec": {
            "f:template": {
                "f:spec": {"f:containers": {'k:{"name":"engine"}': {"f:args": {}, "f:image": {}}}}
            }
        }
    }
    theirs: dict[str, Any] = {
        "f:spec": {
            "f:template": {"f:spec": {"f:containers": {'k:{"name":"engine"}': {"f:args": {}}}}}
        }
    }
    unrelated: dict[str, Any] = {"f:metadata": {"f:annotations": {"f:team": {}}}}
    entries: list[Mapping[str, Any]] = [
        {"manager": "distillery", "operation": "Apply", "fieldsV1": ours},
        {"manager": "kubectl-edit", "operation": "Update", "fieldsV1": theirs},
        {"manager": "someone", "operation": "Update", "fieldsV1": unrelated},
        {"manager": "kube-controller-manager", "operation": "Update", "fieldsV1": ours},
    ]
    assert foreign_conflicts(entries) == ["kubectl-edit"]
    first = desired_state(dmd(), {}, CATALOG, now=NOW)
    children = live(first.apply, ready=2)
    dep = children["Deployment"]
    children["Deployment"] = ChildState(**{**dep.__dict__, "conflicts": ("kubectl-edit",)})
    d = desired_state(dmd(status=roundtrip(first.status)), children, CATALOG, now=LATER)
    assert [o["kind"] for o in d.apply] == ["Deployment"]
    assert d.apply_reasons["Deployment"] == "edited by kubectl-edit"


def test_replicas_clamped_and_scaling_reported() -> None:
    spec = dmd()["spec"]
    spec["replicas"] = 10
    d = desired_state(dmd(spec=spec), {}, CATALOG, now=NOW)
    assert d.apply[0]["spec"]["replicas"] == 4
    first = desired_state(dmd(), {}, CATALOG, now=NOW)
    children = live(first.apply, ready=2)
    spec["replicas"] = 3
    up = desired_state(dmd(spec=spec, status=roundtrip(first.status)), children, CATALOG, now=LATER)
    conds = {c["type"]: c for c in up.status["conditions"]}
    assert conds["Reconciling"]["reason"] == "ScalingUp"
    assert up.apply[0]["spec"]["replicas"] == 3


def test_an_update_that_took_ownership_is_still_seen() -> None:
    """After `kubectl patch`, the API server moves the edited field to the patcher: what
    distillery owns no longer shows it; what distillery wants does."""
    from distillery.reconcile.children import edited_by, foreign_fields

    entries: list[Mapping[str, Any]] = [
        {
            "manager": "kubectl-patch",
            "operation": "Update",
            "fieldsV1": {
                "f:spec": {
                    "f:template": {
                        "f:spec": {"f:containers": {'k:{"name":"engine"}': {"f:args": {}}}}
                    }
                }
            },
        },
        {
            "manager": "kubectl-annotate",
            "operation": "Update",
            "fieldsV1": {"f:metadata": {"f:annotations": {"f:team": {}}}},
        },
        {
            "manager": "kube-controller-manager",
            "operation": "Update",
            "fieldsV1": {"f:spec": {"f:replicas": {}}},
        },
    ]
    first = desired_state(dmd(), {}, CATALOG, now=NOW)
    deployment = first.apply[0]
    assert edited_by(foreign_fields(entries), deployment) == ["kubectl-patch"]
    assert edited_by(foreign_fields(entries[1:]), deployment) == []


# Container statuses as the kubelet writes them.
OOM_LOOP = {
    "containerStatuses": [
        {
            "name": "engine",
            "ready": False,
            "restartCount": 3,
            "state": {
                "waiting": {
                    "reason": "CrashLoopBackOff",
                    "message": "back-off 40s restarting failed container=engine",
                }
            },
            "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137}},
        }
    ]
}
MISSING_SECRET = {
    "containerStatuses": [
        {
            "name": "engine",
            "ready": False,
            "restartCount": 0,
            "state": {
                "waiting": {
                    "reason": "CreateContainerConfigError",
                    "message": 'secret "hf-token" not found',
                }
            },
        }
    ]
}


def test_pod_failure_reads_the_kubelet_states() -> None:
    oom = pod_failure(OOM_LOOP)
    assert oom is not None and oom.reason == "CrashLoopBackOff"
    assert "last exit: OOMKilled, code 137" in oom.message
    secret = pod_failure(MISSING_SECRET)
    assert secret is not None and secret.reason == "CreateContainerConfigError"
    assert 'secret "hf-token" not found' in secret.message
    assert secret.severity < oom.severity  # a missing Secret never clears on its own
    pull = pod_failure(
        {"containerStatuses": [{"name": "e", "state": {"waiting": {"reason": "ImagePullBackOff"}}}]}
    )
    assert pull is not None and pull.reason == "ImagePullBackOff"
    oom_state = {"terminated": {"reason": "OOMKilled", "exitCode": 137}}
    killed = pod_failure({"containerStatuses": [{"name": "e", "ready": False, "state": oom_state}]})
    assert killed is not None and killed.reason == "OOMKilled"
    starting = {
        "containerStatuses": [{"name": "e", "state": {"waiting": {"reason": "ContainerCreating"}}}]
    }
    assert pod_failure(starting) is None and pod_failure({}) is None


def test_ready_says_why_pods_fail_and_warns_once() -> None:
    first = desired_state(dmd(), {}, CATALOG, now=NOW)
    children = live(first.apply, ready=1)
    revision = first.apply[0]["spec"]["template"]["metadata"]["labels"]["distillery.dev/revision"]
    pods = [
        PodInfo("m-a", True, revision=revision),
        PodInfo("m-b", False, revision=revision, failure=pod_failure(OOM_LOOP)),
        PodInfo("m-c", False, revision=revision, failure=pod_failure(MISSING_SECRET)),
    ]
    d = desired_state(dmd(status=roundtrip(first.status)), children, CATALOG, now=LATER, pods=pods)
    ready = {c["type"]: c for c in d.status["conditions"]}["Ready"]
    assert ready["status"] == "False" and ready["reason"] == "CreateContainerConfigError"
    assert ready["message"].startswith("1/2 replicas ready; pod m-c: CreateContainerConfigError")
    assert "(2 pods failing)" in ready["message"]
    warnings = [e for e in d.events if e.type == "Warning"]
    assert [e.reason for e in warnings] == ["CreateContainerConfigError"]
    again = desired_state(dmd(status=roundtrip(d.status)), children, CATALOG, now=LATER, pods=pods)
    assert not [e for e in again.events if e.type == "Warning"]  # once per change


def test_terminating_pods_are_not_ready_capacity() -> None:
    first = desired_state(dmd(), {}, CATALOG, now=NOW)
    children = live(first.apply, ready=4)  # the Deployment still counts the old pods
    revision = first.apply[0]["spec"]["template"]["metadata"]["labels"]["distillery.dev/revision"]
    pods = [PodInfo(f"m-{i}", True, revision=revision, terminating=i >= 2) for i in range(4)]
    d = desired_state(dmd(status=roundtrip(first.status)), children, CATALOG, now=LATER, pods=pods)
    assert d.status["readyReplicas"] == 2
    ready = {c["type"]: c for c in d.status["conditions"]}["Ready"]
    assert ready["message"] == "2/2 replicas ready"


def test_scaling_limited_takes_its_reason_from_the_autoscaler() -> None:
    """The autoscaler says what holds it (limitedReason) and the reconciler shows it; a
    status from before limitedReason existed shows a generic reason, never a guess."""

    def limited(auto: dict[str, Any]) -> dict[str, Any]:
        d = desired_state(dmd(status={"autoscaling": auto}), {}, CATALOG, now=NOW)
        return next(c for c in d.status["conditions"] if c["type"] == "ScalingLimited")

    budget = {"limitedBy": "budget 30/h affords 4 replicas", "limitedReason": "BudgetLimited"}
    c = limited(budget)
    assert (c["status"], c["reason"], c["message"]) == (
        "True",
        "BudgetLimited",
        "budget 30/h affords 4 replicas",
    )
    assert limited({"limitedBy": "budget 30/h affords 4 replicas"})["reason"] == "Limited"
    assert limited({})["reason"] == "WithinLimits"


def test_the_status_written_is_what_the_crd_schema_keeps() -> None:
    """The API server prunes status fields its schema does not have, silently: every
    status the reconciler computes must validate against the status model the CRD is
    generated from (which forbids unknown fields)."""
    from distillery.api.types import DistilledModelDeploymentStatus
    from tests.render_cases import CASES

    for case in CASES.values():
        first = desired_state(case, {}, CATALOG, now=NOW)
        if first.stalled_reason:
            continue
        DistilledModelDeploymentStatus.model_validate(first.status)
        settled = desired_state(
            {**case, "status": roundtrip(first.status)},
            live(first.apply, ready=1),
            CATALOG,
            now=LATER,
        )
        DistilledModelDeploymentStatus.model_validate(settled.status)


def test_an_old_status_in_another_shape_is_dropped_not_fatal() -> None:
    """Status carried over from an older release or a hand edit: a condition without a
    reason and a lastAnalysis with a key the model no longer has are dropped; the
    reconcile goes on and writes a status the schema keeps."""
    first = desired_state(dmd(), {}, CATALOG, now=NOW)
    old = roundtrip(first.status)
    old["conditions"].append({"type": "Custom", "status": "True"})  # no reason, no time
    d = desired_state(dmd(status=old), live(first.apply, ready=2), CATALOG, now=LATER)
    assert "Custom" not in {c["type"] for c in d.status["conditions"]}
    assert {c["type"] for c in d.status["conditions"]} >= {"Ready", "Sized"}
    DistilledModelDeploymentStatus.model_validate(d.status)
    # A canary in progress carries its last analysis over: in another shape, it goes.
    from distillery.reconcile.desired import _rollout_status

    carried = {
        "strategy": "Canary",
        "phase": "Progressing",
        "step": 1,
        "lastAnalysis": {"time": NOW, "step": 1, "result": "Pass", "oldKey": 1.0},
    }
    kept = _rollout_status(carried)
    assert kept.last_analysis is None and kept.phase == "Progressing" and kept.step == 1
