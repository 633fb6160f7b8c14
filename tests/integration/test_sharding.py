"""Sharding on the real control plane: two operator instances, each watching its own
namespaces and holding its own Lease, reconcile every DMD of their shard and write
nothing outside it (read from the API server's audit log, by each instance's user
agent)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from distillery.api.types import GROUP, PLURAL, VERSION
from localcluster import Cluster
from tests.integration.operator_process import OperatorProcess, elected
from tests.integration.waits import reconciled, wait_for
from tests.support.dmds import IDLE_SPEC, dmd

pytestmark = [pytest.mark.cluster]

SPEC = IDLE_SPEC
PER_SHARD = 6


@pytest.fixture
def shards(api_client: client.ApiClient) -> Iterator[tuple[str, str]]:
    core = client.CoreV1Api(api_client)
    names = (f"shard-a-{uuid.uuid4().hex[:6]}", f"shard-b-{uuid.uuid4().hex[:6]}")
    for name in names:
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    try:
        yield names
    finally:
        for name in names:
            core.delete_namespace(name)


def shard(cluster: Cluster, namespace: str, workdir: Path, identity: str) -> OperatorProcess:
    """One shard as production runs it: its namespaces, its own Lease."""
    flags = elected(identity, namespace, lease_id=f"distillery-{identity}")
    return OperatorProcess(cluster, namespace, workdir / identity, *flags)


@pytest.mark.usefixtures("crd_installed")
def test_two_shards_reconcile_only_their_own_namespaces(
    cluster: Cluster,
    api_client: client.ApiClient,
    shards: tuple[str, str],
    tmp_path: Path,
) -> None:
    ns_a, ns_b = shards
    a = shard(cluster, ns_a, tmp_path, "shard-a").start()
    b = shard(cluster, ns_b, tmp_path, "shard-b").start()
    custom = client.CustomObjectsApi(api_client)
    try:
        for ns in shards:
            for i in range(PER_SHARD):
                custom.create_namespaced_custom_object(
                    GROUP, VERSION, ns, PLURAL, dmd(f"m-{i}", SPEC)
                )

        for ns, op in ((ns_a, a), (ns_b, b)):

            def all_of(ns: str = ns) -> bool:
                return len(reconciled(api_client, ns)) == PER_SHARD

            wait_for(
                all_of,
                f"every DMD of {ns} reconciled",
                op.bounds.reconcile,
                describe=op.tail,
            )
    finally:
        b.stop()
        a.stop()

    for identity, own in (("shard-a", ns_a), ("shard-b", ns_b)):
        writes = cluster.operator_writes(agent=f"({identity})")
        assert writes, f"{identity} wrote nothing"
        outside = [
            (w["verb"], w["objectRef"].get("namespace"), w["objectRef"].get("resource"))
            for w in writes
            if w["objectRef"].get("namespace") != own
        ]
        assert not outside, f"{identity} wrote outside its shard {own}: {outside}"
        resources = {w["objectRef"].get("resource") for w in writes}
        assert {"deployments", "services", "distilledmodeldeployments", "leases"} <= resources
