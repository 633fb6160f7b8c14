"""Operator settings: one class, environment variables prefixed ``DISTILLERY_``.

Every setting is also a ``distillery run`` flag (the flag wins), generated from the
fields below, as is the table in docs/operations.md; the Helm chart sets the environment.
Lists are comma-separated in the environment (``DISTILLERY_NAMESPACES=a,b``) and
repeatable as flags.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from distillery.render import RenderOptions
from distillery.render.cache import DEFAULT_CACHE_FILL_IMAGE
from distillery.render.routing import DEFAULT_EPP_IMAGE, RouteRenderOptions

PREFIX = "DISTILLERY_"
# Flags named before the rest were generated; every other field is --field-name.
FLAG_NAMES = {
    "namespaces": "--namespace",
    "autoscale_interval_seconds": "--autoscale-interval",
    "rollout_interval_seconds": "--rollout-interval",
    "catalog_files": "--catalog",
}


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    namespaces: list[str] = Field(
        default_factory=list, description="namespaces to watch (empty: all)"
    )
    prometheus_url: str = Field(default="", description="Prometheus base URL")
    prometheus_bearer_token_file: str = Field(
        default="", description="file with a bearer token for Prometheus"
    )
    prometheus_ca_file: str = Field(default="", description="CA bundle for Prometheus TLS")
    prometheus_insecure_skip_verify: bool = Field(
        default=False, description="skip Prometheus TLS verification (testing only)"
    )
    autoscale_interval_seconds: float = Field(
        default=15.0, gt=0, description="seconds between autoscaler decisions"
    )
    resync_interval_seconds: float = Field(
        default=300.0, gt=0, description="seconds between full re-reconciles of every DMD"
    )
    rollout_interval_seconds: float = Field(
        default=10.0, gt=0, description="seconds between canary analyses and pause checks"
    )
    catalog_files: list[str] = Field(
        default_factory=list, description="extra catalog YAML files (models, GPUs, prices)"
    )
    pod_monitor: Literal["auto", "true", "false"] = Field(
        default="auto", description="render PodMonitors (auto: when the CRD is installed)"
    )
    cache_storage_class: str = Field(
        default="",
        description="StorageClass of weight caches whose spec.model.cache leaves it out "
        "(empty: the cluster's default class)",
    )
    image_vllm: str = Field(default="", description="vLLM image (empty: built-in default)")
    image_sglang: str = Field(default="", description="SGLang image (empty: built-in default)")
    image_tgi: str = Field(default="", description="TGI image (empty: built-in default)")
    image_llamacpp: str = Field(default="", description="llama.cpp image (empty: built-in default)")
    image_cache_fill: str = Field(
        default="",
        description="image that fills weight caches, `distillery cache-fill` (empty: the "
        "operator's own release image)",
    )
    image_endpoint_picker: str = Field(
        default="",
        description="image of the Gateway API Inference Extension's endpoint picker a "
        "ReasoningRoute runs per tier (empty: its v1.2.0 release image by name; set your "
        "mirror of it)",
    )
    metrics_port: int = Field(
        default=8080, ge=0, le=65535, description="operator metrics port (0: off)"
    )
    metrics_bind: str = Field(
        default="0.0.0.0", description="address the metrics and liveness endpoints bind"
    )
    health_port: int = Field(
        default=8081, ge=0, le=65535, description="liveness port, /healthz (0: off)"
    )
    peering: str = Field(
        default="",
        description="kopf peering name (empty: standalone); pauses nothing of the "
        "operator (its watches and loops are its own): for several replicas use leader "
        "election",
    )
    priority: int = Field(default=0, description="kopf peering priority (higher wins)")
    leader_election: bool = Field(
        default=False,
        description="act only while holding a Lease, so several replicas can run: one "
        "active, the others standing by to take over",
    )
    leader_election_id: str = Field(
        default="distillery",
        description="name of the Lease (one per shard: instances with the same name "
        "exclude each other)",
    )
    leader_election_namespace: str = Field(
        default="",
        description="namespace of the Lease (empty: the pod's own namespace, else default)",
    )
    leader_election_lease_seconds: float = Field(
        default=15.0,
        gt=0,
        description="how long a Lease not renewed stays held: a standby takes over a "
        "crashed leader after this long",
    )
    leader_election_renew_deadline_seconds: float = Field(
        default=10.0,
        gt=0,
        description="a leader that could not renew for this long stops acting (less than "
        "the lease, so it stops before a standby may start)",
    )
    leader_election_retry_period_seconds: float = Field(
        default=2.0, gt=0, description="seconds between renewals, and between a standby's tries"
    )
    identity: str = Field(
        default="",
        description="this instance's name in the Lease and its API requests' user agent "
        "(empty: $POD_NAME, else host name and process id)",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="log level"
    )
    kubeconfig: str = Field(
        default="",
        description=(
            "kubeconfig file (empty: in a pod, its service account; else $KUBECONFIG, "
            "then ~/.kube/config)"
        ),
    )

    @model_validator(mode="after")
    def _leader_election_timings(self) -> Settings:
        if self.leader_election and self.peering:
            raise ValueError(
                "leader_election and peering both choose which replica acts: set one "
                "(leader election is the one that works with identical replicas)"
            )
        lease = self.leader_election_lease_seconds
        renew = self.leader_election_renew_deadline_seconds
        retry = self.leader_election_retry_period_seconds
        if not retry < renew < lease:
            raise ValueError(
                "leader election needs retry period < renew deadline < lease "
                f"(got {retry:g} < {renew:g} < {lease:g} s): a leader must give up before "
                "its lease can pass to a standby"
            )
        return self

    def instance_identity(self) -> str:
        """This instance's name: unique among the replicas that share a Lease."""
        if self.identity:
            return self.identity
        pod = os.environ.get("POD_NAME", "")
        return pod or f"{socket.gethostname()}_{os.getpid()}"

    @field_validator("namespaces", "catalog_files", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    def images(self) -> dict[str, str]:
        return {
            engine: image
            for engine, image in (
                ("vllm", self.image_vllm),
                ("sglang", self.image_sglang),
                ("tgi", self.image_tgi),
                ("llamacpp", self.image_llamacpp),
            )
            if image
        }

    def render_options(
        self, *, pod_monitor: bool, http_route: bool, images: Mapping[str, str] | None = None
    ) -> RenderOptions:
        """What the operator renders with; `distillery render` builds the same thing.

        ``pod_monitor`` and ``http_route`` say whether those APIs are in use: the
        operator asks the cluster, the CLI asks its flags.
        """
        return RenderOptions(
            images={**RenderOptions().images, **self.images(), **(images or {})},
            pod_monitor=pod_monitor,
            http_route=http_route,
            cache_storage_class=self.cache_storage_class or None,
            cache_fill_image=self.image_cache_fill or DEFAULT_CACHE_FILL_IMAGE,
        )

    def route_render_options(
        self, *, inference_extension: bool = True, gateway_api: bool = True
    ) -> RouteRenderOptions:
        """What a ReasoningRoute renders with; ``inference_extension`` and ``gateway_api``
        say whether those APIs are served (the operator asks the cluster before each
        route's reconcile, the CLI its flags)."""
        return RouteRenderOptions(
            inference_extension=inference_extension,
            gateway_api=gateway_api,
            endpoint_picker_image=self.image_endpoint_picker or DEFAULT_EPP_IMAGE,
        )

    @classmethod
    def flag(cls, name: str) -> str:
        """The ``distillery run`` flag of a field."""
        return FLAG_NAMES.get(name, "--" + name.replace("_", "-"))

    @classmethod
    def markdown(cls) -> str:
        """The settings table of docs/operations.md."""
        rows = [
            "<!-- settings: generated from distillery.settings.Settings by `make generate` -->",
            "| environment | flag | default | meaning |",
            "|---|---|---|---|",
        ]
        for name, info in cls.model_fields.items():
            default = info.get_default(call_default_factory=True)
            shown = ",".join(default) if isinstance(default, list) else str(default)
            rows.append(
                f"| `{PREFIX}{name.upper()}` | `{cls.flag(name)}` | `{shown or '(empty)'}` | "
                f"{info.description or ''} |"
            )
        return "\n".join([*rows, "<!-- /settings -->"])

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            key = PREFIX + name.upper()
            if key in env:
                values[name] = env[key]
        values.update({k: v for k, v in overrides.items() if v not in (None, [], "")})
        return cls.model_validate(values)
