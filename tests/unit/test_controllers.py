"""The controllers (kube/*_controller.py) against an in-memory cluster: what they write,
what they remember between reconciles, how they recover from a failed write, and what
the autoscaler does when metrics are missing."""

from __future__ import annotations

import asyncio
import copy
import json
import time
from collections.abc import Iterable, Mapping
from typing import Any

import pytest

from distillery.autoscale.inputs import PodInfo, PodKey, PodMetrics
from distillery.autoscale.source import MetricsUnavailableError
from distillery.catalog import load_catalog
from distillery.kube import ApiError
from distillery.kube.autoscale_controller import Autoscaler
from distillery.kube.canary_controller import CanaryAnalyzer
from distillery.kube.client import NodeCatalog
from distillery.kube.plans import PlanCache
from distillery.kube.reconcile_controller import Reconciler
from distillery.kube.retry import RetrySchedule
from distillery.kube.runtime import CONCURRENT_RECONCILES, Runtime
from distillery.kube.watched import CHILD_INDICES
from distillery.reconcile.cache import FillPod
from distillery.render import RenderOptions
from distillery.rollout import COMMAND_ANNOTATION
from tests.support.dmds import dmd
from tests.support.dmds import spec as dmd_spec
from tests.support.fake_cluster import FakeCluster

CATALOG = load_catalog()
NS = "team-a"


def body(name: str = "m", status: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    base = dmd_spec("Qwen-7B", "nvidia-h100-80gb", scaling={"minReplicas": 1, "maxReplicas": 4})
    return dmd(name, {**base, **spec}, namespace=NS, status=status, uid=f"uid-{name}", generation=1)


def _ready(cluster: FakeCluster) -> dict[str, Any]:
    conds = cluster.status[(NS, "m")]["conditions"]
    return next(c for c in conds if c["type"] == "Ready")


def reconciler(cluster: FakeCluster) -> Reconciler:
    return Reconciler(kube=cluster, catalog=CATALOG, options=RenderOptions())


def test_a_new_dmd_is_applied_once_and_a_steady_state_writes_nothing() -> None:
    cluster = FakeCluster()
    r = reconciler(cluster)

    async def scenario() -> None:
        await r.reconcile(body(), {})
        applied = sorted(w for m, w in cluster.writes() if m == "apply")
        assert applied == ["Deployment/m", "PodDisruptionBudget/m", "Service/m"]
        assert ("patch_dmd_status", "m") in cluster.writes()
        assert [e[1] for e in cluster.events] == ["Planned"]
        # The watch has not caught up (no children, old status): nothing is applied again,
        # no rollout is started for a Deployment the watch does not show yet, and the
        # status stays Creating until the Deployment's controller has observed it.
        before = len(cluster.writes())
        await r.reconcile(body(), {})
        assert cluster.writes()[before:] == []
        assert _ready(cluster)["reason"] == "Creating"
        assert [e[1] for e in cluster.events] == ["Planned"]
        rollout = cluster.status[(NS, "m")]["rollout"]
        assert rollout["phase"] == "Stable", rollout
        again = len(cluster.writes())
        await r.reconcile(body(), {})
        assert cluster.writes()[again:] == []
        # The watch catches up and the pods are ready: status and a Ready event, once.
        status = copy.deepcopy(cluster.status[(NS, "m")])
        await r.reconcile(body(status=status), cluster.children(NS, "m"))
        assert [e[1] for e in cluster.events] == ["Planned", "Ready"]
        assert not [w for w in cluster.writes()[before:] if w[0] == "apply"]
        settled = len(cluster.writes())
        status = copy.deepcopy(cluster.status[(NS, "m")])
        for _ in range(3):
            await r.reconcile(body(status=status), cluster.children(NS, "m"))
        assert cluster.writes()[settled:] == []

    asyncio.run(scenario())


def test_a_failed_apply_is_not_remembered_as_done() -> None:
    cluster = FakeCluster()
    r = reconciler(cluster)
    cluster.fail_next("apply", ApiError(status=500, reason="etcd leader changed"))

    async def scenario() -> None:
        with pytest.raises(ApiError):
            await r.reconcile(body(), {})
        assert not cluster.objects
        await r.reconcile(body(), {})
        kinds = sorted(kind for kind, _, _ in cluster.objects)
        assert kinds == ["Deployment", "PodDisruptionBudget", "Service"]

    asyncio.run(scenario())


def test_a_template_configmap_is_read_on_each_reconcile() -> None:
    cluster = FakeCluster()
    r = reconciler(cluster)
    spec: dict[str, Any] = {"serving": {"templateRef": {"name": "pod-extra"}}}

    async def scenario() -> None:
        desired = await r.reconcile(body(**spec), {})
        assert desired.stalled_reason == "TemplateNotFound" and not cluster.objects
        conditions = {c["type"]: c for c in cluster.status[(NS, "m")]["conditions"]}
        assert (
            "ConfigMap pod-extra with key pod.yaml.j2 not found"
            in (conditions["Stalled"]["message"])
        )
        cluster.config_maps[(NS, "pod-extra")] = {
            "pod.yaml.j2": "metadata: {annotations: {team: '{{ dmd.name }}-owners'}}"
        }
        status = copy.deepcopy(cluster.status[(NS, "m")])
        await r.reconcile(body(status=status, **spec), {})
        deployment = cluster.objects[("Deployment", NS, "m")]
        assert deployment["spec"]["template"]["metadata"]["annotations"]["team"] == "m-owners"

    asyncio.run(scenario())


def test_plans_use_the_gpus_nodes_offer_and_keep_them_when_nodes_cannot_be_listed() -> None:
    cluster = FakeCluster()
    cluster.gpus_per_node = {"NVIDIA-L4": 1}
    nodes = NodeCatalog(cluster, CATALOG, ttl_seconds=3600)
    r = Reconciler(kube=cluster, catalog=CATALOG, options=RenderOptions(), nodes=nodes)
    big: dict[str, Any] = {
        "model": {"name": "deepseek-ai/DeepSeek-R1-Distill-Qwen-14B", "quantization": "none"},
        "placement": {"gpuTypes": ["nvidia-l4"], "maxNodesPerReplica": 1},
    }

    async def scenario() -> None:
        desired = await r.reconcile(body(**big), {})
        assert desired.stalled_reason == "DoesNotFit"
        assert not cluster.objects
        # Read once per TTL, not per reconcile.
        await r.reconcile(body(**big), {})
        assert [c for c in cluster.calls if c[0] == "node_gpu_counts"] == [("node_gpu_counts", "")]

    asyncio.run(scenario())


class FakeSource:
    """Metrics as Prometheus would return them, or an outage."""

    def __init__(self, metrics: dict[PodKey, PodMetrics] | None = None) -> None:
        self.metrics = metrics or {}
        self.down = False
        # What each demand query returns (by PromQL), and the queries asked.
        self.demands: dict[str, float | None] = {}
        self.asked: list[str] = []

    def collect(self, engines: Iterable[str]) -> dict[PodKey, PodMetrics]:
        if self.down:
            raise MetricsUnavailableError("Prometheus at http://prom did not answer: Timeout")
        return self.metrics

    def fresh(self, metrics: PodMetrics, now: float | None = None) -> bool:
        return True

    def demand(self, queries: Mapping[tuple[str, str], str]) -> dict[tuple[str, str], float | None]:
        self.asked += list(queries.values())
        return {key: self.demands.get(q) for key, q in queries.items()}


def busy(pods: list[str]) -> dict[PodKey, PodMetrics]:
    """Pods with full batches (64) and a queue (40) behind them, reporting now."""
    now = time.time()
    return {
        (NS, pod): PodMetrics(
            running=64.0,
            waiting=40.0,
            kv_usage=0.95,
            generation_tokens_rate=3000.0,
            prompt_tokens_rate=2000.0,
            completions_rate=1.5,
            last_sample=now,
        )
        for pod in pods
    }


def ready_pods(n: int) -> dict[tuple[str, str], list[PodInfo]]:
    return {(NS, "m"): [PodInfo(name=f"m-{i}", ready=True) for i in range(n)]}


def test_the_autoscaler_holds_and_says_why_when_metrics_are_missing() -> None:
    cluster = FakeCluster()
    source = FakeSource()
    scaler = Autoscaler(kube=cluster, catalog=CATALOG, source=source)
    dmd = body(replicas=3)

    async def scenario() -> None:
        source.down = True
        await scaler.run_pass([dmd], ready_pods(3))
        auto = cluster.status[(NS, "m")]["autoscaling"]
        assert auto["metricsAvailable"] is False
        assert "did not answer" in auto["metricsMessage"] and "holding" in auto["metricsMessage"]
        # Ready pods but none reporting: hold too, never scale down on missing data.
        source.down = False
        await scaler.run_pass([dmd], ready_pods(3))
        assert not [w for w in cluster.writes() if w[0] == "scale_dmd"]
        no_source = Autoscaler(kube=cluster, catalog=CATALOG, source=None)
        await no_source.run_pass([dmd], ready_pods(3))
        assert (
            "no Prometheus configured" in cluster.status[(NS, "m")]["autoscaling"]["metricsMessage"]
        )
        assert not [w for w in cluster.writes() if w[0] == "scale_dmd"]

    asyncio.run(scenario())


def test_the_autoscaler_scales_up_on_load_through_scale_and_says_why() -> None:
    # Three ready replicas with full batches and a queue behind them.
    load = busy([f"m-{i}" for i in range(3)])
    cluster = FakeCluster()
    scaler = Autoscaler(kube=cluster, catalog=CATALOG, source=FakeSource(load))
    dmd = body(replicas=3, scaling={"minReplicas": 1, "maxReplicas": 8})

    async def scenario() -> None:
        await scaler.run_pass([dmd], ready_pods(3))
        scaled = [w for w in cluster.writes() if w[0] == "scale_dmd"]
        assert len(scaled) == 1 and cluster.replicas[(NS, "m")] > 3, cluster.calls
        auto = cluster.status[(NS, "m")]["autoscaling"]
        [decision] = auto["lastDecisions"]
        assert decision["from"] == 3 and decision["to"] == cluster.replicas[(NS, "m")]
        assert decision["inputs"]["waiting"] == pytest.approx(120.0)
        assert [e[1] for e in cluster.events] == ["ScaledUp"]

    asyncio.run(scenario())


def test_status_fields_no_longer_computed_are_cleared() -> None:
    """A merge patch keeps what it does not mention: what the new status lacks is sent
    as null (a rollout that moved on must not keep the last step's start)."""
    cluster = FakeCluster()
    r = reconciler(cluster)
    stale = {
        "rollout": {
            "strategy": "RollingUpdate",
            "phase": "Progressing",
            "canaryRevision": "old",
            "stepStartedAt": "2026-01-01T00:00:00Z",
        }
    }
    cluster.status[(NS, "m")] = copy.deepcopy(stale)

    async def scenario() -> None:
        await r.reconcile(body(status=copy.deepcopy(stale)), {})
        rollout = cluster.status[(NS, "m")]["rollout"]
        assert "stepStartedAt" not in rollout and rollout["phase"] == "Stable", rollout
        assert "canaryRevision" not in rollout, rollout

    asyncio.run(scenario())


def runtime_for(cluster: FakeCluster) -> Runtime:
    return Runtime(
        reconciler=reconciler(cluster),
        autoscaler=Autoscaler(kube=cluster, catalog=CATALOG, source=None),
        analyzer=CanaryAnalyzer(None),
        retries=RetrySchedule(base=0.01, cap=0.05),
    )


def indices_with(*bodies: dict[str, Any]) -> dict[str, Any]:
    """The indices as the runtime reads them: stores of values by (namespace, name)."""
    return {
        "dmd_bodies": {(b["metadata"]["namespace"], b["metadata"]["name"]): [b] for b in bodies},
        "dmd_pods": {},
        "fill_pods": {},
        **{name: {} for name in CHILD_INDICES},
    }


def test_the_runtime_retries_a_failed_reconcile_from_the_latest_body() -> None:
    cluster = FakeCluster()
    runtime = runtime_for(cluster)
    runtime.indices = indices_with(body())
    cluster.fail_next("apply", ApiError(status=403, reason="exceeded quota"))

    async def scenario() -> None:
        await runtime.reconcile(body(), runtime.indices or {})
        assert runtime.retries.failures((NS, "m")) == 1 and not cluster.objects
        # The retry runs on its own task (a zero delay here), its apply in a thread: on a
        # busy machine that takes a moment, so wait for it with a generous bound. The
        # objects appear mid-reconcile; the failure count clears only at its end.
        for _ in range(1000):
            await asyncio.sleep(0.01)
            if runtime.retries.failures((NS, "m")) == 0:
                break
        kinds = sorted(kind for kind, _, _ in cluster.objects)
        assert kinds == ["Deployment", "PodDisruptionBudget", "Service"]
        assert runtime.retries.failures((NS, "m")) == 0 and not runtime.retries.pending()
        runtime.forget(NS, "m")
        await runtime.stop()

    asyncio.run(scenario())


def test_events_of_a_dmd_waiting_for_its_turn_make_one_reconcile_of_the_latest_body() -> None:
    """A burst's child events would reconcile each DMD once per child: while one waits
    for a slot, the others add nothing, and the one that runs reads the latest body. A
    DMD deleted while it waited is not reconciled at all."""
    cluster = FakeCluster()
    runtime = runtime_for(cluster)
    first, latest = body(), body(scaling={"minReplicas": 2, "maxReplicas": 4})
    runtime.indices = indices_with(first)

    async def scenario() -> None:
        assert runtime.indices is not None
        for _ in range(CONCURRENT_RECONCILES):  # every slot taken
            await runtime._slots.acquire()
        waiting = [asyncio.create_task(runtime.reconcile(first, runtime.indices)) for _ in range(5)]
        gone = asyncio.create_task(runtime.reconcile(body("gone"), runtime.indices))
        await asyncio.sleep(0)
        runtime.indices["dmd_bodies"][(NS, "m")] = [latest]  # the watch moved on
        for _ in range(CONCURRENT_RECONCILES):
            runtime._slots.release()
        await asyncio.gather(*waiting, gone)
        applied = [what for call, what in cluster.writes() if call == "apply"]
        assert sorted(applied) == ["Deployment/m", "PodDisruptionBudget/m", "Service/m"]
        deployment = cluster.objects[("Deployment", NS, "m")]
        assert deployment["spec"]["replicas"] == 2  # the latest spec, not the first
        assert [w for w in cluster.writes() if w[0] == "patch_dmd_status"] == [
            ("patch_dmd_status", "m")
        ]
        # After it ran, a new event reconciles again (nothing missed): here, no change.
        await runtime.reconcile(first, runtime.indices)
        assert len(applied) == 3

    asyncio.run(scenario())


def test_the_loops_wait_for_the_indices_and_reconcile_only_rollouts_under_way() -> None:
    cluster = FakeCluster()
    runtime = runtime_for(cluster)

    async def scenario() -> None:
        # Before any handler ran there is nothing to loop over.
        await runtime.resync_pass()
        await runtime.rollout_pass()
        await runtime.autoscale_pass()
        assert cluster.calls == []
        runtime.indices = indices_with(body())
        await runtime.rollout_pass()  # a Stable DMD: no rollout under way
        assert cluster.writes() == []
        await runtime.resync_pass()
        assert ("apply", "Deployment/m") in cluster.writes()

    asyncio.run(scenario())


def test_the_autoscaler_status_is_what_the_crd_schema_keeps() -> None:
    from distillery.api.types import AutoscalingStatus

    now = time.time()
    load = {(NS, "m-0"): PodMetrics(running=64.0, waiting=40.0, last_sample=now)}
    cluster = FakeCluster()
    scaler = Autoscaler(kube=cluster, catalog=CATALOG, source=FakeSource(load))

    async def scenario() -> None:
        await scaler.run_pass([body(replicas=1)], ready_pods(1))
        AutoscalingStatus.model_validate(cluster.status[(NS, "m")]["autoscaling"])

    asyncio.run(scenario())


def test_a_reconcile_that_keeps_failing_says_why_on_the_dmd_once() -> None:
    cluster = FakeCluster()
    runtime = runtime_for(cluster)
    runtime.indices = indices_with(body())
    quota = ApiError(status=403, reason="Forbidden")
    quota.body = json.dumps(
        {"message": 'deployments.apps "m" is forbidden: exceeded quota: no-deployments'}
    )
    cluster.fail_next("apply", quota, times=4)

    async def scenario() -> None:
        await runtime.reconcile(body(), runtime.indices or {})
        for _ in range(300):
            await asyncio.sleep(0.01)
            if cluster.objects:
                break
        await runtime.stop()

    asyncio.run(scenario())
    warnings = [e for e in cluster.events if e[1] == "ReconcileFailed"]
    assert len(warnings) == 1, cluster.events
    assert warnings[0][0] == "Warning"
    assert "3 reconciles in a row failed" in warnings[0][2]
    assert "API 403 Forbidden: deployments.apps" in warnings[0][2]
    assert "exceeded quota" in warnings[0][2] and "HTTP response headers" not in warnings[0][2]
    assert ("Deployment", NS, "m") in cluster.objects  # and then it went through


def test_long_scheduler_messages_are_clipped_to_what_the_schema_keeps() -> None:
    """A status field longer than the CRD's maxLength makes the whole patch fail: the
    scheduler's message for a large cluster can be that long."""
    from distillery.api.types import STATUS_MESSAGE_LIMIT, AutoscalingStatus

    now = time.time()
    reason = "0/900 nodes are available: " + ", ".join(
        f"{i} node(s) had untolerated taint {{pool-{i}: reserved}}" for i in range(200)
    )
    load = {
        (NS, "m-0"): PodMetrics(running=64.0, waiting=400.0, last_sample=now),
    }
    pods = {
        (NS, "m"): [
            PodInfo(name="m-0", ready=True),
            PodInfo(name="m-1", ready=False, unschedulable=reason),
        ]
    }
    cluster = FakeCluster()
    scaler = Autoscaler(kube=cluster, catalog=CATALOG, source=FakeSource(load))

    async def scenario() -> None:
        await scaler.run_pass([body(replicas=2)], pods)

    asyncio.run(scenario())
    auto = cluster.status[(NS, "m")]["autoscaling"]
    assert auto["limitedReason"] == "Unschedulable"
    assert len(auto["limitedBy"]) == STATUS_MESSAGE_LIMIT and auto["limitedBy"].endswith("...")
    AutoscalingStatus.model_validate(auto)


def test_both_loops_share_one_plan_per_generation_and_node_catalog() -> None:
    cluster = FakeCluster()
    plans = PlanCache()
    r = Reconciler(kube=cluster, catalog=CATALOG, options=RenderOptions(), plans=plans)
    scaler = Autoscaler(kube=cluster, catalog=CATALOG, source=None, plans=plans)
    dmd = body()

    async def scenario() -> None:
        await r.reconcile(dmd, {})
        await scaler.run_pass([dmd], ready_pods(1))
        await r.reconcile(dmd, {})
        assert plans.plans_made == 1
        # A spec change bumps the generation: planned again, once.
        changed = body(scaling={"minReplicas": 2, "maxReplicas": 4})
        changed["metadata"]["generation"] = 2
        await r.reconcile(changed, {})
        await scaler.run_pass([changed], ready_pods(1))
        assert plans.plans_made == 2
        # Another DMD with the same spec shares its parse and plan, under its own name.
        twin = body("twin", scaling={"minReplicas": 2, "maxReplicas": 4})
        mine, theirs = plans.resolve(twin, CATALOG), plans.resolve(changed, CATALOG)
        assert plans.plans_made == 2 and mine is not None and theirs is not None
        assert mine[0].name == "twin" and theirs[0].name == "m"
        assert mine[0].spec is theirs[0].spec and mine[1] is theirs[1]
        # New GPU counts from the nodes are a new catalog: planned again.
        assert plans.resolve(changed, CATALOG.with_node_gpus({"NVIDIA-H100-80GB-HBM3": 8}))
        assert plans.plans_made == 3

    asyncio.run(scenario())
    # An invalid spec is not cached as a plan: the reconciler still says why.
    bad = body(scaling={"minReplicas": 5, "maxReplicas": 2})
    assert plans.resolve(bad, CATALOG) is None
    desired = asyncio.run(r.reconcile(bad, {}))
    assert desired.stalled_reason == "InvalidSpec"


def test_a_rollout_is_not_complete_before_the_watch_sees_the_new_revision() -> None:
    cluster = FakeCluster()
    r = reconciler(cluster)
    v1 = body()
    v2 = body(model={"name": "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", "revision": "v2"})
    v2["metadata"]["generation"] = 2

    async def scenario() -> None:
        await r.reconcile(v1, {})
        seen = cluster.children(NS, "m")  # the watch at v1, every replica ready
        await r.reconcile(body(status=copy.deepcopy(cluster.status[(NS, "m")])), seen)
        assert cluster.status[(NS, "m")]["rollout"]["phase"] == "Stable"
        v2["status"] = copy.deepcopy(cluster.status[(NS, "m")])
        await r.reconcile(v2, seen)
        assert cluster.status[(NS, "m")]["rollout"]["phase"] == "Progressing"
        # The watch still shows v1 (our apply not seen yet): still rolling, not done.
        v2["status"] = copy.deepcopy(cluster.status[(NS, "m")])
        await r.reconcile(v2, seen)
        rollout = cluster.status[(NS, "m")]["rollout"]
        assert rollout["phase"] == "Progressing", rollout
        # The watch catches up: every replica of v2 ready, and the rollout completes.
        v2["status"] = copy.deepcopy(cluster.status[(NS, "m")])
        await r.reconcile(v2, cluster.children(NS, "m"))
        assert cluster.status[(NS, "m")]["rollout"]["phase"] == "Stable"

    asyncio.run(scenario())


def test_the_autoscaler_status_is_built_from_its_model_and_survives_old_shapes() -> None:
    """A decision recorded in another shape (an older operator, a hand edit) is dropped
    with a warning; the autoscaler keeps deciding and the status it writes parses."""
    from distillery.api.types import AutoscalingStatus

    now = time.time()
    load = {(NS, "m-0"): PodMetrics(running=64.0, waiting=400.0, last_sample=now)}
    cluster = FakeCluster()
    scaler = Autoscaler(kube=cluster, catalog=CATALOG, source=FakeSource(load))
    old = {"autoscaling": {"lastDecisions": [{"when": "yesterday"}, {"from": 1}]}}

    async def scenario() -> None:
        await scaler.run_pass([body(status=old, replicas=1)], ready_pods(1))

    asyncio.run(scenario())
    auto = cluster.status[(NS, "m")]["autoscaling"]
    AutoscalingStatus.model_validate(auto)
    [decision] = auto["lastDecisions"]
    assert decision["from"] == 1 and decision["to"] > 1


def test_a_running_fill_is_asked_for_its_progress_and_a_failing_log_read_is_harmless() -> None:
    cluster = FakeCluster()
    r = reconciler(cluster)
    s: dict[str, Any] = {
        "model": {"name": "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", "cache": {"mode": "Shared"}}
    }

    async def scenario() -> None:
        first = await r.reconcile(body(**s), {})
        assert first.rendered is not None and first.rendered.cache is not None
        job = first.rendered.cache.job
        running = FillPod(job=job, name=f"{job}-p", phase="Running")
        done = FillPod(job=job, name=f"{job}-old", phase="Failed")
        cluster.logs[(NS, running.name)] = 'x: 1 bytes\nprogress: {"bytes": 4200000000, "of": 1}'
        status = copy.deepcopy(cluster.status[(NS, "m")])
        await r.reconcile(
            body(status=status, **s), cluster.children(NS, "m"), fill_pods=[running, done]
        )
        assert ("pod_log_tail", running.name) in cluster.calls
        assert ("pod_log_tail", done.name) not in cluster.calls, "only a running fill logs"
        assert cluster.status[(NS, "m")]["cache"]["filledBytes"] == 4200000000
        cluster.fail_next("pod_log_tail", ApiError(status=403))
        status = copy.deepcopy(cluster.status[(NS, "m")])
        await r.reconcile(body(status=status, **s), cluster.children(NS, "m"), fill_pods=[running])
        assert cluster.status[(NS, "m")]["cache"]["phase"] == "Filling"

    asyncio.run(scenario())


def test_a_dmd_at_zero_wakes_when_its_router_holds_requests_and_not_before() -> None:
    """Scale from zero: no pods, no engine metrics; the router's queue for the DMD's
    pool is the evidence. Unknown demand (no series) holds at zero."""
    cluster = FakeCluster()
    source = FakeSource()
    scaler = Autoscaler(kube=cluster, catalog=CATALOG, source=source)
    dmd = body(replicas=0, scaling={"minReplicas": 0, "maxReplicas": 4, "demandQuery": "q"})
    queries = {(NS, "m"): "q"}

    async def scenario() -> None:
        await scaler.run_pass([dmd], {}, queries)  # no series: unknown
        source.demands["q"] = 0.0
        await scaler.run_pass([dmd], {}, queries)  # nothing waits
        assert not [w for w in cluster.writes() if w[0] == "scale_dmd"]
        source.demands["q"] = 3.0
        await scaler.run_pass([dmd], {}, queries)
        assert [w for w in cluster.writes() if w[0] == "scale_dmd"] == [("scale_dmd", "m=1")]
        [decision] = cluster.status[(NS, "m")]["autoscaling"]["lastDecisions"]
        assert decision["reason"] == "scale from zero: 3 requests wait at the router"
        assert decision["inputs"]["routerQueue"] == 3.0
        assert source.asked == ["q", "q", "q"]

    asyncio.run(scenario())


def test_a_dmd_at_zero_with_nothing_to_wake_it_says_so() -> None:
    """minReplicas: 0 without demandQuery and in no route: admitted (a route may name it
    later), held at zero, and status says nothing will wake it and how to fix that."""
    from distillery.kube.autoscale_controller import NO_WAKE_SIGNAL

    cluster = FakeCluster()
    scaler = Autoscaler(kube=cluster, catalog=CATALOG, source=FakeSource())
    dmd = body(replicas=0, scaling={"minReplicas": 0, "maxReplicas": 4})
    asyncio.run(scaler.run_pass([dmd], {}, {}))
    auto = cluster.status[(NS, "m")]["autoscaling"]
    assert auto["metricsMessage"] == NO_WAKE_SIGNAL
    assert "demandQuery" in NO_WAKE_SIGNAL and "ReasoningRoute" in NO_WAKE_SIGNAL
    assert not [w for w in cluster.writes() if w[0] == "scale_dmd"]
    # Named by a route (a demand query): no such message.
    asyncio.run(scaler.run_pass([dmd], {}, {(NS, "m"): "q"}))
    assert cluster.status[(NS, "m")]["autoscaling"].get("metricsMessage") != NO_WAKE_SIGNAL


def test_each_tier_of_an_inference_pool_route_reads_its_pickers_queue() -> None:
    from distillery.reconcile.route import demand_queries

    route = {
        "metadata": {"namespace": NS, "name": "r1"},
        "spec": {"tiers": [{"name": "routine", "deployment": "m"}]},
        "status": {"backend": "InferencePool"},
    }
    queries = demand_queries([body(), body("own", scaling={"demandQuery": "mine"})], [route])
    assert queries[(NS, "m")] == (
        'sum(inference_extension_flow_control_queue_size{namespace="' + NS + '",'
        'pod=~"r1-routine-epp-.+"})'
    )
    assert queries[(NS, "own")] == "mine"
    # Without the extension there is no picker, and no queue to read.
    service_route = {**route, "status": {"backend": "Service"}}
    assert (NS, "m") not in demand_queries([body()], [service_route])


def test_tiers_sharing_a_budget_are_capped_together_and_say_by_what() -> None:
    """Both tiers of a route are under load; alone each would scale up. Their route's
    budget (30/h) holds them at what it pays for together: 2 + 2 replicas at 6.88/h."""
    from distillery.autoscale.policy import SharedBudget
    from distillery.reconcile.route import shared_budgets

    load = busy([f"{dmd_name}-{i}" for dmd_name in ("a", "b") for i in range(2)])
    pods = {(NS, n): [PodInfo(name=f"{n}-{i}", ready=True) for i in range(2)] for n in ("a", "b")}
    route = {
        "metadata": {"namespace": NS, "name": "r1"},
        "spec": {
            "tiers": [{"name": "x", "deployment": "a"}, {"name": "y", "deployment": "b"}],
            "budget": {"maxCostPerHour": 30.0},
        },
    }
    budgets = shared_budgets([route])
    assert budgets[(NS, "a")] == SharedBudget(
        name="route r1's shared budget", max_cost_per_hour=30.0, members=((NS, "a"), (NS, "b"))
    )
    cluster = FakeCluster()
    scaler = Autoscaler(kube=cluster, catalog=CATALOG, source=FakeSource(load))
    scaling = {"minReplicas": 1, "maxReplicas": 8}
    a, b = body("a", replicas=2, scaling=scaling), body("b", replicas=2, scaling=scaling)

    async def scenario() -> None:
        await scaler.run_pass([a, b], pods, None, budgets)
        price = scaler._capacity[(NS, "a")][1].price_per_replica_hour
        total = (cluster.replicas.get((NS, "a"), 2) + cluster.replicas.get((NS, "b"), 2)) * price
        assert total <= 30.0, (cluster.replicas, price)
        limited = [
            cluster.status[(NS, n)]["autoscaling"].get("limitedBy") or "" for n in ("a", "b")
        ]
        assert any("route r1's shared budget" in m for m in limited), limited
        # Alone, without the route's budget, the same load asks for more.
        alone = FakeCluster()
        await Autoscaler(kube=alone, catalog=CATALOG, source=FakeSource(load)).run_pass(
            [a, b], pods
        )
        assert sum(alone.replicas.values()) * price > 30.0

    asyncio.run(scenario())


def test_the_autoscale_pass_hands_the_routes_budgets_and_queues_to_the_autoscaler() -> None:
    cluster = FakeCluster()
    runtime = runtime_for(cluster)
    route = {
        "metadata": {"namespace": NS, "name": "r1"},
        "spec": {
            "tiers": [{"name": "routine", "deployment": "m"}],
            "budget": {"maxCostPerHour": 9.0},
        },
        "status": {"backend": "InferencePool"},
    }
    runtime.indices = {**indices_with(body()), "route_bodies": {(NS, "r1"): [route]}}
    seen: list[tuple[Any, ...]] = []

    async def record(*args: Any) -> None:
        seen.append(args)

    runtime.autoscaler.run_pass = record  # type: ignore[method-assign,assignment]
    asyncio.run(runtime.autoscale_pass())
    [(_, _, queries, budgets)] = seen
    assert "r1-routine-epp" in queries[(NS, "m")]
    assert budgets[(NS, "m")].max_cost_per_hour == 9.0


def test_a_deleted_tier_is_said_in_its_route_at_once() -> None:
    from distillery.kube.route_controller import RouteReconciler, ServedApis
    from distillery.render.routing import RouteRenderOptions
    from tests.support.routes import route as route_model

    cluster = FakeCluster()
    runtime = runtime_for(cluster)
    runtime.routes = RouteReconciler(
        kube=cluster,
        apis=ServedApis(gateway_api=lambda: True, inference_extension=lambda: True),
        options=RouteRenderOptions(endpoint_picker_image="epp:test"),
    )
    r = route_model(tiers=[{"name": "routine", "deployment": "m"}], rules=[])
    body_ = r.model_dump(by_alias=True, exclude_none=True, mode="json")
    body_["metadata"] = {"name": "r1", "namespace": NS, "uid": "u", "generation": 1}
    runtime.indices = {**indices_with(), "route_bodies": {(NS, "r1"): [body_]}}
    asyncio.run(runtime.tier_changed(NS, "m"))  # the DMD is gone from the index
    [ready] = [c for c in cluster.route_status[(NS, "r1")]["conditions"] if c["type"] == "Ready"]
    assert ready["reason"] == "TierDeploymentMissing" and "routine (m)" in ready["message"]


class PatchRecordingCluster(FakeCluster):
    """The fake cluster, keeping what each status patch said."""

    def __init__(self) -> None:
        super().__init__()
        self.status_patches: list[dict[str, Any]] = []

    def patch_dmd_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        self.status_patches.append(copy.deepcopy(dict(status)))
        super().patch_dmd_status(namespace, name, status)


def test_the_autoscaler_status_and_the_conditions_it_implies_are_one_patch() -> None:
    """A burst of new DMDs wrote status.autoscaling and then, once the watch showed it,
    the MetricsAvailable condition read from it: two patches and two watch events for
    one change. Through the reconciler it is one patch, written once even when a
    reconcile runs before the watch shows it."""
    cluster = PatchRecordingCluster()
    runtime = runtime_for(cluster)  # no Prometheus: the autoscaler says metrics are missing

    async def settle() -> None:
        await asyncio.gather(*runtime._submitted)

    async def scenario() -> None:
        runtime.indices = indices_with(body())
        await runtime.reconcile(body(), runtime.indices)
        first = {c["type"]: c for c in cluster.status_patches[0]["conditions"]}
        assert first["MetricsAvailable"]["reason"] == "NotEvaluated"
        shown = body(status=copy.deepcopy(cluster.status[(NS, "m")]))
        runtime.indices = indices_with(shown)
        await runtime.autoscale_pass()
        await settle()
        assert len(cluster.status_patches) == 2, cluster.status_patches
        patch = cluster.status_patches[1]
        assert patch["autoscaling"]["metricsAvailable"] is False
        conds = {c["type"]: c for c in patch["conditions"]}
        assert conds["MetricsAvailable"]["reason"] == "MetricsMissing"
        assert "no Prometheus configured" in conds["MetricsAvailable"]["message"]
        # The watch has not caught up: a reconcile now writes nothing again.
        await runtime.reconcile(shown, runtime.indices)
        assert len(cluster.status_patches) == 2
        # It caught up: the next pass decides the same, and nothing is written.
        runtime.indices = indices_with(body(status=copy.deepcopy(cluster.status[(NS, "m")])))
        await runtime.autoscale_pass()
        await settle()
        await runtime.resync_pass()
        assert len(cluster.status_patches) == 2, cluster.status_patches[2:]
        await runtime.stop()

    asyncio.run(scenario())


def test_a_watch_event_submits_its_reconcile_and_returns_at_once() -> None:
    """A handler that waited for a reconcile slot held kopf's event (its whole body) for
    as long: a burst's thousands of them set the operator's peak heap. A submitted
    reconcile is a task holding the key; events of a DMD already waiting add nothing."""
    cluster = FakeCluster()
    runtime = runtime_for(cluster)
    runtime.indices = indices_with(body())

    async def scenario() -> None:
        for _ in range(CONCURRENT_RECONCILES):  # every slot taken: nothing can run
            await runtime._slots.acquire()
        for _ in range(10):
            runtime.submit((NS, "m"))
        runtime.submit((NS, "gone"))  # not in the index: nothing to do once its turn comes
        assert len(runtime._submitted) == 2 and cluster.writes() == []
        for _ in range(CONCURRENT_RECONCILES):
            runtime._slots.release()
        await asyncio.gather(*runtime._submitted)
        applied = sorted(what for call, what in cluster.writes() if call == "apply")
        assert applied == ["Deployment/m", "PodDisruptionBudget/m", "Service/m"]
        assert not runtime._queued and not runtime._submitted

    asyncio.run(scenario())


def test_the_echo_of_its_own_status_write_reconciles_nothing() -> None:
    """A burst made one watch event per status write, and each reconciled its DMD again
    to the same result. The echo is told from the DMD's identity (uid, generation,
    rollout command) and the status written; anything else still reconciles."""
    cluster = FakeCluster()
    runtime = runtime_for(cluster)
    runtime.indices = indices_with(body())

    async def scenario() -> None:
        await runtime.reconcile(body(), runtime.indices or {})
        echo = body(status=copy.deepcopy(cluster.status[(NS, "m")]))
        runtime.dmd_changed(echo)
        assert not runtime._submitted
        # The watch caught up: the copy of the write is let go, so a second event with
        # that status (nothing of ours to compare it with) reconciles.
        assert not runtime.reconciler.own_echo(echo)
        # Someone else's status edit, a new spec, a rollout command: reconciled.
        edited = copy.deepcopy(echo)
        edited["status"]["conditions"][0]["message"] = "edited by hand"
        newer = copy.deepcopy(echo)
        newer["metadata"]["generation"] = 2
        command = copy.deepcopy(echo)
        command["metadata"]["annotations"] = {COMMAND_ANNOTATION: "promote"}
        for changed in (edited, newer, command):
            runtime.dmd_changed(changed)
            assert len(runtime._submitted) == 1, changed["metadata"]
            await asyncio.gather(*runtime._submitted)
        await runtime.stop()

    asyncio.run(scenario())


def test_an_echo_keeps_the_status_copy_a_waiting_reconcile_still_needs() -> None:
    """A reconcile that read its body before the echo and waits for the DMD's lock must
    still see the status written last, or it would take the old body's conditions for
    the current ones and post their transitions again."""
    cluster = FakeCluster()
    r = reconciler(cluster)

    async def scenario() -> None:
        await r.reconcile(body(), {})
        written = copy.deepcopy(cluster.status[(NS, "m")])
        children = cluster.children(NS, "m")
        lock = r._locks[(NS, "m")]
        await lock.acquire()  # another reconcile of the DMD runs
        stale = asyncio.create_task(r.reconcile(body(), children))  # read before the echo
        await asyncio.sleep(0)
        assert r.own_echo(body(status=written))  # skipped, and the copy is kept
        lock.release()
        await stale
        assert [e[1] for e in cluster.events] == ["Planned", "Ready"], cluster.events

    asyncio.run(scenario())
