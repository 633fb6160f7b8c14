"""The invalid-manifest corpus shared by the unit and integration tiers."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

DATA = Path(__file__).resolve().parent / "data"
BASE_SPEC: dict[str, Any] = {"model": {"name": "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"}}


def invalid_cases() -> list[dict[str, Any]]:
    return list(yaml.safe_load((DATA / "invalid_dmds.yaml").read_text()))


def manifest(name: str, spec_sections: dict[str, Any]) -> dict[str, Any]:
    spec = copy.deepcopy(BASE_SPEC)
    spec.update(copy.deepcopy(spec_sections))
    return {
        "apiVersion": "distillery.dev/v1alpha1",
        "kind": "DistilledModelDeployment",
        "metadata": {"name": name},
        "spec": spec,
    }
