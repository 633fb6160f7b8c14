"""A ReasoningRoute's children: Gateway API Inference Extension objects (pure).

Per tier the route renders what the extension's own ``inferencepool`` chart installs for
one model server pool: an ``InferencePool`` selecting the tier's DMD pods, and its
endpoint picker (a Deployment running the extension's EPP with its configuration, Service,
ServiceAccount and the namespaced Role it needs). Per tier an ``InferenceObjective``
carries the tier's priority, so under contention the picker sheds the routine tier
before the hard one. One ``HTTPRoute`` sends each request to a tier: the gateway's
body-based routing copies the request's ``model`` into ``X-Gateway-Model-Name``, and
the rules match it together with the client's signal header.

A spill (a tier saturated or at zero) is a change of the HTTPRoute, not a proxy: the
rules of the spilled tier point at the tier that takes its load, and every answer says
which tier served it (``x-distillery-tier``). Without the extension's API, the HTTPRoute
points at each tier's own Service instead (no picker, no priorities); without a gateway
in the spec, no HTTPRoute is rendered.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from distillery.api.hashing import content_hash
from distillery.api.routing import ReasoningRoute, RouteRule
from distillery.engines import ENGINES
from distillery.engines.model import PORT
from distillery.render.workload import LABEL_DEPLOYMENT, LWS_WORKER_INDEX_LABEL, MANAGED_BY

POOL_GROUP = "inference.networking.k8s.io"
POOL_VERSION = "v1"
OBJECTIVE_GROUP = "inference.networking.x-k8s.io"
OBJECTIVE_VERSION = "v1alpha2"
GATEWAY_GROUP = "gateway.networking.k8s.io"
# What the gateway's body-based routing writes from the request body's "model".
MODEL_HEADER = "X-Gateway-Model-Name"
# Which InferenceObjective a request is judged by (the picker reads it).
OBJECTIVE_HEADER = "x-gateway-inference-objective"
# On every answer: the tier that served it, and the tier it was meant for when spilled.
TIER_HEADER = "x-distillery-tier"
SPILLED_FROM_HEADER = "x-distillery-spilled-from"
LABEL_ROUTE = "distillery.dev/route"
LABEL_TIER = "distillery.dev/tier"
# The endpoint picker's ports, as the extension's chart and gateways expect them.
EPP_GRPC_PORT = 9002
EPP_HEALTH_PORT = 9003
EPP_METRICS_PORT = 9090
# The image of the endpoint picker release the CRDs and flags match (hack/versions.env
# GIE_VERSION); operators mirror it and set DISTILLERY_IMAGE_ENDPOINT_PICKER.
DEFAULT_EPP_IMAGE = "gateway-api-inference-extension/epp:v1.2.0"
NAME_LIMIT = 63
# The Gateway API's HTTPRoute limits (its CRD's validation).
MAX_MATCHES_PER_RULE = 64
MAX_MATCHES = 128


# The picker's flow-control queue: requests it holds (none of the pool's pods ready, or
# all saturated). Scraped from the picker's pod, which the namespace and pod labels name.
FLOW_CONTROL_QUEUE_METRIC = "inference_extension_flow_control_queue_size"


def picker_queue_query(namespace: str, route: str, tier: str) -> str:
    """PromQL for the requests a tier's endpoint picker holds: the tier's demand while
    it has no replica that could report it."""
    picker = picker_name(route, tier)
    return f'sum({FLOW_CONTROL_QUEUE_METRIC}{{namespace="{namespace}",pod=~"{picker}-.+"}})'


class RouteRenderError(ValueError):
    """The route cannot be rendered as specified; the message says how to fix it."""


@dataclass(frozen=True, kw_only=True)
class TierBackend:
    """What the route needs of a tier's DMD."""

    engine: str
    # A multi-node replica: only a group's leader serves, so the pool selects leaders.
    multi_node: bool = False


@dataclass(frozen=True, kw_only=True)
class RouteRenderOptions:
    inference_extension: bool = True
    gateway_api: bool = True
    endpoint_picker_image: str = DEFAULT_EPP_IMAGE
    owner_uid: str | None = None


@dataclass(frozen=True, kw_only=True)
class RenderedRoute:
    """The route's children, in the order they are applied."""

    objects: list[dict[str, Any]] = field(default_factory=list)
    # tier name -> the InferencePool (or Service) its requests reach.
    backends: dict[str, str] = field(default_factory=dict)


def child_name(route: str, *parts: str) -> str:
    """``route-part-...``, at most 63 characters and still unique (a hash when cut)."""
    full = "-".join([route, *parts])
    if len(full) <= NAME_LIMIT:
        return full
    digest = content_hash(full, 8)
    return f"{full[: NAME_LIMIT - len(digest) - 1].rstrip('-')}-{digest}"


def pool_name(route: str, tier: str) -> str:
    return child_name(route, tier)


def picker_name(route: str, tier: str) -> str:
    return child_name(route, tier, "epp")


def render_route(
    route: ReasoningRoute,
    backends: Mapping[str, TierBackend],
    *,
    serving_to: Mapping[str, str] | None = None,
    options: RouteRenderOptions | None = None,
) -> RenderedRoute:
    """The children of ``route``. ``backends`` has each tier's DMD (by tier name);
    ``serving_to`` says which tier answers a tier's requests now (a spill), default
    itself. Raises :class:`RouteRenderError`."""
    options = options or RouteRenderOptions()
    serving_to = dict(serving_to or {})
    if not route.name:
        raise RouteRenderError("metadata.name is required")
    missing = [t.name for t in route.spec.tiers if t.name not in backends]
    if missing:
        raise RouteRenderError(f"no DMD known for tiers {', '.join(missing)}")
    names = {t.name for t in route.spec.tiers}
    for spilled, target in serving_to.items():
        if spilled not in names or target not in names:
            raise RouteRenderError(f"spill {spilled} -> {target} names a tier the route lacks")
    objects: list[dict[str, Any]] = []
    reached: dict[str, str] = {}
    for tier in route.spec.tiers:
        backend = backends[tier.name]
        if options.inference_extension:
            objects += _pool_objects(route, tier.name, tier.deployment, backend, options)
            reached[tier.name] = pool_name(route.name, tier.name)
        else:
            reached[tier.name] = tier.deployment
    if route.spec.gateway is not None and options.gateway_api:
        objects.append(_http_route(route, serving_to, options))
    return RenderedRoute(objects=objects, backends=reached)


def _meta(
    route: ReasoningRoute, name: str, options: RouteRenderOptions, tier: str | None = None
) -> dict[str, Any]:
    labels = {
        "app.kubernetes.io/part-of": "distillery",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        LABEL_ROUTE: route.name,
    }
    if tier is not None:
        labels[LABEL_TIER] = tier
    meta: dict[str, Any] = {"name": name, "namespace": route.namespace, "labels": labels}
    if options.owner_uid:
        meta["ownerReferences"] = [
            {
                "apiVersion": route.api_version,
                "kind": route.kind,
                "name": route.name,
                "uid": options.owner_uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    return meta


def _picker_config() -> str:
    # The extension's default scorers (its chart's default-plugins.yaml), and flow
    # control on: it holds requests while the pool has no ready pod (scale from zero)
    # and exports the queue the autoscaler reads as demand.
    return (
        "apiVersion: inference.networking.x-k8s.io/v1alpha1\n"
        "kind: EndpointPickerConfig\n"
        "plugins:\n"
        "- type: queue-scorer\n"
        "- type: kv-cache-utilization-scorer\n"
        "- type: prefix-cache-scorer\n"
        "schedulingProfiles:\n"
        "- name: default\n"
        "  plugins:\n"
        "  - pluginRef: queue-scorer\n"
        "    weight: 2\n"
        "  - pluginRef: kv-cache-utilization-scorer\n"
        "    weight: 2\n"
        "  - pluginRef: prefix-cache-scorer\n"
        "    weight: 3\n"
        "featureGates:\n"
        "- flowControl\n"
    )


def _pool_objects(
    route: ReasoningRoute,
    tier: str,
    deployment: str,
    backend: TierBackend,
    options: RouteRenderOptions,
) -> list[dict[str, Any]]:
    pool, picker = pool_name(route.name, tier), picker_name(route.name, tier)
    if backend.engine not in ENGINES:
        raise RouteRenderError(f"tier {tier}: unknown engine {backend.engine}")
    selector = {LABEL_DEPLOYMENT: deployment}
    if backend.multi_node:
        selector[LWS_WORKER_INDEX_LABEL] = "0"
    picker_labels = {
        "app.kubernetes.io/name": "endpoint-picker",
        "app.kubernetes.io/instance": picker,
    }
    meta = _meta(route, picker, options, tier)
    meta_with = {**meta, "labels": {**meta["labels"], **picker_labels}}
    args = [
        "--pool-name", pool,
        "--pool-namespace", route.namespace,
        # The configuration inline: no ConfigMap for the operator to write.
        "--config-text", _picker_config(),
        "--zap-encoder", "json",
        "--v", "1",
        "--tracing=false",
        # Prometheus scrapes the picker's queue (scale from zero) without a token.
        "--metrics-endpoint-auth=false",
        *ENGINES[backend.engine].picker.flags(),
    ]  # fmt: skip
    probe = {"grpc": {"port": EPP_HEALTH_PORT, "service": "inference-extension"}}
    deployment_obj = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta_with,
        "spec": {
            "replicas": 1,
            # One active picker (its prefix-cache state is in memory), as the chart ships.
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": picker_labels},
            "template": {
                "metadata": {"labels": {**meta["labels"], **picker_labels}},
                "spec": {
                    "serviceAccountName": picker,
                    "terminationGracePeriodSeconds": 130,
                    "containers": [
                        {
                            "name": "epp",
                            "image": options.endpoint_picker_image,
                            "args": args,
                            "ports": [
                                {"name": "grpc", "containerPort": EPP_GRPC_PORT},
                                {"name": "grpc-health", "containerPort": EPP_HEALTH_PORT},
                                {"name": "metrics", "containerPort": EPP_METRICS_PORT},
                            ],
                            "livenessProbe": {
                                **probe,
                                "initialDelaySeconds": 5,
                                "periodSeconds": 10,
                            },
                            "readinessProbe": {**probe, "periodSeconds": 2},
                            "env": [
                                {
                                    "name": "NAMESPACE",
                                    "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
                                },
                                {
                                    "name": "POD_NAME",
                                    "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
                                },
                            ],
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "runAsNonRoot": True,
                                # The release image's user (distroless nonroot).
                                "runAsUser": 65532,
                                "capabilities": {"drop": ["ALL"]},
                            },
                        }
                    ],
                },
            },
        },
    }
    return [
        {
            "apiVersion": f"{POOL_GROUP}/{POOL_VERSION}",
            "kind": "InferencePool",
            "metadata": _meta(route, pool, options, tier),
            "spec": {
                "selector": {"matchLabels": selector},
                "targetPorts": [{"number": PORT}],
                "endpointPickerRef": {
                    "kind": "Service",
                    "name": picker,
                    "port": {"number": EPP_GRPC_PORT},
                    # No picker, no answer: better an error than an unscored pod.
                    "failureMode": "FailClose",
                },
            },
        },
        {
            "apiVersion": f"{OBJECTIVE_GROUP}/{OBJECTIVE_VERSION}",
            "kind": "InferenceObjective",
            "metadata": _meta(route, pool, options, tier),
            "spec": {
                "priority": route.tier(tier).priority,
                "poolRef": {"group": POOL_GROUP, "kind": "InferencePool", "name": pool},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": meta,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": meta,
            "rules": [
                {
                    "apiGroups": [OBJECTIVE_GROUP],
                    "resources": ["inferenceobjectives"],
                    "verbs": ["get", "watch", "list"],
                },
                {
                    "apiGroups": [POOL_GROUP],
                    "resources": ["inferencepools"],
                    "verbs": ["get", "watch", "list"],
                },
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "watch", "list"]},
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": meta,
            "subjects": [{"kind": "ServiceAccount", "name": picker, "namespace": route.namespace}],
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": picker},
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": meta,
            "spec": {
                "type": "ClusterIP",
                "selector": picker_labels,
                "ports": [
                    {"name": "grpc-ext-proc", "port": EPP_GRPC_PORT, "appProtocol": "http2"},
                    {"name": "http-metrics", "port": EPP_METRICS_PORT},
                ],
            },
        },
        deployment_obj,
    ]


def _matches(route: ReasoningRoute, rule: RouteRule | None) -> list[dict[str, Any]]:
    """Gateway API matches (ORed) for a rule; None: the default tier's, by model name."""
    if rule is not None and rule.models:
        return [{"headers": [{"name": MODEL_HEADER, "value": m}]} for m in rule.models]
    out = []
    for model in route.model_names():
        if rule is None or rule.header is None:
            out.append({"headers": [{"name": MODEL_HEADER, "value": model}]})
            continue
        for value in rule.header.values:
            out.append(
                {
                    "headers": [
                        {"name": MODEL_HEADER, "value": model},
                        {"name": rule.header.name, "value": value},
                    ]
                }
            )
    return out


def _backend(
    route: ReasoningRoute, tier: str, answering: str, options: RouteRenderOptions
) -> dict[str, Any]:
    answer_headers = [{"name": TIER_HEADER, "value": answering}]
    if answering != tier:
        answer_headers.append({"name": SPILLED_FROM_HEADER, "value": tier})
    filters: list[dict[str, Any]] = []
    if options.inference_extension:
        ref: dict[str, Any] = {
            "group": POOL_GROUP,
            "kind": "InferencePool",
            "name": pool_name(route.name, answering),
        }
        filters.append(
            {
                "type": "RequestHeaderModifier",
                "requestHeaderModifier": {
                    "set": [{"name": OBJECTIVE_HEADER, "value": pool_name(route.name, answering)}]
                },
            }
        )
    else:
        ref = {"kind": "Service", "name": route.tier(answering).deployment, "port": PORT}
    filters.append(
        {"type": "ResponseHeaderModifier", "responseHeaderModifier": {"set": answer_headers}}
    )
    return {**ref, "filters": filters}


def _http_route(
    route: ReasoningRoute, serving_to: Mapping[str, str], options: RouteRenderOptions
) -> dict[str, Any]:
    gateway = route.spec.gateway
    assert gateway is not None
    rules = []
    for rule in [*route.spec.rules, None]:
        tier = rule.tier if rule is not None else route.spec.default_tier
        answering = serving_to.get(tier, tier)
        rules.append(
            {
                "matches": _matches(route, rule),
                "backendRefs": [_backend(route, tier, answering, options)],
            }
        )
    counts = [len(r["matches"]) for r in rules]
    if max(counts) > MAX_MATCHES_PER_RULE or sum(counts) > MAX_MATCHES:
        raise RouteRenderError(
            f"the HTTPRoute would have {sum(counts)} matches (at most {MAX_MATCHES_PER_RULE} "
            f"per rule, {MAX_MATCHES} in all): each rule matches every model name times each "
            "header value; use fewer aliases or header values"
        )
    spec: dict[str, Any] = {
        "parentRefs": [
            {
                "group": GATEWAY_GROUP,
                "kind": "Gateway",
                **p.to_wire(),
            }
            for p in gateway.parent_refs
        ],
        "rules": rules,
    }
    if gateway.hostnames:
        spec["hostnames"] = list(gateway.hostnames)
    return {
        "apiVersion": f"{GATEWAY_GROUP}/v1",
        "kind": "HTTPRoute",
        "metadata": _meta(route, route.name, options),
        "spec": spec,
    }
