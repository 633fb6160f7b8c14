"""The operator against the real control plane: create, roll, scale, stall, restart."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from kubernetes import client

from distillery.kube.retry import RetrySchedule
from tests.integration.operator_process import OperatorProcess
from tests.integration.waits import POD_START, Bounds, Dmds, wait_for
from tests.support.dmds import spec

pytestmark = pytest.mark.cluster
# The retry schedule's longest wait (distillery.kube.retry.RetrySchedule).
RETRY_CAP_SECONDS = RetrySchedule().cap


QWEN7B_H100 = spec("Qwen-7B", "nvidia-h100-80gb", scaling={"minReplicas": 1, "maxReplicas": 3})


def conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions", [])}


def test_create_children_and_ready(operator: OperatorProcess, dmds: Dmds) -> None:
    dmds.apply("qwen", QWEN7B_H100)
    dmds.wait_condition("qwen", "Ready", operator.bounds.ready)
    dmd = dmds.get("qwen")
    apps, core = dmds.apps, dmds.core
    dep = apps.read_namespaced_deployment("qwen", dmds.namespace)
    svc = core.read_namespaced_service("qwen", dmds.namespace)
    pdb = client.PolicyV1Api(dmds.api_client).read_namespaced_pod_disruption_budget(
        "qwen", dmds.namespace
    )
    for obj in (dep, svc, pdb):
        ref = obj.metadata.owner_references[0]
        assert (ref.kind, ref.name, ref.uid, ref.controller) == (
            "DistilledModelDeployment",
            "qwen",
            dmd["metadata"]["uid"],
            True,
        )
    limits = dep.spec.template.spec.containers[0].resources.limits
    assert limits["nvidia.com/gpu"] == "1"
    assert not dmd["metadata"].get("finalizers"), "a finalizer would block deletes"
    status = dmd["status"]
    assert status["observedGeneration"] == dmd["metadata"]["generation"]
    assert status["readyReplicas"] == 1 and status["replicas"] == 1
    assert status["placement"]["summary"] == "nvidia-h100-80gbx1"
    assert status["endpoint"] == f"http://qwen.{dmds.namespace}.svc.cluster.local:8000/v1"
    assert status["cost"]["currentPerHour"] == pytest.approx(6.88)
    conds = conditions(dmd)
    assert conds["Stalled"]["status"] == "False" and conds["Reconciling"]["status"] == "False"
    pods = core.list_namespaced_pod(dmds.namespace, label_selector=status["selector"]).items
    assert len(pods) == 1 and pods[0].spec.node_name.startswith("h100-")
    row = dmds.cluster.kubectl("get", "dmd", "qwen", "-n", dmds.namespace, "--no-headers").split()
    assert row[1:4] == ["deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", "nvidia-h100-80gbx1", "1"]
    assert row[6] == "Ready"
    reasons = [
        e.reason
        for e in core.list_namespaced_event(dmds.namespace).items
        if e.involved_object.kind == "DistilledModelDeployment"
    ]
    assert "Planned" in reasons and "Ready" in reasons


def test_watches_only_its_own_children_and_pods(operator: OperatorProcess, dmds: Dmds) -> None:
    """The API server filters the watches of children and pods by the managed-by label,
    and pages the first listing: the operator never receives (decodes, remembers) the
    other Deployments, Services and Pods of the namespaces it watches."""
    dmds.apply("qwen", QWEN7B_H100)
    dmds.wait_condition("qwen", "Ready", operator.bounds.ready)
    filtered = {"deployments", "services", "poddisruptionbudgets", "pods"}

    def reads() -> list[dict[str, Any]]:
        return [
            r
            for r in dmds.cluster.operator_requests(dmds.namespace, verbs=("list", "watch"))
            if r["objectRef"].get("resource") in filtered
        ]

    def watched() -> set[str]:
        return {r["objectRef"]["resource"] for r in reads() if r["verb"] == "watch"}

    wait_for(
        lambda: watched() >= filtered,
        "the operator's watches of children and pods in the audit log",
        operator.bounds.reconcile,
        describe=lambda: f"watched so far: {sorted(watched())}",
    )
    for r in reads():
        query = parse_qs(urlsplit(r["requestURI"]).query)
        assert query.get("labelSelector") == ["app.kubernetes.io/managed-by=distillery"], r[
            "requestURI"
        ]
        if r["verb"] == "list":
            assert query.get("limit") == ["500"], r["requestURI"]
    assert any(r["verb"] == "list" for r in reads())


def test_roll_scale_and_delete(operator: OperatorProcess, dmds: Dmds) -> None:
    bounds = operator.bounds
    dmds.apply("qwen", QWEN7B_H100)
    dmds.wait_condition("qwen", "Ready", bounds.ready)
    apps = dmds.apps
    before = dmds.get("qwen")["status"]["revision"]
    # A new model revision rolls the pods.
    dmds.patch("qwen", {"spec": {"model": {"revision": "v2"}}})

    def rolled() -> bool:
        dep = apps.read_namespaced_deployment("qwen", dmds.namespace)
        args = dep.spec.template.spec.containers[0].args
        return args[args.index("--revision") + 1] == "v2" and (
            dep.status.updated_replicas == 1 and dep.status.ready_replicas == 1
        )

    dmds.wait("qwen", rolled, "rolled to v2", bounds.ready)
    dmds.wait(
        "qwen",
        lambda: dmds.get("qwen")["status"]["revision"] != before,
        "status revision updated",
        bounds.reconcile,
    )
    # Raising minReplicas raises the replicas.
    dmds.patch("qwen", {"spec": {"scaling": {"minReplicas": 2}}})
    dmds.wait(
        "qwen",
        lambda: apps.read_namespaced_deployment("qwen", dmds.namespace).spec.replicas == 2,
        "Deployment at 2 replicas",
        bounds.reconcile,
    )
    # kubectl scale goes through /scale; above maxReplicas it is clamped.
    dmds.cluster.kubectl("scale", "dmd/qwen", "-n", dmds.namespace, "--replicas=3")
    dmds.wait(
        "qwen",
        lambda: apps.read_namespaced_deployment("qwen", dmds.namespace).spec.replicas == 3,
        "Deployment at 3 replicas",
        bounds.reconcile,
    )
    dmds.wait(
        "qwen",
        lambda: dmds.get("qwen")["status"].get("readyReplicas") == 3,
        "3 ready replicas",
        bounds.ready,
    )
    dmds.cluster.kubectl("scale", "dmd/qwen", "-n", dmds.namespace, "--replicas=9")
    # The clamp is the reconcile's answer to the change: one reconcile later, still 3.
    dmds.wait(
        "qwen",
        lambda: (
            dmds.get("qwen")["metadata"]["generation"]
            == dmds.get("qwen")["status"]["observedGeneration"]
        ),
        "the /scale change observed",
        bounds.reconcile,
    )
    # Children are applied before status, so the observed generation's Deployment is final.
    assert apps.read_namespaced_deployment("qwen", dmds.namespace).spec.replicas == 3
    # Delete: children are garbage-collected.
    dmds.cluster.kubectl("delete", "dmd", "qwen", "-n", dmds.namespace, "--wait=true")
    core = dmds.core
    wait_for(
        lambda: (
            not apps.list_namespaced_deployment(dmds.namespace).items
            and not core.list_namespaced_service(dmds.namespace).items
            and not core.list_namespaced_pod(dmds.namespace).items
        ),
        "children collected",
        bounds.reconcile,
    )


def test_does_not_fit_stalls_then_recovers(operator: OperatorProcess, dmds: Dmds) -> None:
    dmds.apply("big", spec("Llama-70B", "nvidia-t4", quantization="none"))
    dmds.wait_condition("big", "Stalled", operator.bounds.reconcile)
    conds = conditions(dmds.get("big"))
    assert conds["Stalled"]["reason"] == "DoesNotFit"
    assert "does not fit nvidia-t4" in conds["Stalled"]["message"]
    assert "Would fit" in conds["Stalled"]["message"]
    assert conds["Ready"]["status"] == "False"
    assert not dmds.apps.list_namespaced_deployment(dmds.namespace).items
    # Fix the spec: it recovers.
    dmds.patch("big", {"spec": {"placement": {"gpuTypes": ["nvidia-h100-80gb"]}}})
    dmds.wait_condition("big", "Ready", operator.bounds.ready)
    conds = conditions(dmds.get("big"))
    assert conds["Stalled"]["status"] == "False"
    assert dmds.get("big")["status"]["placement"]["gpuCount"] == 4


def test_plans_fit_the_nodes_the_cluster_has(operator: OperatorProcess, dmds: Dmds) -> None:
    # The local cluster's L4 nodes carry one GPU each (hack/inventory.yaml); the catalog
    # allows 8 per node. A 14B needs two L4s: no node offers them, so it stalls with the
    # reason instead of a Deployment that stays Pending forever.
    dmds.apply("l4-14b", spec("Qwen-14B", "nvidia-l4", quantization="none"))
    message = dmds.wait_condition("l4-14b", "Stalled", operator.bounds.reconcile)["message"]
    assert "does not fit nvidia-l4" in message, message
    assert "2 GPUs exceed the 1 nvidia-l4 this cluster's largest node offers" in message, message
    # A 7B at 16k context with no maxConcurrency written fits one L4 and serves.
    small = spec("Qwen-7B", "nvidia-l4", quantization="none", serving={"maxModelLen": 16384})
    dmds.apply("l4-7b", small)
    dmds.wait_condition("l4-7b", "Ready", operator.bounds.ready)
    placement = dmds.get("l4-7b")["status"]["placement"]
    assert (placement["gpuType"], placement["gpuCount"]) == ("nvidia-l4", 1)


def test_ready_names_the_failing_container(operator: OperatorProcess, dmds: Dmds) -> None:
    dmds.apply("oom", QWEN7B_H100)
    dmds.wait_condition("oom", "Ready", operator.bounds.ready)
    core = dmds.core
    selector = dmds.get("oom")["status"]["selector"]
    [pod] = core.list_namespaced_pod(dmds.namespace, label_selector=selector).items
    # What the kubelet writes when vLLM is OOM-killed loading weights and restarts.
    status = {
        "status": {
            "conditions": [
                {"type": "Ready", "status": "False", "reason": "ContainersNotReady"},
                {"type": "ContainersReady", "status": "False", "reason": "ContainersNotReady"},
            ],
            "containerStatuses": [
                {
                    "name": pod.spec.containers[0].name,
                    "image": pod.spec.containers[0].image,
                    "imageID": "",
                    "ready": False,
                    "restartCount": 4,
                    "started": False,
                    "state": {
                        "waiting": {
                            "reason": "CrashLoopBackOff",
                            "message": "back-off 1m20s restarting failed container",
                        }
                    },
                    "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137}},
                }
            ],
        }
    }
    dmds.cluster.kubectl(
        "patch", "pod", str(pod.metadata.name), "-n", dmds.namespace, "--subresource=status",
        "--type=strategic", "-p", json.dumps(status),
    )  # fmt: skip

    # The Warning event carries Ready's message when Ready turns to the crash loop; it
    # stays, while the condition may move on if kwok sets the pod Running again.
    def warned() -> list[Any]:
        return [
            e
            for e in core.list_namespaced_event(dmds.namespace).items
            if e.involved_object.kind == "DistilledModelDeployment"
            and e.type == "Warning"
            and e.reason == "CrashLoopBackOff"
        ]

    [event] = dmds.wait("oom", warned, "Ready to name the crash loop", operator.bounds.reconcile)
    assert f"pod {pod.metadata.name}: CrashLoopBackOff" in event.message, event.message
    assert "last exit: OOMKilled, code 137" in event.message, event.message
    ready = conditions(dmds.get("oom"))["Ready"]
    if ready["reason"] == "CrashLoopBackOff":  # still crash-looping as the kubelet said
        assert ready["status"] == "False" and ready["message"] == event.message


def test_restart_and_idle_cost_no_writes(operator: OperatorProcess, dmds: Dmds) -> None:
    bounds = operator.bounds
    dmds.apply("qwen", QWEN7B_H100)
    dmds.wait_condition("qwen", "Ready", bounds.ready)
    # Let the autoscaler's first pass and the status it causes land.
    dmds.wait(
        "qwen",
        lambda: dmds.condition("qwen", "MetricsAvailable").get("reason") == "MetricsMissing",
        "the autoscaler's first pass",
        bounds.metrics,
    )
    seen: list[int] = []

    def settled() -> bool:
        seen.append(len(dmds.cluster.operator_writes(dmds.namespace)))
        return len(seen) >= 3 and seen[-1] == seen[-3]

    wait_for(settled, "no operator write for two seconds", bounds.reconcile, interval=1.0)

    def versions() -> dict[str, str]:
        apps, core = dmds.apps, dmds.core
        return {
            "dmd": str(dmds.get("qwen")["metadata"]["resourceVersion"]),
            "deployment": str(
                apps.read_namespaced_deployment("qwen", dmds.namespace).metadata.resource_version
            ),
            "service": str(
                core.read_namespaced_service("qwen", dmds.namespace).metadata.resource_version
            ),
        }

    before = versions()
    writes_before = len(dmds.cluster.operator_writes(dmds.namespace))
    assert writes_before > 0  # the audit log does see the operator's writes
    operator.kill()
    operator.start()
    # Restart, then idle for three resync periods and three autoscaler decisions.
    settings = operator.settings
    time.sleep(3 * max(settings.resync_interval_seconds, settings.autoscale_interval_seconds))
    writes = dmds.cluster.operator_writes(dmds.namespace)[writes_before:]
    assert writes == [], [(w["verb"], w["objectRef"]) for w in writes]
    assert versions() == before
    apps = dmds.apps
    assert [d.metadata.name for d in apps.list_namespaced_deployment(dmds.namespace).items] == [
        "qwen"
    ]
    assert len(dmds.core.list_namespaced_pod(dmds.namespace).items) == 1


@pytest.mark.usefixtures("crd_installed")
def test_metrics_and_liveness_endpoints(
    tmp_path: Path,
    dmds: Dmds,
) -> None:
    import urllib.request

    from localcluster import free_port

    metrics_port, health_port = free_port(), free_port()
    op = OperatorProcess(
        dmds.cluster, dmds.namespace, tmp_path / "op",
        "--metrics-port", str(metrics_port), "--health-port", str(health_port),
    ).start()  # fmt: skip
    try:
        dmds.apply("qwen", QWEN7B_H100)
        dmds.wait_condition("qwen", "Ready", op.bounds.ready)

        def scrape() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
                return str(r.read().decode())

        series = f'{{name="qwen",namespace="{dmds.namespace}"}}'

        def costed() -> str | None:
            text = scrape()
            return text if f"distillery_cost_per_hour{series} 6.88" in text else None

        text = wait_for(costed, "the DMD's cost in the operator's metrics", op.bounds.reconcile)
        assert "distillery_reconcile_duration_seconds_count" in text
        assert f"distillery_ready_replicas{series}" in text
        assert 'distillery_api_writes_total{kind="Deployment",verb="apply"}' in text
        with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/healthz", timeout=5) as r:
            assert r.status == 200
    finally:
        op.stop()


@pytest.mark.usefixtures("crd_installed")
def test_a_failed_apply_is_retried_without_waiting_for_a_resync(
    tmp_path: Path,
    dmds: Dmds,
) -> None:
    """kopf never retries event handlers: the operator's own backoff must. A quota that
    admits no Deployment makes the apply fail; once it is gone, nothing else happens to
    the DMD (no event, resync and autoscaler an hour away), yet the children are applied."""
    dmds.cluster.kubectl(
        "create", "quota", "no-deployments", "-n", dmds.namespace, "--hard=count/deployments.apps=0"
    )
    # Nothing else may reconcile it: no resync, and no autoscaler pass (whose status
    # write is itself an event of the DMD).
    op = OperatorProcess(
        dmds.cluster, dmds.namespace, tmp_path / "op",
        "--resync-interval-seconds", "3600", "--autoscale-interval", "3600",
    ).start()  # fmt: skip
    try:
        dmds.apply("qwen", QWEN7B_H100)
        wait_for(
            lambda: "retrying in" in op.log.read_text(errors="replace"),
            "the operator to log a failed reconcile and its retry",
            Bounds.within(POD_START),
            describe=op.tail,
        )
        assert "reconcile of" in op.log.read_text() and "qwen" in op.log.read_text()
        # Three failures in a row (1 s, then 2 s apart): the DMD says why, once.
        core = client.CoreV1Api(dmds.api.api_client)

        def reported() -> list[Any]:
            return [
                e
                for e in core.list_namespaced_event(dmds.namespace).items
                if e.involved_object.name == "qwen" and e.reason == "ReconcileFailed"
            ]

        [event] = wait_for(
            reported, "a ReconcileFailed event", Bounds.within(1 + 2 + 4), describe=op.tail
        )
        assert event.type == "Warning" and "exceeded quota" in event.message, event.message
        dmds.cluster.kubectl("delete", "quota", "no-deployments", "-n", dmds.namespace)
        dmds.wait_condition("qwen", "Ready", Bounds.within(RETRY_CAP_SECONDS, POD_START))
    finally:
        op.stop()
