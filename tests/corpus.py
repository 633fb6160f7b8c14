"""The invalid-manifest corpus shared by the unit and integration tiers."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from tests.support.dmds import dmd

DATA = Path(__file__).resolve().parent / "data"
BASE_SPEC: dict[str, Any] = {"model": {"name": "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"}}


def invalid_cases() -> list[dict[str, Any]]:
    return list(yaml.safe_load((DATA / "invalid_dmds.yaml").read_text()))


def manifest(name: str, spec_sections: dict[str, Any]) -> dict[str, Any]:
    spec = copy.deepcopy(BASE_SPEC)
    spec.update(copy.deepcopy(spec_sections))
    return dmd(name, spec)
