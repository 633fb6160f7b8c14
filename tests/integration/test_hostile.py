"""Hostile input and secrets on the real control plane.

- Every impossible-but-valid DMD in tests/data/stalled_dmds.yaml is accepted, reported
  Stalled with its reason, creates no children, and the operator keeps running.
- A marker planted in a Secret the DMD references never shows in the operator's log,
  events, the DMD's status or the rendered workload: it travels only by reference."""

from __future__ import annotations

import functools
import uuid
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from kubernetes import client

from distillery.api.types import GROUP, PLURAL, VERSION
from localcluster import Cluster
from tests.integration.operator_process import OperatorProcess
from tests.integration.waits import Dmds, wait_for
from tests.support.dmds import dmd_yaml

pytestmark = pytest.mark.cluster
DATA = Path(__file__).resolve().parents[1] / "data"
CASES: list[dict[str, Any]] = yaml.safe_load((DATA / "stalled_dmds.yaml").read_text())


def test_impossible_specs_stall_and_create_nothing(
    cluster: Cluster, api_client: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    cluster.kubectl(
        "create",
        "configmap",
        "hostile-template",
        "-n",
        namespace,
        "--from-literal=pod.yaml.j2={{ ''.__class__.__mro__[1].__subclasses__() }}",
    )
    for case in CASES:
        cluster.kubectl(
            "apply", "-n", namespace, "-f", "-", input=dmd_yaml(case["name"], case["spec"])
        )
    custom = client.CustomObjectsApi(api_client)

    def stalled(name: str) -> dict[str, Any] | None:
        obj = cast(
            dict[str, Any],
            custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name),
        )
        conds = {c["type"]: c for c in (obj.get("status") or {}).get("conditions", [])}
        s = conds.get("Stalled")
        return s if s and s["status"] == "True" else None

    for case in CASES:
        cond = wait_for(
            functools.partial(stalled, case["name"]),
            f"{case['name']} Stalled",
            operator.bounds.reconcile,
            describe=functools.partial(Dmds(api_client, namespace).describe, case["name"]),
        )
        assert cond["reason"] == case["reason"], (case["name"], cond)
        assert cond["message"], case["name"]
    assert not client.AppsV1Api(api_client).list_namespaced_deployment(namespace).items
    assert operator.proc is not None and operator.proc.poll() is None, operator.tail()


def test_secret_values_never_leak(
    cluster: Cluster, api_client: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    marker = f"DISTILLERY-MARKER-{uuid.uuid4().hex}"
    cluster.kubectl(
        "create", "secret", "generic", "hf-token", "-n", namespace, f"--from-literal=token={marker}"
    )
    spec = {
        "model": {
            "name": "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
            "credentialsSecretRef": {"name": "hf-token", "key": "token"},
        },
        "serving": {
            "env": [
                {
                    "name": "API_KEY",
                    "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token"}},
                }
            ]
        },
        "placement": {"gpuTypes": ["nvidia-h100-80gb"]},
    }
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=dmd_yaml("secretive", spec))
    Dmds(api_client, namespace).wait_condition("secretive", "Ready", operator.bounds.ready)
    places = {
        "operator log": operator.log.read_text(errors="replace"),
        "events": cluster.kubectl("get", "events", "-n", namespace, "-o", "yaml"),
        "dmd": cluster.kubectl("get", "dmd", "secretive", "-n", namespace, "-o", "yaml"),
        "deployment": cluster.kubectl(
            "get", "deployment", "secretive", "-n", namespace, "-o", "yaml"
        ),
    }
    for where, text in places.items():
        assert marker not in text, f"secret value leaked into the {where}"
    assert "secretKeyRef" in places["deployment"] and "hf-token" in places["deployment"]
