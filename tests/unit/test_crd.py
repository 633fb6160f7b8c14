"""The committed CRD is exactly what the API models generate, and it is structural."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distillery.api.crd import (
    CHART_CRD_FILE,
    CRD_FILE,
    crd,
    crd_chart_template,
    crd_yaml,
    reference_markdown,
)

ROOT = Path(__file__).resolve().parents[2]


def test_committed_crd_matches_models() -> None:
    committed = (ROOT / "crds" / CRD_FILE).read_text()
    assert committed == crd_yaml(), "crds/ is stale: run `make generate` and commit"
    chart = (ROOT / "charts" / "distillery" / "templates" / CHART_CRD_FILE).read_text()
    assert chart == crd_chart_template(), "the chart's CRD is stale: run `make generate`"
    reference = (ROOT / "docs" / "crd-reference.md").read_text()
    assert reference == reference_markdown() + "\n", "docs/crd-reference.md is stale"


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        out.append((path, node))
        for key, value in node.get("properties", {}).items():
            out += _walk(value, f"{path}.{key}")
        if isinstance(node.get("items"), dict):
            out += _walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            out += _walk(node["additionalProperties"], f"{path}{{}}")
    return out


def test_schema_is_structural() -> None:
    schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        assert "$ref" not in node, path
        assert "title" not in node, path
        assert node.get("additionalProperties") is not False, path
        if not node.get("x-kubernetes-int-or-string") and not node.get(
            "x-kubernetes-preserve-unknown-fields"
        ):
            assert "type" in node, f"{path or '(root)'} has no type"
        for key in ("exclusiveMinimum", "exclusiveMaximum"):
            if key in node:
                assert isinstance(node[key], bool), path


def test_scale_subresource_and_columns() -> None:
    version = crd()["spec"]["versions"][0]
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    names = [c["name"] for c in version["additionalPrinterColumns"]]
    assert names[:7] == ["Model", "GPU", "Replicas", "Ready", "Cost/h", "Status", "Age"]
    # Rollout columns only under -o wide.
    wide = {c["name"]: c.get("priority", 0) for c in version["additionalPrinterColumns"]}
    assert wide["Rollout"] == wide["Canary%"] == 1
    names_block = crd()["spec"]["names"]
    assert names_block["shortNames"] == ["dmd"] and names_block["categories"] == ["distillery"]


def test_nested_defaults_match_models() -> None:
    spec = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    scaling = spec["properties"]["scaling"]
    assert scaling["default"]["scaleDown"]["stabilizationSeconds"] == 300
    scale_down = scaling["properties"]["scaleDown"]["properties"]
    assert scale_down["stabilizationSeconds"]["default"] == 300
    assert spec["properties"]["placement"]["properties"]["gpuTypes"]["default"] == ["auto"]


def test_cel_rules_present() -> None:
    schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    text = "\n".join(
        r["rule"] for _, node in _walk(schema) for r in node.get("x-kubernetes-validations", [])
    )
    for rule in (
        "self.minReplicas <= self.maxReplicas",
        "'auto' in self.gpuTypes",
        "self.strategy != 'Canary'",
    ):
        assert rule in text, rule


def test_every_cross_field_rule_is_in_the_crd_and_checked_in_python() -> None:
    """A rule is declared once: its CEL reaches the CRD with its message, and the model
    refuses what it refuses, with the same message."""
    import pydantic

    from distillery.api import types

    models = [
        m
        for m in vars(types).values()
        if isinstance(m, type) and issubclass(m, types._Model) and m.RULES
    ]
    assert len(models) >= 6
    schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    entries = [r for _, node in _walk(schema) for r in node.get("x-kubernetes-validations", [])]
    for model in models:
        for rule in model.RULES:
            assert {"rule": rule.cel, "message": rule.message} in [
                {"rule": e["rule"], "message": e["message"]} for e in entries
            ], (model.__name__, rule.cel)
    bad = {"minReplicas": 3, "maxReplicas": 2}
    try:
        types.ScalingSpec.model_validate(bad)
    except pydantic.ValidationError as exc:
        assert "minReplicas must be less than or equal to maxReplicas" in str(exc)
    else:
        raise AssertionError("ScalingSpec accepted minReplicas > maxReplicas")
