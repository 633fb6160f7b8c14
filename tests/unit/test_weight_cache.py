"""The weight cache, rendered and reconciled as pure functions: the claim and its fill
Job, pods that mount it read-only and wait for the marker, a workload held until the
cache is complete, clear conditions when it cannot be, and retired caches deleted."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from distillery.api.types import DistilledModelDeployment, DistilledModelDeploymentStatus
from distillery.autoscale.inputs import PodFailure, PodInfo
from distillery.catalog import load_catalog
from distillery.reconcile import desired_state
from distillery.reconcile.cache import FillPod, parse_progress
from distillery.reconcile.children import ChildState, child_state
from distillery.render import RenderError, render, replica_startup_seconds
from distillery.render.cache import LABEL_CACHE_OF, MARKER
from distillery.sizing import plan
from tests.support.dmds import dmd as support_dmd
from tests.support.fake_cluster import observed

CATALOG = load_catalog()
T0 = "2026-12-01T10:00:00Z"
T1 = "2026-12-01T10:05:00Z"
T2 = "2026-12-01T11:10:00Z"
MODEL = "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"


def spec(**model: Any) -> dict[str, Any]:
    return {
        "model": {
            "name": MODEL,
            "credentialsSecretRef": {"name": "hf-token"},
            "cache": {"mode": "Shared"},
            **model,
        },
        "placement": {"gpuTypes": ["nvidia-l40s"]},
        "scaling": {"minReplicas": 2, "maxReplicas": 4},
    }


def body(s: dict[str, Any], status: dict[str, Any] | None = None) -> dict[str, Any]:
    return support_dmd("m", s, namespace="ns", status=status, uid="u-1", generation=1)


def rendered(s: dict[str, Any]) -> Any:
    d = DistilledModelDeployment.model_validate(body(s))
    return render(d, plan(d.spec, CATALOG), owner_uid="u-1")


def live_children(objects: list[dict[str, Any]], **job_conditions: str) -> dict[str, ChildState]:
    """Children as the API server shows them after an apply: Deployments all ready,
    the fill Job with the conditions given (``Complete="True"``...)."""
    out: dict[str, ChildState] = {}
    for obj in objects:
        b = observed(obj)
        if b["kind"] == "Job":
            b["status"] = {
                "conditions": [
                    {"type": t, "status": v, "reason": t, "message": f"job {t}"}
                    for t, v in job_conditions.items()
                ]
            }
        state = child_state(b)
        out[state.key] = state
    return out


def conds(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status["conditions"]}


def roundtrip(status: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(json.dumps(status))
    return out


# ---- render ---------------------------------------------------------------------------


def test_the_cache_is_a_claim_a_job_fills_and_pods_mount_read_only() -> None:
    r = rendered(spec())
    assert r.cache is not None
    pvc, job = r.cache.pvc, r.cache.fill_job
    assert [o["kind"] for o in r.objects()][:2] == ["PersistentVolumeClaim", "Job"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    # 7B bf16 checkpoint: 15.2 GB, plus 10% and 2 GiB.
    assert pvc["spec"]["resources"]["requests"]["storage"] == "18Gi"
    fill = job["spec"]["template"]["spec"]["containers"][0]
    assert fill["command"][:2] == ["distillery", "cache-fill"]
    assert f"--source=hf://{MODEL}" in fill["command"]
    assert fill["env"] == [
        {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token"}}}
    ]
    assert "nvidia.com/gpu" not in json.dumps(job), "the download holds no GPU"
    # Fill pods are not replicas: they do not carry the label serving pods are counted by.
    pod_labels = job["spec"]["template"]["metadata"]["labels"]
    assert "distillery.dev/deployment" not in pod_labels and pod_labels[LABEL_CACHE_OF] == "m"
    pod = r.workload["spec"]["template"]["spec"]
    claim = next(v for v in pod["volumes"] if v["name"] == "model")["persistentVolumeClaim"]
    assert claim == {"claimName": r.cache.claim, "readOnly": True}
    wait = pod["initContainers"][0]
    assert wait["name"] == "wait-for-weights" and MARKER in wait["command"][-1]
    engine = next(c for c in pod["containers"] if c["name"] == "engine")
    assert "/models/pvc" in engine["args"], "the engine reads the claim as a local folder"
    assert "--revision" not in engine["args"]
    assert all(e["name"] != "HF_TOKEN" for e in engine.get("env", [])), "pods need no token"


def test_the_cache_key_follows_the_revision_and_the_claims_shape() -> None:
    base = rendered(spec()).cache
    assert base is not None
    assert rendered(spec()).cache.claim == base.claim
    for changed in (spec(revision="v2"), spec(cache={"mode": "Shared", "sizeGiB": 40})):
        assert rendered(changed).cache.claim != base.claim
    # The pod template names the claim: a new revision is a new serving revision.
    assert rendered(spec(revision="v2")).revision != rendered(spec()).revision


def test_a_cache_smaller_than_the_checkpoint_is_refused_with_the_size_to_set() -> None:
    with pytest.raises(RenderError, match=r"sizeGiB 10 is smaller than the checkpoint .*at least"):
        rendered(spec(cache={"mode": "Shared", "sizeGiB": 10}))


def test_retain_leaves_the_claim_unowned_and_the_job_owned() -> None:
    r = rendered(spec(cache={"mode": "Shared", "deletePolicy": "Retain"}))
    assert r.cache is not None
    assert "ownerReferences" not in r.cache.pvc["metadata"]
    assert r.cache.fill_job["metadata"]["ownerReferences"][0]["uid"] == "u-1"


def test_object_store_and_image_sources_fill_with_their_tools() -> None:
    s3 = rendered(spec(uri="s3://bucket/qwen-7b")).cache
    assert s3 is not None
    fill = s3.fill_job["spec"]["template"]["spec"]["containers"][0]
    assert fill["command"][:2] == ["sh", "-c"] and fill["command"][4] == "s3://bucket/qwen-7b"
    assert fill["envFrom"] == [{"secretRef": {"name": "hf-token"}}]
    oci = rendered(spec(uri="oci://registry.example/qwen:v1")).cache
    assert oci is not None
    volumes = oci.fill_job["spec"]["template"]["spec"]["volumes"]
    assert {"name": "source", "image": {"reference": "registry.example/qwen:v1",
            "pullPolicy": "IfNotPresent"}} in volumes  # fmt: skip


def test_a_cached_replica_starts_faster_than_a_hub_download() -> None:
    def startup(s: dict[str, Any]) -> float:
        d = DistilledModelDeployment.model_validate(body(s))
        return replica_startup_seconds(d, plan(d.spec, CATALOG))

    hub = spec(cache={"mode": "None"})
    # 15.2 GB at 250 MB/s (Hub) vs 1 GB/s (cache), plus the same engine start.
    assert startup(hub) - startup(spec()) == pytest.approx(15.23e9 / 250e6 - 15.23e9 / 1e9, 0.02)


# ---- reconcile ------------------------------------------------------------------------


def test_a_new_dmd_fills_the_cache_before_any_gpu_pod_exists() -> None:
    d = desired_state(body(spec()), {}, CATALOG, now=T0)
    kinds = [o["kind"] for o in d.apply]
    assert "Deployment" not in kinds and kinds[:2] == ["PersistentVolumeClaim", "Job"]
    c = conds(d.status)
    assert c["Ready"]["status"] == "False" and c["Ready"]["reason"] == "FillingWeightCache"
    assert c["WeightsCached"]["status"] == "False" and c["WeightsCached"]["reason"] == "Filling"
    assert c["Reconciling"]["status"] == "True" and c["Stalled"]["status"] == "False"
    cache = d.status["cache"]
    assert cache["phase"] == "Filling" and cache["startedAt"] == T0
    assert cache["expectedBytes"] > 15e9 and cache["estimatedFillSeconds"] > 50
    DistilledModelDeploymentStatus.model_validate(roundtrip(d.status))


def test_the_job_is_created_once_and_the_workload_follows_its_completion() -> None:
    first = desired_state(body(spec()), {}, CATALOG, now=T0)
    filling = live_children(first.apply)
    again = desired_state(body(spec(), roundtrip(first.status)), filling, CATALOG, now=T1)
    assert [o["kind"] for o in again.apply] == [], "an unchanged live Job is never re-applied"
    done = live_children(first.apply, Complete="True")
    job = first.apply[1]["metadata"]["name"]
    # Two attempts: the first cut off, the retry complete. The retry's summary counts,
    # whatever the pods' generated names sort like.
    report = [
        FillPod(job=job, name=f"{job}-zzzzz", phase="Failed", finished_at=T0,
                message='{"error": "model.safetensors: got 1 bytes of 9: cut off"}'),
        FillPod(job=job, name=f"{job}-aaaaa", phase="Succeeded", finished_at=T1,
                message='{"bytes": 15231000000, "files": 6}'),
    ]  # fmt: skip
    ready = desired_state(
        body(spec(), roundtrip(first.status)), done, CATALOG, now=T1, fill_pods=report
    )
    assert [o["kind"] for o in ready.apply] == ["Deployment"]
    assert ready.apply[0]["spec"]["replicas"] == 2
    c = conds(ready.status)
    assert c["WeightsCached"]["status"] == "True" and c["WeightsCached"]["reason"] == "Filled"
    cache = ready.status["cache"]
    assert cache["phase"] == "Ready" and cache["bytes"] == 15231000000
    assert cache["completedAt"] == T1 and cache["startedAt"] == T0


def _serving(s: dict[str, Any]) -> tuple[dict[str, Any], dict[str, ChildState]]:
    """A DMD serving from a complete cache: its status and children."""
    first = desired_state(body(s), {}, CATALOG, now=T0)
    done = live_children(first.apply, Complete="True")
    second = desired_state(body(s, roundtrip(first.status)), done, CATALOG, now=T0)
    children = live_children(first.apply + second.apply, Complete="True")
    third = desired_state(body(s, roundtrip(second.status)), children, CATALOG, now=T0)
    assert third.apply == [] and conds(third.status)["Ready"]["status"] == "True"
    return roundtrip(third.status), children


def test_a_revision_change_fills_the_new_cache_while_the_old_revision_serves() -> None:
    status, children = _serving(spec())
    old_revision = children["Deployment"].revision
    s2 = spec(revision="v2")
    d = desired_state(body(s2, status), children, CATALOG, now=T1)
    kinds = [o["kind"] for o in d.apply]
    assert kinds == ["PersistentVolumeClaim", "Job"], "no rollout before the weights are there"
    c = conds(d.status)
    assert c["Ready"]["status"] == "True", "the old revision still serves"
    assert c["Reconciling"]["reason"] == "FillingWeightCache"
    assert d.status["revision"] != old_revision
    assert d.status["cache"]["claim"] != status["cache"]["claim"]
    # Scaling still reaches the running pods while the new cache fills.
    s3 = copy.deepcopy(s2)
    s3["replicas"] = 3
    scaled = desired_state(body(s3, status), children, CATALOG, now=T1)
    assert scaled.scale == {("Deployment", "m"): 3}
    # The new cache complete: the rollout starts, the old cache is retired, not deleted.
    new_objs = d.apply
    both = {**children, **live_children(new_objs, Complete="True")}
    rolled = desired_state(body(s2, roundtrip(d.status)), both, CATALOG, now=T1)
    assert [o["kind"] for o in rolled.apply] == ["Deployment"]
    assert rolled.status["cache"]["retired"] == [{"claim": status["cache"]["claim"], "since": T1}]
    assert rolled.delete == []
    # After the grace period (an hour by default) the old claim and its Job are deleted.
    later = desired_state(body(s2, roundtrip(rolled.status)), both, CATALOG, now=T2)
    old_claim = status["cache"]["claim"]
    assert ("PersistentVolumeClaim", old_claim) in later.delete
    assert ("Job", old_claim) in later.delete
    assert later.status["cache"]["retired"] == []


def test_a_failed_fill_stalls_with_the_fills_own_words() -> None:
    first = desired_state(body(spec()), {}, CATALOG, now=T0)
    job = first.apply[1]["metadata"]["name"]
    failed = live_children(first.apply, Failed="True")
    error = "listing org/x@main: HTTP 401: set spec.model.credentialsSecretRef"
    pod = FillPod(job=job, name=f"{job}-abc", phase="Failed", message=json.dumps({"error": error}))
    d = desired_state(
        body(spec(), roundtrip(first.status)), failed, CATALOG, now=T1, fill_pods=[pod]
    )
    c = conds(d.status)
    assert c["Stalled"]["status"] == "True" and c["Stalled"]["reason"] == "WeightCacheFailed"
    assert "HTTP 401" in c["WeightsCached"]["message"]
    assert f"delete Job {job} to retry" in c["WeightsCached"]["message"]
    assert "Deployment" not in [o["kind"] for o in d.apply], "no pod starts from a partial cache"


def test_a_fill_pod_that_cannot_start_says_why() -> None:
    first = desired_state(body(spec()), {}, CATALOG, now=T0)
    job = first.apply[1]["metadata"]["name"]
    pod = FillPod(job=job, name=f"{job}-x", phase="Pending",
                  failure=PodFailure("CreateContainerConfigError",
                                     'container fill: secret "hf-token" not found', 0))  # fmt: skip
    d = desired_state(
        body(spec(), roundtrip(first.status)), live_children(first.apply), CATALOG, now=T1,
        fill_pods=[pod],
    )  # fmt: skip
    c = conds(d.status)["WeightsCached"]
    assert c["reason"] == "FillBlocked" and 'secret "hf-token" not found' in c["message"]


def test_status_startup_shows_the_estimate_beside_what_pods_measured() -> None:
    status, children = _serving(spec())
    pods = [
        PodInfo(name=f"p{i}", ready=True, revision=children["Deployment"].revision,
                start_to_ready_seconds=s)
        for i, s in enumerate((41.0, 45.0, 90.0))
    ]  # fmt: skip
    d = desired_state(body(spec(), status), children, CATALOG, now=T1, pods=pods)
    startup = d.status["startup"]
    assert startup["weightsFrom"] == "cache" and startup["measuredSeconds"] == 45.0
    assert startup["measuredPods"] == 3 and startup["estimatedSeconds"] > 0


def test_a_long_dmd_name_gets_a_job_name_a_label_can_hold() -> None:
    name = "a-very-long-deployment-name-for-the-reasoning-tier-7b"  # 53 characters
    b = support_dmd(name, spec(), namespace="ns", uid="u-1", generation=1)
    first = desired_state(b, {}, CATALOG, now=T0)
    job = next(o for o in first.apply if o["kind"] == "Job")["metadata"]["name"]
    assert len(job) <= 63 and job.endswith("-weights-" + first.status["cache"]["claim"][-8:])
    again = desired_state(
        support_dmd(name, spec(), namespace="ns", uid="u-1", generation=1,
                    status=roundtrip(first.status)),
        live_children(first.apply), CATALOG, now=T1,
    )  # fmt: skip
    assert "Job" not in [o["kind"] for o in again.apply], "the live Job is found by its key"


def test_turning_the_cache_off_deletes_its_claim_and_job() -> None:
    status, children = _serving(spec())
    off = spec(cache={"mode": "None"})
    d = desired_state(body(off, status), children, CATALOG, now=T1)
    claim = status["cache"]["claim"]
    assert sorted(d.delete) == [("Job", claim), ("PersistentVolumeClaim", claim)]
    assert "cache" not in d.status
    assert [o["kind"] for o in d.apply] == ["Deployment"], "pods download again"


# ---- NodeLocal: the claim, then a copy on every node of the pool ------------------------


def node_local() -> dict[str, Any]:
    return spec(cache={"mode": "NodeLocal"})


def with_copies(
    children: dict[str, ChildState], objects: list[dict[str, Any]], nodes: int, ready: int
) -> dict[str, ChildState]:
    """``children`` with the pre-pull DaemonSet of ``objects`` as its controller counts
    it: scheduled on ``nodes`` nodes, ``ready`` of them with a complete copy."""
    out = dict(children)
    for obj in objects:
        if obj["kind"] == "DaemonSet":
            state = child_state(observed(obj, ready=ready, nodes=nodes))
            out[state.key] = state
    return out


def test_node_local_copies_on_the_serving_pods_nodes_and_pods_read_the_copy() -> None:
    r = rendered(node_local())
    assert r.cache is not None and r.cache.prepull is not None and r.cache.node_dir
    assert [o["kind"] for o in r.objects()][:3] == ["PersistentVolumeClaim", "Job", "DaemonSet"]
    ds, pod = r.cache.prepull, r.workload["spec"]["template"]["spec"]
    ds_pod = ds["spec"]["template"]["spec"]
    # Where the replicas may land, and nowhere else; no GPU taken from them.
    assert ds_pod["affinity"] == pod["affinity"] and ds_pod["tolerations"] == pod["tolerations"]
    assert "nvidia.com/gpu" not in json.dumps(ds_pod["containers"])
    assert ds["spec"]["selector"]["matchLabels"] == ds["spec"]["template"]["metadata"]["labels"]
    labels = ds["spec"]["template"]["metadata"]["labels"]
    assert "distillery.dev/deployment" not in labels and LABEL_CACHE_OF not in labels
    copy_ = ds_pod["containers"][0]
    assert copy_["command"][:2] == ["distillery", "cache-fill"] and "--hold" in copy_["command"]
    assert MARKER in copy_["readinessProbe"]["exec"]["command"][-1]
    volumes = {v["name"]: v for v in ds_pod["volumes"]}
    assert volumes["weights"]["persistentVolumeClaim"]["readOnly"] is True
    assert volumes["local"]["hostPath"]["path"] == r.cache.node_dir
    assert r.cache.node_dir == f"/var/lib/distillery/weights/ns/{r.cache.claim}"
    # The serving pods mount the node's copy where a Shared cache's claim would be.
    model = next(v for v in pod["volumes"] if v["name"] == "model")
    assert model == {
        "name": "model",
        "hostPath": {"path": r.cache.node_dir, "type": "DirectoryOrCreate"},
    }
    shared = rendered(spec())
    engine = next(c for c in pod["containers"] if c["name"] == "engine")
    shared_engine = next(
        c
        for c in shared.workload["spec"]["template"]["spec"]["containers"]
        if c["name"] == "engine"
    )
    assert engine["args"] == shared_engine["args"]
    # A pod on a node whose copy is still being made waits for it rather than failing.
    assert "until test -f" in pod["initContainers"][0]["command"][-1]
    assert (
        "until"
        not in shared.workload["spec"]["template"]["spec"]["initContainers"][0]["command"][-1]
    )


def test_node_local_reads_faster_than_the_shared_claim() -> None:
    local = DistilledModelDeployment.model_validate(body(node_local()))
    shared = DistilledModelDeployment.model_validate(body(spec()))
    assert replica_startup_seconds(local, plan(local.spec, CATALOG)) < replica_startup_seconds(
        shared, plan(shared.spec, CATALOG)
    )


def test_node_local_holds_replicas_until_every_node_has_its_copy() -> None:
    s = node_local()
    first = desired_state(body(s), {}, CATALOG, now=T0)
    kinds = [o["kind"] for o in first.apply]
    assert kinds[:2] == ["PersistentVolumeClaim", "Job"]
    assert "DaemonSet" not in kinds and "Deployment" not in kinds, "nothing to copy yet"
    filled = live_children(first.apply, Complete="True")
    second = desired_state(body(s, roundtrip(first.status)), filled, CATALOG, now=T1)
    assert [o["kind"] for o in second.apply] == ["DaemonSet"], "no replica before the copies"
    assert second.status["cache"]["phase"] == "Distributing"
    c = conds(second.status)
    assert c["Ready"]["reason"] == "CopyingWeightsToNodes"
    assert c["WeightsCached"]["status"] == "False"
    copying = with_copies(filled, second.apply, nodes=3, ready=1)
    third = desired_state(body(s, roundtrip(second.status)), copying, CATALOG, now=T1)
    assert all(o["kind"] != "Deployment" for o in third.apply)
    cache = third.status["cache"]
    assert (cache["phase"], cache["nodes"], cache["nodesReady"]) == ("Distributing", 3, 1)
    assert "1/3 node(s)" in cache["message"]
    copied = with_copies(filled, second.apply, nodes=3, ready=3)
    fourth = desired_state(body(s, roundtrip(third.status)), copied, CATALOG, now=T1)
    assert [o["kind"] for o in fourth.apply] == ["Deployment"]
    assert fourth.status["cache"]["phase"] == "Ready"
    assert conds(fourth.status)["WeightsCached"]["status"] == "True"
    # A node joins the pool: the replicas already serving go on, the status says so.
    serving = {**copied, **live_children(fourth.apply)}
    joined = with_copies(serving, second.apply, nodes=4, ready=3)
    fifth = desired_state(body(s, roundtrip(fourth.status)), joined, CATALOG, now=T2)
    assert fifth.status["cache"]["phase"] == "Ready" and fifth.scale == {}
    assert "3/4 node(s)" in fifth.status["cache"]["message"]
    DistilledModelDeploymentStatus.model_validate(roundtrip(fifth.status))


def test_node_local_with_no_node_in_the_pool_yet_does_not_wait_forever() -> None:
    """Held replicas would ask no cluster autoscaler for a node, and without a node the
    copy never runs: with none scheduled, replicas are created and wait on their node."""
    s = node_local()
    first = desired_state(body(s), {}, CATALOG, now=T0)
    filled = live_children(first.apply, Complete="True")
    second = desired_state(body(s, roundtrip(first.status)), filled, CATALOG, now=T1)
    empty = with_copies(filled, second.apply, nodes=0, ready=0)
    third = desired_state(body(s, roundtrip(second.status)), empty, CATALOG, now=T1)
    assert [o["kind"] for o in third.apply] == ["Deployment"]
    assert "no node of the pool yet" in third.status["cache"]["message"]


def test_leaving_node_local_deletes_the_prepull_and_keeps_the_claim() -> None:
    s = node_local()
    first = desired_state(body(s), {}, CATALOG, now=T0)
    filled = live_children(first.apply, Complete="True")
    second = desired_state(body(s, roundtrip(first.status)), filled, CATALOG, now=T1)
    copied = with_copies(filled, second.apply, nodes=2, ready=2)
    shared = desired_state(body(spec(), roundtrip(second.status)), copied, CATALOG, now=T1)
    ds = second.apply[0]["metadata"]["name"]
    assert shared.delete == [("DaemonSet", ds)]
    assert all(o["kind"] != "PersistentVolumeClaim" for o in shared.apply), "same claim"
    off = desired_state(body(spec(cache={"mode": "None"})), copied, CATALOG, now=T1)
    assert ("DaemonSet", ds) in off.delete and ("PersistentVolumeClaim", filled_claim(filled)) in (
        off.delete
    )


def filled_claim(children: dict[str, ChildState]) -> str:
    return next(c.name for c in children.values() if c.kind == "PersistentVolumeClaim")


def test_a_running_fill_shows_how_far_it_is() -> None:
    first = desired_state(body(spec()), {}, CATALOG, now=T0)
    job = first.apply[1]["metadata"]["name"]
    pods = [
        FillPod(job=job, name=f"{job}-a", phase="Running", progress_bytes=6_000_000_000),
        FillPod(job="another-job", name="x", phase="Running", progress_bytes=9),
    ]
    d = desired_state(
        body(spec(), roundtrip(first.status)), live_children(first.apply), CATALOG, now=T1,
        fill_pods=pods,
    )  # fmt: skip
    cache = d.status["cache"]
    assert cache["phase"] == "Filling" and cache["filledBytes"] == 6_000_000_000
    assert "6.0 of 15.2 GB written" in cache["message"]
    assert "6.0 of" in conds(d.status)["WeightsCached"]["message"]
    assert parse_progress('a: 1 bytes\nprogress: {"bytes": 5, "of": 9}\nb: 2 bytes') == 5
    assert parse_progress("progress: not json") is None and parse_progress("") is None
