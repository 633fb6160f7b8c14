"""The generated CRD on the real API server: accepted, stored, listed, explained,
and rejecting every invalid manifest of the corpus with a message naming the field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from distillery.api.types import GROUP, PLURAL, VERSION
from localcluster import Cluster
from tests.corpus import invalid_cases, manifest

pytestmark = pytest.mark.cluster
ROOT = Path(__file__).resolve().parents[2]
CASES = invalid_cases()


def create(api_client: client.ApiClient, namespace: str, body: dict[str, Any]) -> Any:
    return client.CustomObjectsApi(api_client).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, body, field_validation="Strict"
    )


@pytest.mark.usefixtures("crd_installed")
def test_example_is_stored_and_listed(
    cluster: Cluster, api_client: client.ApiClient, namespace: str
) -> None:
    example = yaml.safe_load((ROOT / "examples" / "deepseek-r1-distill-qwen-7b.yaml").read_text())
    stored = create(api_client, namespace, example)
    # Nested defaults come from the schema, and they match the models'.
    assert stored["spec"]["scaling"]["scaleDown"]["stabilizationSeconds"] == 300
    assert stored["spec"]["placement"]["gpusPerReplica"] == "auto"
    out = cluster.kubectl("get", "dmd", "-n", namespace)
    header = out.splitlines()[0].split()
    assert header == ["NAME", "MODEL", "GPU", "REPLICAS", "READY", "COST/H", "STATUS", "AGE"]
    assert "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B" in out
    # Category and short name resolve.
    assert "r1-qwen-7b" in cluster.kubectl("get", "distillery", "-n", namespace)


@pytest.mark.usefixtures("crd_installed")
def test_status_and_scale_subresources(
    cluster: Cluster, api_client: client.ApiClient, namespace: str
) -> None:
    api = client.CustomObjectsApi(api_client)
    create(api_client, namespace, manifest("scaled", {}))
    api.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        namespace,
        PLURAL,
        "scaled",
        {
            "status": {
                "replicas": 1,
                "readyReplicas": 1,
                "selector": "distillery.dev/deployment=scaled",
            }
        },
    )
    cluster.kubectl("scale", "-n", namespace, "dmd/scaled", "--replicas=3")
    obj = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "scaled")
    assert obj["spec"]["replicas"] == 3
    scale = json.loads(
        cluster.kubectl(
            "get", "--raw", f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/scaled/scale"
        )
    )
    assert scale["status"]["selector"] == "distillery.dev/deployment=scaled"


@pytest.mark.usefixtures("crd_installed")
def test_explain_prints_descriptions(cluster: Cluster) -> None:
    out = cluster.kubectl("explain", "dmd.spec.scaling")
    assert "minReplicas" in out and "demandQuery" in out
    assert "demand at the router wakes it" in out
    assert "PromQL" in cluster.kubectl("explain", "dmd.spec.scaling.demandQuery")


@pytest.mark.usefixtures("crd_installed")
def test_every_example_is_accepted(cluster: Cluster) -> None:
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        out = cluster.kubectl("apply", "--dry-run=server", "-n", "default", "-f", str(path))
        assert "(server dry run)" in out, path


@pytest.mark.usefixtures("crd_installed")
@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_server_rejects_invalid(
    api_client: client.ApiClient, namespace: str, case: dict[str, Any]
) -> None:
    with pytest.raises(ApiException) as err:
        create(api_client, namespace, manifest(case["name"], case["spec"]))
    # 422 for schema and CEL violations; 400 for unknown fields under strict validation.
    assert err.value.status in (400, 422), err.value.body
    message = json.loads(str(err.value.body))["message"]
    assert case["field"] in message, message
