"""Generate the CustomResourceDefinition from the API models.

The CRD is never edited by hand: ``distillery crd`` writes it, and a test fails when the
committed file differs from what the models generate. Pydantic emits JSON Schema
(2020-12); the API server wants a *structural* OpenAPI v3.0 schema, so this module
inlines ``$ref``s, turns ``Optional[X]`` into ``nullable``, rewrites exclusive bounds,
drops titles and ``additionalProperties: false`` (unknown fields are rejected by the
server's strict field validation instead), and fills in the defaults pydantic leaves out
for ``default_factory`` fields so the API server defaults nested objects the same way the
models do.
"""

from __future__ import annotations

import json
import types
import typing
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import BaseModel

from distillery.api.routing import (
    ROUTE_KIND,
    ROUTE_PLURAL,
    ROUTE_SHORT_NAMES,
    ROUTE_SINGULAR,
    ReasoningRouteSpec,
    ReasoningRouteStatus,
)
from distillery.api.types import (
    CATEGORIES,
    GROUP,
    KIND,
    PLURAL,
    SHORT_NAMES,
    SINGULAR,
    VERSION,
    DistilledModelDeploymentSpec,
    DistilledModelDeploymentStatus,
)

CRD_NAME = f"{PLURAL}.{GROUP}"
CRD_FILE = f"{GROUP}_{PLURAL}.yaml"
ROUTE_CRD_FILE = f"{GROUP}_{ROUTE_PLURAL}.yaml"

# The last columns of both kinds: the Ready condition's reason, and the age.
_STATUS_AND_AGE: list[dict[str, Any]] = [
    {
        "name": "Status",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="Ready")].reason',
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]

PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Model", "type": "string", "jsonPath": ".spec.model.name"},
    {"name": "GPU", "type": "string", "jsonPath": ".status.placement.summary"},
    {"name": "Replicas", "type": "integer", "jsonPath": ".status.replicas"},
    {"name": "Ready", "type": "integer", "jsonPath": ".status.readyReplicas"},
    {"name": "Cost/h", "type": "number", "jsonPath": ".status.cost.currentPerHour"},
    *_STATUS_AND_AGE,
    # `kubectl get -o wide`: where a rollout stands.
    {"name": "Rollout", "type": "string", "jsonPath": ".status.rollout.phase", "priority": 1},
    {"name": "Canary%", "type": "integer", "jsonPath": ".status.rollout.weight", "priority": 1},
    {"name": "Revision", "type": "string", "jsonPath": ".status.revision", "priority": 1},
]

ROUTE_PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Model", "type": "string", "jsonPath": ".spec.model"},
    {"name": "Tiers", "type": "string", "jsonPath": ".status.summary"},
    {"name": "Backend", "type": "string", "jsonPath": ".status.backend"},
    {"name": "Cost/h", "type": "number", "jsonPath": ".status.costPerHour"},
    *_STATUS_AND_AGE,
]


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    """Inline $refs and translate JSON Schema 2020-12 into structural OpenAPI v3.0."""
    if isinstance(node, list):
        return [_resolve(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        merged = {**_resolve(target, defs), **{k: v for k, v in node.items()}}
        return _resolve(merged, defs)
    if "anyOf" in node and not node.get("x-kubernetes-int-or-string"):
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        if len(options) == 1 and len(options) < len(node["anyOf"]):
            rest = {k: v for k, v in node.items() if k != "anyOf"}
            node = {**_resolve(options[0], defs), **rest, "nullable": True}
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("title", "$defs"):
            continue
        if key == "additionalProperties" and value is False:
            continue
        if key == "default" and value is None:
            continue
        if key == "const":
            out["enum"] = [value]
            continue
        if key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            bound = "minimum" if key == "exclusiveMinimum" else "maximum"
            out[bound] = value
            out[key] = True
            continue
        if key == "properties":
            out[key] = {k: _resolve(v, defs) for k, v in value.items()}
            continue
        out[key] = _resolve(value, defs)
    if out.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.pop("anyOf", None)
        out.pop("nullable", None)
    return out


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside ``X``, ``X | None`` or ``Annotated[X, ...]``, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, typing.Annotated):
        for arg in typing.get_args(annotation):
            found = _model_of(arg)
            if found is not None:
                return found
    return None


def _wire(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(by_alias=True, exclude_none=True, mode="json")
    if isinstance(value, list):
        return [_wire(v) for v in value]
    return value


def _fill_defaults(schema: dict[str, Any], model: type[BaseModel]) -> None:
    """Add the defaults of default_factory fields, recursively, so the API server applies
    the same nested defaults as the models (e.g. scaleDown.stabilizationSeconds: 300)."""
    props = schema.get("properties", {})
    for name, field in model.model_fields.items():
        alias = field.alias or name
        prop = props.get(alias)
        if prop is None:
            continue
        nested = _model_of(field.annotation)
        if field.default_factory is not None:
            value = field.default_factory()  # type: ignore[call-arg]
            if isinstance(value, BaseModel) or value:  # empty list/dict defaults are noise
                prop["default"] = _wire(value)
        if nested is not None:
            _fill_defaults(prop, nested)
        if prop.get("type") == "array" and "items" in prop:
            args = typing.get_args(field.annotation)
            item_model = _model_of(args[0]) if args else None
            if item_model is not None:
                _fill_defaults(prop["items"], item_model)


def openapi_schema(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    schema: dict[str, Any] = _resolve(raw, raw.get("$defs", {}))
    _fill_defaults(schema, model)
    return schema


def _status_schema(model: type[BaseModel]) -> dict[str, Any]:
    schema = openapi_schema(model)
    conditions = schema["properties"]["conditions"]
    conditions["x-kubernetes-list-type"] = "map"
    conditions["x-kubernetes-list-map-keys"] = ["type"]
    return schema


@dataclass(frozen=True, kw_only=True)
class _Kind:
    """What tells one of the project's CRDs from another."""

    kind: str
    plural: str
    singular: str
    short_names: list[str]
    description: str
    spec: type[BaseModel]
    status: type[BaseModel]
    subresources: dict[str, Any]
    columns: list[dict[str, Any]]


DMD = _Kind(
    kind=KIND,
    plural=PLURAL,
    singular=SINGULAR,
    short_names=SHORT_NAMES,
    description="A distilled reasoning model served on GPUs: sized onto the "
    "cheapest GPUs it fits, rendered for its engine, and autoscaled from Prometheus "
    "metrics to hold its latency SLO at the lowest cost.",
    spec=DistilledModelDeploymentSpec,
    status=DistilledModelDeploymentStatus,
    subresources={
        "status": {},
        "scale": {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        },
    },
    columns=PRINTER_COLUMNS,
)

ROUTE = _Kind(
    kind=ROUTE_KIND,
    plural=ROUTE_PLURAL,
    singular=ROUTE_SINGULAR,
    short_names=ROUTE_SHORT_NAMES,
    description="One OpenAI model name served by tiers of DistilledModelDeployments "
    "(routine, hard, by domain), routed through the Gateway API Inference Extension.",
    spec=ReasoningRouteSpec,
    status=ReasoningRouteStatus,
    subresources={"status": {}},
    columns=ROUTE_PRINTER_COLUMNS,
)


def _crd(k: _Kind) -> dict[str, Any]:
    root = {
        "type": "object",
        "description": k.description,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {
                "type": "object",
                "properties": {
                    "name": {
                        "type": "string",
                        "maxLength": 63,
                        "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
                    }
                },
            },
            "spec": openapi_schema(k.spec),
            "status": _status_schema(k.status),
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{k.plural}.{GROUP}",
            "labels": {
                "app.kubernetes.io/name": "distillery",
                "app.kubernetes.io/part-of": "distillery",
            },
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": k.kind,
                "listKind": f"{k.kind}List",
                "plural": k.plural,
                "singular": k.singular,
                "shortNames": k.short_names,
                "categories": CATEGORIES,
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": root},
                    "subresources": k.subresources,
                    "additionalPrinterColumns": k.columns,
                }
            ],
        },
    }


def crd() -> dict[str, Any]:
    """The CustomResourceDefinition object for DistilledModelDeployment."""
    return _crd(DMD)


def route_crd() -> dict[str, Any]:
    """The CustomResourceDefinition object for ReasoningRoute."""
    return _crd(ROUTE)


CHART_CRD_FILE = "crd.yaml"


def crd_chart_template() -> str:
    """The CRD as a Helm template of charts/distillery: installed and upgraded with the
    release (Helm never upgrades files under a chart's crds/), kept on uninstall unless
    ``crds.keep`` is false, so deleting the release never deletes every DMD."""
    meta_line = "metadata:\n"
    keep = (
        "metadata:\n"
        "  annotations:\n"
        "    {{- if .Values.crds.keep }}\n"
        "    helm.sh/resource-policy: keep\n"
        "    {{- end }}\n"
    )
    body = "---\n".join(
        yaml.safe_dump(c, sort_keys=False, width=100).replace(meta_line, keep, 1)
        for c in (crd(), route_crd())
    )
    return (
        "{{- /* Generated by `distillery crd` from distillery.api; DO NOT EDIT. */ -}}\n"
        "{{- if .Values.crds.enabled }}\n" + body + "{{- end }}\n"
    )


def crd_yaml(kind: _Kind = DMD) -> str:
    header = (
        "# Generated by `distillery crd` from distillery.api; DO NOT EDIT.\n"
        "# Regenerate with `make generate`.\n"
    )
    return header + "---\n" + yaml.safe_dump(_crd(kind), sort_keys=False, width=100)


def route_crd_yaml() -> str:
    return crd_yaml(ROUTE)


def _type_of(node: dict[str, Any]) -> str:
    if node.get("x-kubernetes-int-or-string"):
        return "int or string"
    t = str(node.get("type", "object"))
    if t == "array":
        return f"[]{_type_of(node.get('items') or {})}"
    if t == "object" and isinstance(node.get("additionalProperties"), dict):
        return f"map[string]{_type_of(node['additionalProperties'])}"
    return t


def _rows(node: dict[str, Any], path: str, out: list[str]) -> None:
    props = node.get("properties") or {}
    if node.get("type") == "array" and isinstance(node.get("items"), dict):
        props = node["items"].get("properties") or {}
        path += "[]"
    required = set(node.get("required") or [])
    for name, sub in props.items():
        full = f"{path}.{name}"
        bits = []
        if name in required:
            bits.append("required")
        if "enum" in sub:
            bits.append("one of " + ", ".join(f"`{v}`" for v in sub["enum"]))
        for key, label in (
            ("minimum", "min"),
            ("maximum", "max"),
            ("maxLength", "max length"),
            ("maxItems", "max items"),
            ("pattern", "pattern"),
        ):
            if key in sub:
                bits.append(f"{label} `{sub[key]}`")
        default = sub.get("default")
        if default is not None and not isinstance(default, dict | list):
            bits.append(f"default `{json.dumps(default)}`")
        desc = " ".join(str(sub.get("description", "")).split())
        extra = f" ({'; '.join(bits)})" if bits else ""
        cell = f"{desc}{extra}".replace("|", "\\|")
        out.append(f"| `{full}` | {_type_of(sub)} | {cell} |")
        _rows(sub, full, out)
    for rule in node.get("x-kubernetes-validations") or []:
        text = f"`{rule['rule']}`: {rule['message']}".replace("|", "\\|")
        out.append(f"| `{path}` | rule | {text} |")


def _reference_sections(k: _Kind, intro: str) -> list[str]:
    root = _crd(k)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
    lines = [f"# {k.kind} reference (`{GROUP}/{VERSION}`)", "", intro, ""]
    for section in ("spec", "status"):
        lines += [f"## {section}", "", "| field | type | description |", "|---|---|---|"]
        rows: list[str] = []
        _rows(root[section], section, rows)
        lines += [r.replace("\n", " ") for r in rows]
        lines.append("")
    return lines


def reference_markdown() -> str:
    """docs/crd-reference.md: every field, generated from the same schema as the CRDs."""
    lines = ["<!-- Generated by `distillery crd --reference`; DO NOT EDIT. -->"]
    lines += _reference_sections(
        DMD,
        "Short name `dmd`, category `distillery`; subresources `status` and `scale` "
        "(`kubectl scale dmd/NAME --replicas=N`, HPA/KEDA).",
    )
    lines += _reference_sections(
        ROUTE,
        "Short name `rroute`, category `distillery`; subresource `status`. How to use it: "
        "docs/tiered-serving.md.",
    )
    return "\n".join(lines)
