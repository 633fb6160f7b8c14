"""The weight cache on the real control plane: a claim the real PV controller binds, a
Job the real Job controller runs (its pod run for real by the local cluster's fill
runner, ``distillery cache-fill`` against a hub on 127.0.0.1), serving pods held until
the marker is written, a revision change that fills the new cache first, a failed fill
that says why, and garbage collection by the real controller-manager.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import pytest
from kubernetes import client

from distillery.render.cache import MARKER
from tests.integration.operator_process import OperatorProcess
from tests.integration.waits import POD_START, Bounds, Dmds, wait_for
from tests.support.hub import FakeHub, serve_hub

pytestmark = pytest.mark.cluster

REPO = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
V1 = {"config.json": b'{"model_type": "qwen2"}', "model.safetensors": b"\x07" * 300_000}
V2 = {"config.json": b'{"model_type": "qwen2", "v": 2}', "model.safetensors": b"\x08" * 200_000}
# The Job controller's back-off before it replaces a failed pod: 10 s, then doubled.
JOB_BACKOFF = 10.0
FILL_POLL = 0.5  # the fill runner's poll (hack/fillrunner.py)


def spec(endpoint: str, revision: str = "main", **cache: Any) -> dict[str, Any]:
    return {
        "model": {"name": REPO, "revision": revision, "cache": {"mode": "Shared", **cache}},
        "serving": {"env": [{"name": "HF_ENDPOINT", "value": endpoint}]},
        "placement": {"gpuTypes": ["nvidia-l4"]},
        "scaling": {"minReplicas": 1, "maxReplicas": 2},
    }


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    gate = threading.Event()
    repos = {(REPO, "main"): dict(V1), (REPO, "v2"): dict(V2)}
    with serve_hub(FakeHub(repos=repos, gate=gate)) as running:
        yield running
    gate.set()


def host_path(core: client.CoreV1Api, namespace: str, claim: str) -> Path:
    pvc = core.read_namespaced_persistent_volume_claim(claim, namespace)
    volume = str(pvc.spec.volume_name)
    return Path(core.read_persistent_volume(volume).spec.host_path.path)


def deployments(api_client: client.ApiClient, namespace: str) -> list[Any]:
    return list(client.AppsV1Api(api_client).list_namespaced_deployment(namespace).items)


def test_a_cache_is_filled_once_before_pods_start_and_refilled_first_on_a_new_revision(
    operator: OperatorProcess,
    dmds: Dmds,
    hub: FakeHub,
) -> None:
    bounds = operator.bounds
    core = dmds.core
    assert hub.gate is not None
    dmds.apply("qwen", spec(hub.endpoint))
    fill = Bounds.within(operator.settings.resync_interval_seconds, FILL_POLL, POD_START)

    # While the hub holds the download: a bound claim, a running fill, no serving pod.
    def filling() -> bool:
        cache = dmds.get("qwen").get("status", {}).get("cache") or {}
        return cache.get("phase") == "Filling" and bool(hub.downloads())

    dmds.wait("qwen", filling, "the fill downloading", fill)
    status = dmds.get("qwen")["status"]
    claim = status["cache"]["claim"]
    ready = dmds.condition("qwen", "Ready")
    assert ready["status"] == "False" and ready["reason"] == "FillingWeightCache"
    assert not deployments(dmds.api_client, dmds.namespace), "no GPU pod while the weights download"
    assert (
        core.read_namespaced_persistent_volume_claim(claim, dmds.namespace).status.phase == "Bound"
    )

    hub.gate.set()
    dmds.wait_condition("qwen", "Ready", Bounds.within(fill, bounds.ready))
    status = dmds.get("qwen")["status"]
    assert status["cache"]["phase"] == "Ready"
    assert status["cache"]["bytes"] == sum(len(v) for v in V1.values())
    assert dmds.condition("qwen", "WeightsCached")["status"] == "True"
    folder = host_path(core, dmds.namespace, claim)
    assert (folder / "model.safetensors").read_bytes() == V1["model.safetensors"]
    assert json.loads((folder / MARKER).read_text())["revision"] == "main"
    # The serving pods mount the claim read-only and wait for the marker.
    pod_spec = deployments(dmds.api_client, dmds.namespace)[0].spec.template.spec
    volume = next(v for v in pod_spec.volumes if v.name == "model")
    assert volume.persistent_volume_claim.claim_name == claim
    assert volume.persistent_volume_claim.read_only
    assert pod_spec.init_containers[0].name == "wait-for-weights"
    served = [
        p
        for p in core.list_namespaced_pod(
            dmds.namespace, label_selector="distillery.dev/deployment=qwen"
        ).items
        if p.status.phase == "Running"
    ]
    assert served, "a serving pod scheduled with the bound claim"
    downloads = len(hub.downloads())
    # Steady state: over a resync, nothing of the cache (bound by the PV controller,
    # completed by the Job controller) or the workload is written again.
    seen = len(dmds.cluster.operator_writes(dmds.namespace))
    time.sleep(operator.settings.resync_interval_seconds + POD_START)
    children = ("persistentvolumeclaims", "jobs", "deployments")
    rewrites = [
        (w["verb"], w["objectRef"]["resource"], w["objectRef"].get("name"))
        for w in dmds.cluster.operator_writes(dmds.namespace)[seen:]
        if w["objectRef"]["resource"] in children
    ]
    assert rewrites == [], rewrites

    # A new revision: its cache fills while the running pods keep the old template.
    hub.gate.clear()
    revision = status["revision"]
    template = deployments(dmds.api_client, dmds.namespace)[0].metadata.annotations[
        "distillery.dev/revision"
    ]
    dmds.patch("qwen", {"spec": {"model": {"revision": "v2"}}})

    def new_cache_filling() -> bool:
        cache = dmds.get("qwen")["status"].get("cache") or {}
        return cache.get("claim") != claim and cache.get("phase") == "Filling"

    dmds.wait("qwen", new_cache_filling, "the v2 cache filling", fill)
    live = deployments(dmds.api_client, dmds.namespace)[0]
    assert live.metadata.annotations["distillery.dev/revision"] == template, (
        "the rollout waits for the new cache"
    )
    assert dmds.condition("qwen", "Ready")["status"] == "True", "v1 keeps serving"
    hub.gate.set()

    def rolled() -> bool:
        dep = deployments(dmds.api_client, dmds.namespace)[0]
        return bool(
            dep.metadata.annotations["distillery.dev/revision"] != template
            and dmds.get("qwen")["status"].get("cache", {}).get("phase") == "Ready"
        )

    dmds.wait(
        "qwen", rolled, "the rollout to v2 after its cache", Bounds.within(fill, bounds.ready)
    )
    status = dmds.get("qwen")["status"]
    assert status["revision"] != revision
    assert [r["claim"] for r in status["cache"]["retired"]] == [claim]
    new_claim = status["cache"]["claim"]
    assert (
        json.loads((host_path(core, dmds.namespace, new_claim) / MARKER).read_text())["revision"]
        == "v2"
    )
    # One download per file of each revision: the replicas never went to the hub.
    assert len(hub.downloads()) == downloads + len(V2)

    # Deleting the DMD takes its caches with it (deletePolicy: Delete, the default).
    dmds.cluster.kubectl("delete", "dmd", "qwen", "-n", dmds.namespace)

    def claims_gone() -> bool:
        return not core.list_namespaced_persistent_volume_claim(dmds.namespace).items

    wait_for(claims_gone, "the cache claims garbage-collected with the DMD", bounds.ready)


def test_a_gated_model_without_a_token_fails_the_fill_and_says_what_to_set(
    operator: OperatorProcess,
    dmds: Dmds,
    hub: FakeHub,
) -> None:
    hub.token = "hf_not_given"
    assert hub.gate is not None
    hub.gate.set()
    dmds.apply("gated", spec(hub.endpoint, deletePolicy="Retain"))
    # Three attempts (backoffLimit 2) with the Job controller's back-off between them.
    attempts = Bounds.within(
        operator.settings.resync_interval_seconds,
        JOB_BACKOFF + 2 * JOB_BACKOFF,
        3 * (POD_START + FILL_POLL),
    )
    dmds.wait_condition("gated", "Stalled", attempts)
    cond = dmds.condition("gated", "WeightsCached")
    assert cond["status"] == "False" and cond["reason"] == "FillFailed"
    assert "HTTP 401" in cond["message"] and "credentialsSecretRef" in cond["message"]
    assert "to retry" in cond["message"]
    assert not deployments(dmds.api_client, dmds.namespace), (
        "no pod starts without complete weights"
    )
    assert "hf_not_given" not in json.dumps(dmds.get("gated"))


def test_a_download_cut_midway_is_retried_and_resumed_before_any_pod_starts(
    operator: OperatorProcess,
    dmds: Dmds,
    hub: FakeHub,
) -> None:
    hub.cut_after_bytes, hub.cut_after_attempts = 100_000, 1
    assert hub.gate is not None
    hub.gate.set()
    dmds.apply("cut", spec(hub.endpoint))
    # The first attempt fails, the Job controller waits its back-off, the second resumes.
    retried = Bounds.within(
        operator.settings.resync_interval_seconds, JOB_BACKOFF, 2 * (POD_START + FILL_POLL)
    )
    dmds.wait_condition("cut", "Ready", Bounds.within(retried, operator.bounds.ready))
    status = dmds.get("cut")["status"]
    assert status["cache"]["bytes"] == sum(len(v) for v in V1.values())
    blobs = [r for r in hub.downloads() if "model.safetensors" in r[0]]
    assert [r[1] for r in blobs] == ["", "bytes=100000-"], "the retry resumed the cut file"
    core = dmds.core
    folder = host_path(core, dmds.namespace, status["cache"]["claim"])
    assert (folder / "model.safetensors").read_bytes() == V1["model.safetensors"]
    assert not list(folder.glob("*.part"))


def test_node_local_copies_reach_every_node_of_the_pool_before_a_replica_starts(
    operator: OperatorProcess,
    dmds: Dmds,
    hub: FakeHub,
) -> None:
    """NodeLocal on the real DaemonSet controller: one copy per L4 node, each run for
    real by the fill runner from the filled claim into that node's folder; the replicas
    are created only once every copy is complete, and read the node's copy."""
    assert hub.gate is not None
    hub.gate.set()
    dmds.apply("local", spec(hub.endpoint, mode="NodeLocal"))
    fill = Bounds.within(operator.settings.resync_interval_seconds, FILL_POLL, POD_START)
    copies = Bounds.within(fill, POD_START, 2 * FILL_POLL)
    dmds.wait_condition("local", "Ready", Bounds.within(copies, operator.bounds.ready))
    status = dmds.get("local")["status"]
    cache = status["cache"]
    l4 = sorted(
        str(n.metadata.name)
        for n in dmds.core.list_node(label_selector="nvidia.com/gpu.product=NVIDIA-L4").items
    )
    assert len(l4) >= 2, "the local cluster has an L4 pool"
    assert (cache["phase"], cache["nodes"], cache["nodesReady"]) == ("Ready", len(l4), len(l4))
    assert status["startup"]["weightsFrom"] == "local"
    pods = dmds.core.list_namespaced_pod(
        dmds.namespace, label_selector="distillery.dev/weight-prepull-of=local"
    ).items
    assert sorted(str(p.spec.node_name) for p in pods) == l4, "one copy per node of the pool"
    copied_at = max(
        cast(datetime, c.last_transition_time)
        for p in pods
        for c in p.status.conditions
        if c.type == "Ready" and c.status == "True"
    )
    [dep] = deployments(dmds.api_client, dmds.namespace)
    assert dep.metadata.creation_timestamp >= copied_at, "replicas only after every copy"
    volume = next(v for v in dep.spec.template.spec.volumes if v.name == "model")
    node_dir = str(volume.host_path.path)
    assert node_dir.endswith(f"/{dmds.namespace}/{cache['claim']}")
    for node in l4:
        folder = dmds.cluster.state_dir / "nodes" / node / node_dir.lstrip("/")
        assert (folder / "model.safetensors").read_bytes() == V1["model.safetensors"], node
        assert (folder / MARKER).exists(), node
    # The hub was read once, by the fill; every node copied from the claim.
    assert len(hub.downloads()) == len(V1)

    # Back to Shared: the copies' DaemonSet goes, the same claim serves.
    dmds.patch("local", {"spec": {"model": {"cache": {"mode": "Shared"}}}})
    wait_for(
        lambda: not dmds.apps.list_namespaced_daemon_set(dmds.namespace).items,
        "the pre-pull DaemonSet deleted",
        Bounds.within(operator.settings.resync_interval_seconds, POD_START),
    )
    assert dmds.get("local")["status"]["cache"]["claim"] == cache["claim"]
