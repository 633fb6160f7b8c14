"""API models: defaults, wire names, and the Python mirror of each CEL rule."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from distillery.api.types import DistilledModelDeployment, DistilledModelDeploymentSpec


def spec(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"model": {"name": "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"}}
    for key, value in over.items():
        base[key] = value
    return base


def test_defaults_and_wire_names() -> None:
    s = DistilledModelDeploymentSpec.model_validate(spec())
    wire = s.to_wire()
    assert wire["serving"]["maxModelLen"] == 32768
    assert wire["placement"]["gpusPerReplica"] == "auto"
    assert wire["scaling"]["scaleDown"]["stabilizationSeconds"] == 300
    assert wire["scaling"]["scaleUp"]["stabilizationSeconds"] == 0
    assert "replicas" not in wire
    # round trip
    assert DistilledModelDeploymentSpec.model_validate(wire) == s


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"scaling": {"minReplicas": 5, "maxReplicas": 2}}, "minReplicas must be less"),
        ({"placement": {"gpuTypes": ["auto", "nvidia-l4"]}}, "auto cannot be combined"),
        ({"placement": {"gpusPerReplica": 0}}, "gpusPerReplica"),
        ({"rollout": {"strategy": "Canary"}}, "needs rollout.canary"),
        ({"serving": {"engine": "triton"}}, "Input should be"),
        (
            {
                "serving": {
                    "env": [
                        {"name": "A", "value": "x", "valueFrom": {"secretKeyRef": {"name": "s"}}}
                    ]
                }
            },
            "value or valueFrom",
        ),
        ({"serving": {"maxConcurrency": -1}}, "greater than or equal"),
        ({"model": {"name": "m", "uri": "ftp://x"}}, "should match pattern"),
        (
            {
                "model": {
                    "name": "m",
                    "architecture": {
                        "paramsBillions": 1,
                        "layers": 2,
                        "hiddenSize": 128,
                        "attentionHeads": 2,
                        "kvHeads": 4,
                    },
                }
            },
            "kvHeads must not exceed",
        ),
        ({"placement": {"unknownField": 1}}, "Extra inputs are not permitted"),
    ],
)
def test_invalid_specs_rejected(override: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        DistilledModelDeploymentSpec.model_validate(spec(**override))


def test_scale_to_zero_with_demand_query() -> None:
    s = DistilledModelDeploymentSpec.model_validate(
        spec(scaling={"minReplicas": 0, "demandQuery": "sum(rate(gateway_requests[1m]))"})
    )
    assert s.scaling.min_replicas == 0


def test_full_object() -> None:
    dmd = DistilledModelDeployment.model_validate(
        {
            "apiVersion": "distillery.dev/v1alpha1",
            "kind": "DistilledModelDeployment",
            "metadata": {"name": "x", "namespace": "ml"},
            "spec": spec(),
        }
    )
    assert (dmd.name, dmd.namespace) == ("x", "ml")
    with pytest.raises(ValidationError):
        DistilledModelDeployment.model_validate(
            {"apiVersion": "v1", "kind": "DistilledModelDeployment", "spec": spec()}
        )
