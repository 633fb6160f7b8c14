"""The Argo CD health check (examples/gitops/argocd/health.lua) against DMD status
fixtures, in Argo CD's health_test.yaml format, run by a real Lua runtime (lupa)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.argocd import health

HERE = Path(__file__).resolve().parents[2] / "examples" / "gitops" / "argocd"
CASES = yaml.safe_load((HERE / "health_test.yaml").read_text())["tests"]


@pytest.mark.parametrize("case", CASES, ids=[c["inputPath"] for c in CASES])
def test_health(case: dict[str, Any]) -> None:
    obj = yaml.safe_load((HERE / case["inputPath"]).read_text())
    assert health(obj) == case["healthStatus"]


def test_every_health_status_is_covered() -> None:
    assert {c["healthStatus"]["status"] for c in CASES} == {
        "Healthy",
        "Progressing",
        "Degraded",
        "Suspended",
    }
