"""One way to build a DistilledModelDeployment in a test: as a dict, or as the YAML a user
would ``kubectl apply``."""

from __future__ import annotations

import copy
from typing import Any

import yaml

from distillery.api.types import API_VERSION, KIND

R1_DISTILL = "deepseek-ai/DeepSeek-R1-Distill-"


def spec(
    model: str, *gpu_types: str, quantization: str | None = None, **sections: Any
) -> dict[str, Any]:
    """A DMD's spec: the DeepSeek-R1 distill ``model`` (``"Qwen-7B"``) on ``gpu_types``,
    with other sections as given (``scaling={...}``)."""
    model_spec: dict[str, Any] = {"name": R1_DISTILL + model}
    if quantization is not None:
        model_spec["quantization"] = quantization
    return {"model": model_spec, "placement": {"gpuTypes": list(gpu_types)}, **sections}


def dmd(
    name: str,
    spec: dict[str, Any],
    *,
    namespace: str | None = None,
    status: dict[str, Any] | None = None,
    **metadata: Any,
) -> dict[str, Any]:
    """A DMD object; ``metadata`` adds fields such as ``uid`` or ``generation``."""
    meta: dict[str, Any] = {"name": name, **metadata}
    if namespace is not None:
        meta["namespace"] = namespace
    body: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": meta,
        "spec": copy.deepcopy(spec),
    }
    if status is not None:
        body["status"] = copy.deepcopy(status)
    return body


def dmd_yaml(name: str, spec: dict[str, Any], **kwargs: Any) -> str:
    """The same DMD as a manifest."""
    return yaml.safe_dump(dmd(name, spec, **kwargs), sort_keys=False)


# A DMD at zero replicas (its demand query, standing in for a router, says no load): for
# tests of the operator itself, not of the scheduler placing pods.
IDLE_SPEC = spec(
    "Qwen-1.5B",
    "nvidia-l4",
    scaling={"minReplicas": 0, "maxReplicas": 2, "demandQuery": "vector(0)"},
)
