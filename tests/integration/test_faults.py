"""Faults on a cluster of its own: the operator SIGKILLed mid-burst again and again, the
API server restarted, another writer editing owned fields, a GPU node removed. Nothing
may be lost, duplicated or orphaned."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from kubernetes import client

from distillery.api.types import GROUP, PLURAL, VERSION
from localcluster import Cluster, node_manifests, start
from tests.integration.operator_process import OperatorProcess
from tests.integration.waits import POD_START, Bounds, Dmds, new_api_client, wait_for
from tests.support.dmds import dmd_yaml

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
NS = "faults"
# A deleted node's pods: the pod garbage collector deletes pods bound to a node that no
# longer exists after a 40 s quarantine, on its 20 s loop; the ReplicaSet replaces them.
NODE_GONE = 40.0 + 20.0
KILLS = 20


@pytest.fixture(scope="module")
def fault_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with start(state_dir=tmp_path_factory.mktemp("fault-cluster"), quiet=True) as c:
        c.install_crds()
        c.kubectl("create", "namespace", NS)
        wait_for(lambda: c.kubectl("get", "sa", "default", "-n", NS, check=False), "SA")
        yield c


@pytest.fixture(scope="module")
def api(fault_cluster: Cluster) -> client.ApiClient:
    return new_api_client(str(fault_cluster.kubeconfig))


def spec(i: int, revision: str) -> dict[str, Any]:
    if i < 3:  # serving ones, on H100s
        return {
            "model": {"name": "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", "revision": revision},
            "placement": {"gpuTypes": ["nvidia-h100-80gb"]},
            "scaling": {"minReplicas": 1, "maxReplicas": 2},
        }
    return {
        "model": {"name": "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", "revision": revision},
        "placement": {"gpuTypes": ["nvidia-l4"]},
        "scaling": {"minReplicas": 0, "maxReplicas": 2, "demandQuery": "vector(0)"},
    }


def apply(c: Cluster, name: str, body_spec: dict[str, Any]) -> None:
    c.kubectl(
        "apply",
        "-n",
        NS,
        "-f",
        "-",
        input=dmd_yaml(name, body_spec),
    )


def converged(api: client.ApiClient, want: dict[str, str]) -> bool:
    apps = client.AppsV1Api(api)
    custom = client.CustomObjectsApi(api)
    for name, revision in want.items():
        obj = cast(
            dict[str, Any], custom.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name)
        )
        if (obj.get("status") or {}).get("observedGeneration") != obj["metadata"]["generation"]:
            return False
        dep = apps.read_namespaced_deployment(name, NS)
        args = dep.spec.template.spec.containers[0].args
        if args[args.index("--revision") + 1] != revision:
            return False
    return True


def assert_no_duplicates_or_orphans(api: client.ApiClient, names: set[str]) -> None:
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    policy = client.PolicyV1Api(api)
    for kind, items in (
        ("Deployment", apps.list_namespaced_deployment(NS).items),
        ("Service", core.list_namespaced_service(NS).items),
        ("PodDisruptionBudget", policy.list_namespaced_pod_disruption_budget(NS).items),
    ):
        owners = [i.metadata.owner_references[0].name for i in items]
        assert sorted(owners) == sorted(names), (kind, owners)  # one each, none orphaned
        assert sorted(str(i.metadata.name) for i in items) == sorted(names), kind


def test_sigkill_during_a_burst_of_changes(
    fault_cluster: Cluster, api: client.ApiClient, tmp_path: Path
) -> None:
    c = fault_cluster
    names = [f"m{i}" for i in range(10)]
    want = {n: "r0" for n in names}
    op = OperatorProcess(c, NS, tmp_path / "op").start()
    rng = random.Random(7)
    try:
        for i, n in enumerate(names):
            apply(c, n, spec(i, "r0"))
        for k in range(1, KILLS + 1):
            # a burst of changes, then a kill at a random moment inside the reconciles
            for _ in range(3):
                i = rng.randrange(len(names))
                want[names[i]] = f"r{k}"
                apply(c, names[i], spec(i, f"r{k}"))
            time.sleep(rng.uniform(0.0, 1.5))
            op.kill()
            op.start()
        # Every DMD's last change: one reconcile each after the last start (kopf runs
        # them concurrently), and the Deployments' pods restarted.
        wait_for(
            lambda: converged(api, want),
            "every last change applied",
            op.bounds.reconcile + op.bounds.ready,
        )
        assert_no_duplicates_or_orphans(api, set(names))
        pods = client.CoreV1Api(api).list_namespaced_pod(NS).items
        running = [p for p in pods if not p.metadata.deletion_timestamp]
        wait_for(
            lambda: (
                len(
                    [
                        p
                        for p in client.CoreV1Api(api).list_namespaced_pod(NS).items
                        if not p.metadata.deletion_timestamp
                    ]
                )
                == 3
            ),
            "exactly the 3 serving replicas",
            op.bounds.ready,
        )
        assert running is not None
    finally:
        op.stop()


def test_api_server_restart(fault_cluster: Cluster, api: client.ApiClient, tmp_path: Path) -> None:
    c = fault_cluster
    op = OperatorProcess(c, NS, tmp_path / "op").start()
    try:
        apply(c, "m0", spec(0, "before-restart"))
        wait_for(
            lambda: converged(api, {"m0": "before-restart"}), "reconciled", op.bounds.reconcile
        )
        c.kill_component("kube-apiserver")
        time.sleep(5)
        c.start_component("kube-apiserver")
        assert op.proc is not None and op.proc.poll() is None, "operator must survive"
        apply(c, "m0", spec(0, "after-restart"))
        # The watch reconnects on kopf's backoff; a missed event is caught at resync.
        wait_for(lambda: converged(api, {"m0": "after-restart"}), "caught up", op.bounds.reconcile)
        assert op.proc is not None and op.proc.poll() is None
    finally:
        op.stop()


def test_foreign_edit_is_restored_unowned_left_alone(
    fault_cluster: Cluster, api: client.ApiClient, tmp_path: Path
) -> None:
    c = fault_cluster
    op = OperatorProcess(c, NS, tmp_path / "op").start()
    try:
        apply(c, "m1", spec(1, "stable"))
        wait_for(lambda: converged(api, {"m1": "stable"}), "reconciled", op.bounds.reconcile)
        c.kubectl(
            "patch",
            "deployment",
            "m1",
            "-n",
            NS,
            "--type=json",
            "-p",
            json.dumps(
                [
                    {
                        "op": "replace",
                        "path": "/spec/template/spec/containers/0/args/0",
                        "value": "someone/else",
                    }
                ]
            ),
        )
        c.kubectl("annotate", "deployment", "m1", "-n", NS, "team=inference")
        apps = client.AppsV1Api(api)

        def restored() -> bool:
            dep = apps.read_namespaced_deployment("m1", NS)
            return bool(
                dep.spec.template.spec.containers[0].args[0]
                == "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"
            )

        wait_for(restored, "owned field restored", op.bounds.reconcile)
        dep = apps.read_namespaced_deployment("m1", NS)
        assert dep.metadata.annotations["team"] == "inference"
    finally:
        op.stop()


def test_gpu_nodes_removed(fault_cluster: Cluster, api: client.ApiClient, tmp_path: Path) -> None:
    c = fault_cluster
    core = client.CoreV1Api(api)
    op = OperatorProcess(c, NS, tmp_path / "op").start()
    try:
        apply(c, "m2", spec(2, "nodes"))
        Dmds(api, NS).wait_condition("m2", "Ready", op.bounds.ready)

        def pod_node() -> str | None:
            pods = [
                p
                for p in core.list_namespaced_pod(
                    NS, label_selector="distillery.dev/deployment=m2"
                ).items
                if not p.metadata.deletion_timestamp
            ]
            return pods[0].spec.node_name if len(pods) == 1 and pods[0].spec.node_name else None

        first = wait_for(pod_node, "scheduled", op.bounds.ready)
        assert first.startswith("h100-")
        c.kubectl("delete", "node", first)

        def moved() -> str | None:
            node = pod_node()
            return node if node and node != first else None

        second = wait_for(moved, "rescheduled", Bounds.within(NODE_GONE, POD_START))
        assert second.startswith("h100-") and second != first, second
        # No allowed GPU left: Pending, and the DMD says why.
        c.kubectl("delete", "node", second)
        # Reason and message from one read: while the pod is replaced the Deployment's
        # counts move, and the condition with them.
        ready = Dmds(api, NS).wait_condition(
            "m2",
            "Ready",
            Bounds.within(NODE_GONE, POD_START) + op.bounds.reconcile,
            status="False",
            reason="Unschedulable",
        )
        message = ready["message"]
        assert "node affinity" in message or "nodes are available" in message, message
    finally:
        op.stop()
        # Put the nodes back for whatever runs next on this cluster.
        inventory = yaml.safe_load((ROOT / "hack" / "inventory.yaml").read_text())
        for node in node_manifests(inventory):
            if node["metadata"]["name"].startswith("h100-"):
                c.kubectl("apply", "-f", "-", input=json.dumps(node), check=False)
