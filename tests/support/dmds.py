"""One way to build a DistilledModelDeployment in a test: as a dict, or as the YAML a user
would ``kubectl apply``."""

from __future__ import annotations

import copy
from typing import Any

import yaml

from distillery.api.types import API_VERSION, KIND


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
