"""Fixtures for tests on the real control plane and a real Prometheus.

The cluster is started fresh once per test session from the binaries that
``hack/build-tools.sh`` built; when they are missing the fixture fails with the
command to run, it never skips.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from localcluster import Cluster, start
from localprom import Prometheus
from tests.integration.closed_loop import TIME_SCALE, Loop, closed_loop
from tests.integration.waits import Dmds, new_api_client, wait_for


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    state = tmp_path_factory.mktemp("cluster")
    with start(state_dir=state, quiet=True) as c:
        yield c


@pytest.fixture(scope="session")
def api_client(cluster: Cluster) -> client.ApiClient:
    return new_api_client(str(cluster.kubeconfig))


@pytest.fixture
def namespace(cluster: Cluster, api_client: client.ApiClient) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(api_client)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    # Pods need the namespace's default ServiceAccount, which the controller-manager adds.
    wait_for(lambda: core.read_namespaced_service_account("default", name), "default SA")
    yield name
    core.delete_namespace(name)


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[..., Prometheus]]:
    started: list[Prometheus] = []

    def make(**kwargs: Any) -> Prometheus:
        prom = Prometheus(workdir=tmp_path / f"prom{len(started)}", **kwargs).start()
        started.append(prom)
        return prom

    yield make
    for prom in started:
        prom.stop()


@pytest.fixture(scope="session")
def crd_installed(cluster: Cluster) -> None:
    cluster.install_crds()


@pytest.fixture(scope="session")
def inference_extension(cluster: Cluster) -> None:
    """The Gateway API's and its Inference Extension's CRDs (their releases'), before
    the operators that need them start (an operator re-asks at most once a minute)."""
    cluster.install_inference_extension()


@pytest.fixture
def operator(
    cluster: Cluster, namespace: str, crd_installed: None, tmp_path: Path
) -> Iterator[Any]:
    from tests.integration.operator_process import OperatorProcess

    proc = OperatorProcess(cluster, namespace, tmp_path / "operator").start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def dmds(cluster: Cluster, api_client: client.ApiClient, namespace: str) -> Dmds:
    """The test namespace's DMDs: apply, read, wait."""
    return Dmds(api_client, namespace, cluster)


@pytest.fixture
def loop(
    cluster: Cluster, namespace: str, tmp_path: Path, prometheus: Callable[..., Prometheus]
) -> Iterator[Loop]:
    """The e2e closed loop (Prometheus, the emulated fleet at TIME_SCALE, the operator)
    in the test's namespace; stopped after the test."""
    with closed_loop(cluster, namespace, tmp_path, prometheus, TIME_SCALE) as running:
        yield running
