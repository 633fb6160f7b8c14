"""The local control plane itself: real versions, the GPU inventory, scheduling, GC."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from localcluster import COMPONENTS, Cluster, _versions, node_manifests, start
from tests.integration.waits import wait_for

pytestmark = pytest.mark.cluster
ROOT = Path(__file__).resolve().parents[2]
GPU_TOLERATION = client.V1Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")


def gpu_pod(name: str, gpus: int, product: str) -> client.V1Pod:
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1PodSpec(
            node_selector={"nvidia.com/gpu.product": product},
            tolerations=[GPU_TOLERATION],
            containers=[
                client.V1Container(
                    name="engine",
                    image="vllm/vllm-openai:latest",
                    resources=client.V1ResourceRequirements(limits={"nvidia.com/gpu": str(gpus)}),
                )
            ],
        ),
    )


def test_server_reports_the_pinned_release(cluster: Cluster, api_client: client.ApiClient) -> None:
    info = client.VersionApi(api_client).get_code()
    assert info.git_version == _versions()["KUBERNETES_VERSION"]
    assert "kubectl" not in info.git_version
    out = cluster.kubectl("version", "-o", "yaml")
    assert yaml.safe_load(out)["serverVersion"]["gitVersion"] == info.git_version


def test_gpu_inventory(cluster: Cluster, api_client: client.ApiClient) -> None:
    expected = node_manifests(yaml.safe_load((ROOT / "hack" / "inventory.yaml").read_text()))
    nodes = {n.metadata.name: n for n in client.CoreV1Api(api_client).list_node().items}
    assert set(nodes) == {n["metadata"]["name"] for n in expected}
    products: dict[str, int] = {}
    for node in nodes.values():
        product = node.metadata.labels.get("nvidia.com/gpu.product")
        ready = next(c.status for c in node.status.conditions if c.type == "Ready")
        assert ready == "True", node.metadata.name
        if product is None:
            assert "nvidia.com/gpu" not in (node.status.allocatable or {})
            assert not node.spec.taints
            continue
        products[product] = products.get(product, 0) + 1
        count = node.metadata.labels["nvidia.com/gpu.count"]
        assert node.status.capacity["nvidia.com/gpu"] == count
        assert node.status.allocatable["nvidia.com/gpu"] == count
        assert int(node.metadata.labels["nvidia.com/gpu.memory"]) > 10000
        assert [(t.key, t.effect) for t in node.spec.taints] == [("nvidia.com/gpu", "NoSchedule")]
    assert products == {
        "NVIDIA-H200": 2,
        "NVIDIA-H100-80GB-HBM3": 2,
        "NVIDIA-A100-SXM4-80GB": 2,
        "NVIDIA-L40S": 2,
        "NVIDIA-L4": 4,
        "Tesla-T4": 1,
    }
    listing = cluster.kubectl("get", "nodes", "-L", "nvidia.com/gpu.product")
    assert "NVIDIA-H100-80GB-HBM3" in listing and "Tesla-T4" in listing


def test_two_gpu_pod_lands_on_h100_and_is_ready(
    api_client: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(api_client)
    core.create_namespaced_pod(namespace, gpu_pod("two", 2, "NVIDIA-H100-80GB-HBM3"))

    def ready() -> client.V1Pod | None:
        pod = core.read_namespaced_pod("two", namespace)
        conds = {c.type: c.status for c in (pod.status.conditions or [])}
        return pod if conds.get("Ready") == "True" else None

    pod = wait_for(ready, "pod Ready")
    assert pod.spec.node_name.startswith("h100-")
    assert pod.status.phase == "Running"


def test_nine_gpu_pod_stays_pending(api_client: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(api_client)
    core.create_namespaced_pod(namespace, gpu_pod("nine", 9, "NVIDIA-H100-80GB-HBM3"))

    def unschedulable() -> str | None:
        pod = core.read_namespaced_pod("nine", namespace)
        for c in pod.status.conditions or []:
            if c.type == "PodScheduled" and c.status == "False" and c.reason == "Unschedulable":
                return str(c.message)
        return None

    message = wait_for(unschedulable, "Unschedulable condition")
    assert "Insufficient nvidia.com/gpu" in message
    assert core.read_namespaced_pod("nine", namespace).status.phase == "Pending"


def test_deployment_scales_and_is_garbage_collected(
    api_client: client.ApiClient, namespace: str
) -> None:
    apps, core = client.AppsV1Api(api_client), client.CoreV1Api(api_client)
    labels = {"app": "engine"}
    template = gpu_pod("x", 1, "NVIDIA-L4").spec
    dep = client.V1Deployment(
        metadata=client.V1ObjectMeta(name="engine"),
        spec=client.V1DeploymentSpec(
            replicas=1,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels), spec=template
            ),
        ),
    )
    apps.create_namespaced_deployment(namespace, dep)

    def ready_replicas(n: int) -> bool:
        d = apps.read_namespaced_deployment("engine", namespace)
        return (d.status.ready_replicas or 0) == n

    wait_for(lambda: ready_replicas(1), "1 ready replica")
    apps.patch_namespaced_deployment_scale("engine", namespace, {"spec": {"replicas": 3}})
    wait_for(lambda: ready_replicas(3), "3 ready replicas")
    pods = core.list_namespaced_pod(namespace, label_selector="app=engine").items
    assert len(pods) == 3
    assert {p.spec.node_name.split("-")[0] for p in pods} == {"l4"}
    apps.delete_namespaced_deployment("engine", namespace, propagation_policy="Background")
    wait_for(
        lambda: not core.list_namespaced_pod(namespace, label_selector="app=engine").items,
        "pods garbage-collected",
    )


def test_stop_frees_every_port_and_process(tmp_path: Path) -> None:
    second = start(state_dir=tmp_path / "second", quiet=True)
    pids, ports = dict(second.pids), dict(second.ports)
    # The control plane, kwok and the LeaderWorkerSet controller, each recorded.
    assert set(pids) == set(COMPONENTS) and {"kube-apiserver", "lws-controller"} <= set(pids)
    second.stop()
    for name, pid in pids.items():
        stat = Path(f"/proc/{pid}/stat")
        assert not stat.exists() or ") Z " in stat.read_text(), f"{name} still running"
    for name, port in ports.items():
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, f"{name} port {port} still open"
    assert not (tmp_path / "second" / "state.json").exists()
