"""The teacher tier on the real control plane with the real LeaderWorkerSet controller.

DeepSeek-R1 (671B, fp8) does not fit one 8-GPU H100 node: the operator renders a
LeaderWorkerSet whose groups are a leader and a worker pod of 8 GPUs each; the LWS
controller (built from its Go module, serving its own webhooks) creates the pods, the
scheduler places them on two nodes. The DMD scales, rolls and deletes whole groups.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from localcluster import Cluster, node_manifests
from tests.integration.operator_process import OperatorProcess
from tests.integration.waits import POD_START, Bounds, Dmds, wait_for

pytestmark = pytest.mark.cluster

LWS = ("leaderworkerset.x-k8s.io", "v1")
R1_ON_H100 = {
    "model": {"name": "deepseek-ai/DeepSeek-R1"},
    "serving": {"maxModelLen": 32768, "maxConcurrency": 64},
    "placement": {"gpuTypes": ["nvidia-h100-80gb"]},
    "scaling": {"minReplicas": 1, "maxReplicas": 2},
}
# The inventory holds one two-node group on H100; a second group needs two more nodes.
EXTRA_H100 = {
    "name": "h100-extra",
    "count": 2,
    "gpus": 8,
    "gpuProduct": "NVIDIA-H100-80GB-HBM3",
    "gpuMemoryMiB": 81559,
    "cpu": 192,
    "memory": "2Ti",
}


@pytest.fixture
def extra_h100(cluster: Cluster) -> Iterator[list[str]]:
    nodes = node_manifests({"pools": [EXTRA_H100]})
    for node in nodes:
        cluster.kubectl("apply", "-f", "-", input=json.dumps(node))
    names = [n["metadata"]["name"] for n in nodes]

    def ready() -> bool:
        out = cluster.kubectl("get", "nodes", *names, "-o", "json")
        items = json.loads(out)["items"]
        return len(items) == len(names) and all(
            any(c["type"] == "Ready" and c["status"] == "True" for c in i["status"]["conditions"])
            and not any(
                t["key"].startswith("node.kubernetes.io/") for t in i["spec"].get("taints", [])
            )
            for i in items
        )

    wait_for(ready, "extra H100 nodes Ready", 60)
    yield names
    cluster.kubectl("delete", "node", *names, "--wait=false", check=False)


def group_pods(core: client.CoreV1Api, namespace: str, name: str) -> list[Any]:
    return [
        p
        for p in core.list_namespaced_pod(
            namespace, label_selector=f"distillery.dev/deployment={name}"
        ).items
        if not p.metadata.deletion_timestamp
    ]


def describe_pods(core: client.CoreV1Api, namespace: str, name: str) -> str:
    return "\n".join(
        f"  pod {p.metadata.name} node={p.spec.node_name} phase={p.status.phase} "
        f"rev={p.metadata.labels.get('distillery.dev/revision')} "
        f"worker={p.metadata.labels.get('leaderworkerset.sigs.k8s.io/worker-index')} "
        f"ready={_ready(p)}"
        for p in group_pods(core, namespace, name)
    )


def _ready(pod: Any) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def ready_groups(core: client.CoreV1Api, namespace: str, name: str, revision: str | None) -> int:
    """Groups whose leader and worker both run ``revision`` (any when None) and are Ready."""
    by_group: dict[str, list[Any]] = {}
    for p in group_pods(core, namespace, name):
        key = p.metadata.labels.get("leaderworkerset.sigs.k8s.io/group-key", p.metadata.name)
        by_group.setdefault(key, []).append(p)
    count = 0
    for pods in by_group.values():
        ok = len(pods) == 2 and all(
            _ready(p)
            and (revision is None or p.metadata.labels.get("distillery.dev/revision") == revision)
            for p in pods
        )
        count += ok
    return count


@pytest.mark.usefixtures("extra_h100")
def test_r1_on_h100_is_one_group_of_two_nodes_that_scales_rolls_and_deletes(
    operator: OperatorProcess,
    dmds: Dmds,
) -> None:
    bounds = operator.bounds
    core, custom = dmds.core, client.CustomObjectsApi(dmds.api_client)
    dmds.apply("r1", R1_ON_H100)
    dmds.wait_condition("r1", "Ready", bounds.ready)

    # One LeaderWorkerSet group: a leader and a worker, 8 GPUs each, on two nodes.
    lws = custom.get_namespaced_custom_object(*LWS, dmds.namespace, "leaderworkersets", "r1")
    assert lws["spec"]["replicas"] == 1
    assert lws["spec"]["leaderWorkerTemplate"]["size"] == 2
    assert lws["metadata"]["ownerReferences"][0]["kind"] == "DistilledModelDeployment"
    pods = group_pods(core, dmds.namespace, "r1")
    assert len(pods) == 2, describe_pods(core, dmds.namespace, "r1")
    assert len({p.spec.node_name for p in pods}) == 2
    assert all(p.spec.node_name.startswith("h100-") for p in pods)
    for p in pods:
        assert p.spec.containers[0].resources.limits["nvidia.com/gpu"] == "8"
        # The LWS pod webhook told every pod where its leader is.
        env = {e.name: e.value for e in p.spec.containers[0].env}
        assert env["LWS_LEADER_ADDRESS"] == f"r1-0.r1-0.{dmds.namespace}"
    leader = next(
        p for p in pods if p.metadata.labels["leaderworkerset.sigs.k8s.io/worker-index"] == "0"
    )
    assert "--headless" not in leader.spec.containers[0].args
    assert not apps_deployments(dmds.api_client, dmds.namespace)
    # Only the leader serves the API.
    svc = core.read_namespaced_service("r1", dmds.namespace)
    assert svc.spec.selector["leaderworkerset.sigs.k8s.io/worker-index"] == "0"
    status = dmds.get("r1")["status"]
    assert status["placement"]["nodes"] == 2 and status["placement"]["gpuCount"] == 16
    assert status["placement"]["summary"] == "nvidia-h100-80gbx16 (2 nodes)"
    assert status["readyReplicas"] == 1
    assert status["cost"]["currentPerHour"] == pytest.approx(16 * 6.88)

    # Scaling to 2 creates a second group, placed on the two extra nodes.
    dmds.cluster.kubectl("scale", "dmd/r1", "-n", dmds.namespace, "--replicas=2")
    dmds.wait(
        "r1",
        lambda: (
            ready_groups(core, dmds.namespace, "r1", None) == 2
            and dmds.get("r1")["status"].get("readyReplicas") == 2
        ),
        "two groups ready\n" + describe_pods(core, dmds.namespace, "r1"),
        bounds.ready,
    )
    assert len({p.spec.node_name for p in group_pods(core, dmds.namespace, "r1")}) == 4

    # A revision change rolls group by group: no GPU is free for a surge group, so the
    # rollout replaces one group at a time and one group keeps serving throughout.
    before = dmds.get("r1")["status"]["revision"]
    dmds.patch("r1", {"spec": {"model": {"revision": "v2"}}})
    dmds.wait(
        "r1",
        lambda: dmds.get("r1")["status"]["revision"] != before,
        "status revision updated",
        bounds.reconcile,
    )
    after = dmds.get("r1")["status"]["revision"]
    lowest, at_lowest = 2, ""

    def rolled() -> bool:
        nonlocal lowest, at_lowest
        ready = ready_groups(core, dmds.namespace, "r1", None)
        if ready < lowest:
            # What the rollout looked like when the fewest groups served, for the message.
            lws = custom.get_namespaced_custom_object(
                *LWS, dmds.namespace, "leaderworkersets", "r1"
            )
            at_lowest = (
                f"{ready} ready group(s); LWS rolloutStrategy="
                f"{lws['spec']['rolloutStrategy']} status={lws['status']}\n"
                + describe_pods(core, dmds.namespace, "r1")
            )
        lowest = min(lowest, ready)
        return ready_groups(core, dmds.namespace, "r1", after) == 2

    dmds.wait(
        "r1",
        rolled,
        "both groups on the new revision",
        Bounds.within(bounds.ready, bounds.ready, POD_START),
    )
    assert lowest >= 1, f"both groups were down at once during the rollout:\n{at_lowest}"
    for p in group_pods(core, dmds.namespace, "r1"):
        args = p.spec.containers[0].args
        assert args[args.index("--revision") + 1] == "v2"

    # Deleting the DMD removes the LeaderWorkerSet, its pods and Services.
    dmds.cluster.kubectl("delete", "dmd", "r1", "-n", dmds.namespace)

    def gone() -> bool:
        left = custom.list_namespaced_custom_object(*LWS, dmds.namespace, "leaderworkersets")[
            "items"
        ]
        services = core.list_namespaced_service(dmds.namespace).items
        return not left and not group_pods(core, dmds.namespace, "r1") and not services

    wait_for(gone, "LeaderWorkerSet, pods and Services garbage-collected", bounds.ready)


def apps_deployments(api_client: client.ApiClient, namespace: str) -> list[Any]:
    return list(client.AppsV1Api(api_client).list_namespaced_deployment(namespace).items)
