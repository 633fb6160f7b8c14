"""High availability on the real control plane: two operator processes share a Lease,
one acts, and the other takes over when it dies, when it stops, or when it loses the
Lease, with nothing lost or duplicated.

Who wrote what comes from the API server's audit log: each instance's user agent names
it (``distillery/VERSION (IDENTITY)``), so "the standby wrote nothing before it led" and
"the killed leader wrote nothing after it died" are read, not assumed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from distillery.api.types import GROUP, PLURAL, VERSION
from localcluster import Cluster
from tests.integration.operator_process import OperatorProcess, elected
from tests.integration.waits import Dmds, wait_for
from tests.integration.waits import reconciled as reconciled_dmds
from tests.support.dmds import IDLE_SPEC, dmd

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

# Short timings so a takeover costs a test seconds; the rule is the same at 15/10/2 s.
LEASE_SECONDS, RENEW_DEADLINE, RETRY_PERIOD = 6, 4, 1
SPEC = IDLE_SPEC  # zero replicas: the test is about the operator, not pod placement
BURST = 40
# How long after a process died the API server may still handle a request it sent.
IN_FLIGHT = timedelta(seconds=1)


def instance(cluster: Cluster, namespace: str, workdir: Path, name: str) -> OperatorProcess:
    timings = (LEASE_SECONDS, RENEW_DEADLINE, RETRY_PERIOD)
    return OperatorProcess(
        cluster, namespace, workdir / name, *elected(name, namespace, timings=timings)
    )


def lease(api_client: client.ApiClient, namespace: str) -> dict[str, Any]:
    obj = client.CustomObjectsApi(api_client).get_namespaced_custom_object(
        "coordination.k8s.io", "v1", namespace, "leases", "distillery"
    )
    assert isinstance(obj, dict)
    return obj


def holder(api_client: client.ApiClient, namespace: str) -> str | None:
    try:
        found: str | None = lease(api_client, namespace)["spec"].get("holderIdentity")
        return found
    except client.exceptions.ApiException:
        return None


def received(event: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(event["requestReceivedTimestamp"].replace("Z", "+00:00"))


def writes_summary(writes: list[dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    return [
        (
            w["requestReceivedTimestamp"],
            w["verb"],
            w["objectRef"].get("resource", ""),
            w["objectRef"].get("name", ""),
        )
        for w in writes
    ]


@pytest.fixture
def pair(
    cluster: Cluster, namespace: str, crd_installed: None, tmp_path: Path
) -> Iterator[tuple[OperatorProcess, OperatorProcess]]:
    """op-a leading, op-b standing by."""
    a = instance(cluster, namespace, tmp_path, "op-a").start()
    b = instance(cluster, namespace, tmp_path, "op-b").start(until="standing by")
    try:
        yield a, b
    finally:
        b.stop()
        a.stop()


def reconciled(api_client: client.ApiClient, namespace: str, names: set[str]) -> set[str]:
    """The DMDs of ``names`` reconciled so far."""
    return names & reconciled_dmds(api_client, namespace)


def test_the_standby_finishes_a_burst_when_the_leader_is_killed(
    cluster: Cluster,
    namespace: str,
    api_client: client.ApiClient,
    pair: tuple[OperatorProcess, OperatorProcess],
) -> None:
    a, b = pair
    assert holder(api_client, namespace) == "op-a"
    assert "leading" in a.log.read_text() and "standing by, held by op-a" in b.log.read_text()
    custom = client.CustomObjectsApi(api_client)
    names = {f"burst-{i:03d}" for i in range(BURST)}

    def create_all() -> None:
        for name in sorted(names):
            custom.create_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, dmd(name, SPEC)
            )

    creator = threading.Thread(target=create_all)
    creator.start()
    # Mid-burst: a quarter reconciled, the rest still being created or queued.
    wait_for(
        lambda: len(reconciled(api_client, namespace, names)) >= BURST // 4,
        "a quarter of the burst reconciled by the leader",
        a.bounds.reconcile,
        describe=a.tail,
    )
    killed_at = datetime.now(UTC)
    t0 = time.monotonic()
    a.kill()
    dead_at = datetime.now(UTC)  # reaped: it sends nothing more
    done_when_killed = len(reconciled(api_client, namespace, names))
    wait_for(
        lambda: holder(api_client, namespace) == "op-b",
        "op-b to take the lease",
        b.bounds.takeover,
        describe=b.tail,
    )
    takeover = time.monotonic() - t0
    creator.join(timeout=120)
    wait_for(
        lambda: reconciled(api_client, namespace, names) == names,
        "every DMD of the burst reconciled",
        b.bounds.reconcile + b.bounds.within(BURST * 0.5),
        describe=lambda: (
            f"missing {sorted(names - reconciled(api_client, namespace, names))}\n{b.tail()}"
        ),
    )
    finished = time.monotonic() - t0
    print(
        f"\nkilled op-a with {done_when_killed}/{BURST} reconciled; op-b led after "
        f"{takeover:.1f}s (lease {LEASE_SECONDS}s) and finished the burst {finished:.1f}s "
        "after the kill"
    )

    # Nothing lost or duplicated: one Deployment and one Service per DMD, owned by it.
    uids = {
        o["metadata"]["name"]: o["metadata"]["uid"]
        for o in custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
    }
    for kind, items in (
        ("Deployment", client.AppsV1Api(api_client).list_namespaced_deployment(namespace).items),
        ("Service", client.CoreV1Api(api_client).list_namespaced_service(namespace).items),
    ):
        owners = sorted(
            (item.metadata.name, [ref.uid for ref in item.metadata.owner_references or []])
            for item in items
        )
        assert owners == sorted((name, [uids[name]]) for name in names), kind

    # Never two at once: op-a wrote nothing after it died, op-b nothing before it led.
    by_a = cluster.operator_writes(namespace, agent="(op-a)")
    by_b = cluster.operator_writes(namespace, agent="(op-b)")
    assert by_a and by_b
    # A request sent just before the kill is stamped when the server handles it, which
    # may be a moment after the sender died.
    late = [w for w in by_a if received(w) > dead_at + IN_FLIGHT]
    early = [w for w in by_b if received(w) < killed_at]
    assert not late, writes_summary(late)
    assert not early, writes_summary(early)
    first = min(by_b, key=received)
    assert first["objectRef"]["resource"] == "leases", writes_summary([first])
    # Each DMD's Deployment was created once: by whichever instance got to it first.
    creates = [
        w["objectRef"]["name"]
        for w in by_a + by_b
        if w["objectRef"].get("resource") == "deployments" and w["verb"] in ("create", "patch")
    ]
    assert set(creates) == names


def test_a_stopped_leader_hands_over_at_once_and_a_returning_one_stands_by(
    pair: tuple[OperatorProcess, OperatorProcess],
    dmds: Dmds,
) -> None:
    a, b = pair
    dmds.apply("qwen", SPEC)
    # At zero replicas (SPEC's minReplicas) reconciled means Ready=False, ScaledToZero.
    # (Creating comes first, until the Deployment's controller has observed it.)
    dmds.wait_condition("qwen", "Ready", a.bounds.ready, status="False", reason="ScaledToZero")
    a.stop()  # SIGTERM, as in a rolling update
    # Released on the way out: no holder, or already op-b. Had it not been released, op-a
    # would still hold it here (renewed within the last retry period, lease 6 s).
    assert holder(dmds.api_client, dmds.namespace) in (None, "op-b"), lease(
        dmds.api_client, dmds.namespace
    )
    t0 = time.monotonic()
    wait_for(
        lambda: holder(dmds.api_client, dmds.namespace) == "op-b",
        "op-b to take the released lease",
        b.bounds.within(2 * RETRY_PERIOD),
        describe=b.tail,
    )
    print(f"\nhanded over {time.monotonic() - t0:.1f}s after op-a exited")
    assert lease(dmds.api_client, dmds.namespace)["spec"]["leaseTransitions"] >= 1

    # op-a comes back: it stands by, and acts on nothing while op-b leads.
    a.start(until="standing by")
    restarted_at = datetime.now(UTC)
    dmds.patch("qwen", {"spec": {"scaling": {"maxReplicas": 3}}})
    generation = dmds.get("qwen")["metadata"]["generation"]
    dmds.wait(
        "qwen",
        lambda: dmds.get("qwen")["status"].get("observedGeneration") == generation,
        "the change reconciled by op-b",
        b.bounds.reconcile,
    )
    by_a = dmds.cluster.operator_writes(dmds.namespace, agent="(op-a)")
    late = [w for w in by_a if received(w) > restarted_at]
    assert not late, writes_summary(late)


def test_a_leader_that_loses_its_lease_stops_acting(
    namespace: str,
    api_client: client.ApiClient,
    pair: tuple[OperatorProcess, OperatorProcess],
) -> None:
    a, b = pair
    # Someone else holds the lease now (a partition healed the wrong way): op-a must
    # notice at its next renewal and stop, not go on writing beside the new holder.
    # op-a renews every retry period: a renewal between our read and our write is a
    # conflict, and the intruder reads again.
    for attempt in range(5):
        current = lease(api_client, namespace)
        current["spec"]["holderIdentity"] = "intruder"
        current["spec"]["leaseDurationSeconds"] = 3600
        try:
            client.CustomObjectsApi(api_client).replace_namespaced_custom_object(
                "coordination.k8s.io", "v1", namespace, "leases", "distillery", current
            )
            break
        except ApiException as exc:
            if exc.status != 409 or attempt == 4:
                raise
    assert a.proc is not None
    proc = a.proc
    code = wait_for(
        lambda: proc.poll(),
        "op-a to exit after losing the lease",
        a.bounds.within(RETRY_PERIOD, LEASE_SECONDS - RENEW_DEADLINE),
        describe=a.tail,
    )
    assert code == 1, a.tail()
    assert "leadership lost: the lease was taken by intruder" in a.log.read_text()
    # op-b still waits: the intruder's lease is live.
    assert holder(api_client, namespace) == "intruder"
    assert b.proc is not None and b.proc.poll() is None
