"""The ReasoningRoute API: one OpenAI model name in front of several DMDs (tiers).

Users plan distilled models in tiers: a teacher or large model for hard requests, a
small distilled one for routine requests, specialised ones by domain. A ReasoningRoute
names the model clients send, the tiers (each a DMD in the route's namespace), the rules
that send a request to a tier (a header the client sets, or another model name), which
tier takes a tier's load when it is saturated or scaled to zero, and an hourly budget the
tiers share.

The route is rendered as Gateway API Inference Extension objects (an InferencePool and an
endpoint picker per tier, an InferenceObjective per tier, one HTTPRoute), see
:mod:`distillery.render.routing`. Like the DMD's, these models are the only source of the
CRD (:mod:`distillery.api.crd`), and a cross-field rule is declared once, for the API
server (CEL) and for manifests read from files (pydantic) with one message.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field

from distillery.api.types import (
    Condition,
    CrossFieldRule,
    ParentRef,
    _Model,
    _Object,
    _rules,
)

ROUTE_KIND = "ReasoningRoute"
ROUTE_PLURAL = "reasoningroutes"
ROUTE_SINGULAR = "reasoningroute"
ROUTE_SHORT_NAMES = ["rroute"]

# Header names as RFC 7230 tokens (the Gateway API's HTTPHeaderName pattern).
HEADER_NAME = r"^[A-Za-z0-9!#$%&'*+\-.^_\x60|~]+$"
# A tier's name ends up in object names (route-tier-epp) and in a response header.
TIER_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# OpenAI model names: what a client may put in "model" and a gateway copies to a header.
MODEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9._:/@-]*$"

SpillWhen = Literal["Saturated", "AtZero"]
ModelName = Annotated[str, Field(min_length=1, max_length=253, pattern=MODEL_NAME)]
HeaderValue = Annotated[str, Field(min_length=1, max_length=4096)]


class HeaderMatch(_Model):
    """A request header the client sets, and the values that select the tier."""

    name: str = Field(min_length=1, max_length=256, pattern=HEADER_NAME, description="Header name.")
    values: list[HeaderValue] = Field(
        min_length=1,
        max_length=8,
        description="Values that select the tier (exact match, case-sensitive).",
    )


class RouteRule(_Model):
    """Send requests with a client signal to a tier. Rules are tried in order; a
    request no rule matches goes to the default tier."""

    tier: str = Field(min_length=1, max_length=40, description="The tier (a tiers[].name).")
    header: HeaderMatch | None = Field(
        default=None,
        description="A header the client sets, e.g. x-reasoning-effort: high. "
        "Gateways copy only the body's model field into a header, so a signal in the "
        "body (reasoning_effort) must reach the gateway as a header too.",
    )
    models: list[ModelName] = Field(
        default_factory=list,
        max_length=8,
        description="Other model names that select the tier, e.g. deepseek-r1-hard.",
    )

    RULES = (
        CrossFieldRule(
            cel="has(self.header) != (has(self.models) && size(self.models) > 0)",
            message="a rule matches either a header or other model names: set one of "
            "header and models",
            holds=lambda m: (m.header is not None) != bool(m.models),
        ),
    )
    model_config = ConfigDict(json_schema_extra=_rules(*RULES))


class Tier(_Model):
    """One tier: a DMD in the route's namespace."""

    name: str = Field(
        min_length=1,
        max_length=40,
        pattern=TIER_NAME,
        description="The tier's name: in object names and the x-distillery-tier header.",
    )
    deployment: str = Field(
        min_length=1,
        max_length=63,
        pattern=DNS_LABEL,
        description="The DistilledModelDeployment that serves the tier.",
    )
    priority: int = Field(
        default=0,
        ge=-1000,
        le=1000,
        description="Its InferenceObjective's priority: under contention the endpoint "
        "picker sheds lower priorities first (routine below hard).",
    )


class SpillRule(_Model):
    """Where a tier's requests go while it cannot take them."""

    from_: str = Field(alias="from", min_length=1, max_length=40, description="Tier spilled.")
    to: str = Field(min_length=1, max_length=40, description="Tier that takes its requests.")
    when: list[SpillWhen] = Field(
        default_factory=lambda: list[SpillWhen](["Saturated", "AtZero"]),
        min_length=1,
        max_length=2,
        description="Saturated: the tier is at its replica or budget limit and its load "
        "exceeds what it serves within the SLO. AtZero: it has no ready replica.",
    )


class RouteBudget(_Model):
    """An hourly GPU budget the tiers share."""

    max_cost_per_hour: float = Field(
        gt=0,
        le=1_000_000,
        description="Most the tiers may cost together per hour (the catalog's currency). "
        "The autoscaler holds a tier's scale-up that would exceed it and says so in "
        "ScalingLimited (BudgetLimited).",
    )


class RouteGateway(_Model):
    """The Gateway the route's HTTPRoute attaches to."""

    parent_refs: list[ParentRef] = Field(
        min_length=1, max_length=32, description="Gateways the route attaches to."
    )
    hostnames: list[str] = Field(
        default_factory=list, max_length=16, description="Hostnames the route serves."
    )


def _names(tiers: list[Tier]) -> set[str]:
    return {t.name for t in tiers}


class ReasoningRouteSpec(_Model):
    """One OpenAI model name served by several DMDs, by rule."""

    model: str = Field(
        min_length=1,
        max_length=253,
        pattern=MODEL_NAME,
        description="The model name clients send (the request body's model).",
    )
    aliases: list[ModelName] = Field(
        default_factory=list, max_length=8, description="Other names for the same route."
    )
    tiers: list[Tier] = Field(min_length=1, max_length=8, description="The tiers.")
    default_tier: str = Field(
        min_length=1,
        max_length=40,
        description="The tier of a request no rule matches (the routine tier).",
    )
    rules: list[RouteRule] = Field(
        default_factory=list, max_length=12, description="Rules, tried in order."
    )
    spill: list[SpillRule] = Field(
        default_factory=list,
        max_length=8,
        description="Where a tier's load goes when it cannot take it.",
    )
    budget: RouteBudget | None = Field(default=None, description="A budget the tiers share.")
    gateway: RouteGateway | None = Field(
        default=None,
        description="The Gateway to attach to. Without it no HTTPRoute is rendered (the "
        "pools and endpoint pickers are, for a gateway configured elsewhere).",
    )

    RULES = (
        CrossFieldRule(
            cel="self.tiers.all(a, self.tiers.exists_one(b, b.name == a.name))",
            message="tiers[].name must be unique",
            holds=lambda m: len(_names(m.tiers)) == len(m.tiers),
            field_path=".tiers",
        ),
        CrossFieldRule(
            cel="self.tiers.all(a, self.tiers.exists_one(b, b.deployment == a.deployment))",
            message="tiers[].deployment must be unique: a DMD is one tier of a route",
            holds=lambda m: len({t.deployment for t in m.tiers}) == len(m.tiers),
            field_path=".tiers",
        ),
        CrossFieldRule(
            cel="self.tiers.exists(t, t.name == self.defaultTier)",
            message="defaultTier must name one of tiers[].name",
            holds=lambda m: m.default_tier in _names(m.tiers),
            field_path=".defaultTier",
        ),
        CrossFieldRule(
            cel="!has(self.rules) || self.rules.all(r, self.tiers.exists(t, t.name == r.tier))",
            message="rules[].tier must name one of tiers[].name",
            holds=lambda m: all(r.tier in _names(m.tiers) for r in m.rules),
            field_path=".rules",
        ),
        CrossFieldRule(
            cel="!has(self.spill) || self.spill.all(s, s.from != s.to"
            " && self.tiers.exists(t, t.name == s.from) && self.tiers.exists(t, t.name == s.to))",
            message="spill[].from and spill[].to must name two different tiers",
            holds=lambda m: all(
                s.from_ != s.to and {s.from_, s.to} <= _names(m.tiers) for s in m.spill
            ),
            field_path=".spill",
        ),
        CrossFieldRule(
            cel="!has(self.spill) || self.spill.all(a, self.spill.exists_one(b, b.from == a.from))",
            message="a tier spills to one tier: spill[].from must be unique",
            holds=lambda m: len({s.from_ for s in m.spill}) == len(m.spill),
            field_path=".spill",
        ),
    )
    model_config = ConfigDict(json_schema_extra=_rules(*RULES))


# ---- status ---------------------------------------------------------------------------

RouteBackend = Literal["InferencePool", "Service"]


class TierStatus(_Model):
    """A tier as the route controller last saw it."""

    name: str
    deployment: str
    pool: str | None = Field(default=None, description="Its InferencePool (GIE installed).")
    replicas: int = 0
    ready_replicas: int = 0
    cost_per_hour: float = 0.0
    serving_to: str = Field(
        description="The tier that answers this tier's requests now: itself, or the "
        "tier it spills to."
    )
    spill_reason: str | None = Field(
        default=None, description="Why its requests go elsewhere (AtZero, Saturated)."
    )


class ReasoningRouteStatus(_Model):
    """Observed state of a ReasoningRoute."""

    model_config = ConfigDict(frozen=False)

    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list, max_length=32)
    backend: RouteBackend | None = Field(
        default=None,
        description="InferencePool when the Gateway API Inference Extension is "
        "installed; Service otherwise (each tier's own Service).",
    )
    tiers: list[TierStatus] = Field(default_factory=list, max_length=8)
    cost_per_hour: float | None = Field(default=None, description="All tiers together.")
    summary: str | None = Field(default=None, description="Tiers and replicas, for kubectl get.")


class ReasoningRoute(_Object):
    """One OpenAI model name routed to tiers of DMDs through the Gateway API Inference
    Extension."""

    kind: Literal["ReasoningRoute"] = "ReasoningRoute"
    spec: ReasoningRouteSpec
    status: ReasoningRouteStatus | None = None

    def tier(self, name: str) -> Tier:
        return next(t for t in self.spec.tiers if t.name == name)

    def model_names(self) -> list[str]:
        """The route's own names: its model and aliases, in order, without repeats."""
        return list(dict.fromkeys([self.spec.model, *self.spec.aliases]))
