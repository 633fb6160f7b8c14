"""Operator settings: one class, environment variables prefixed ``DISTILLERY_``.

Every setting is also a ``distillery run`` flag (the flag wins); the Helm chart sets the
environment. Lists are comma-separated in the environment (``DISTILLERY_NAMESPACES=a,b``)
and repeatable as flags.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from distillery.render import RenderOptions

PREFIX = "DISTILLERY_"


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    namespaces: list[str] = Field(
        default_factory=list, description="namespaces to watch (empty: all)"
    )
    prometheus_url: str = Field(default="", description="Prometheus base URL")
    prometheus_bearer_token_file: str = ""
    prometheus_ca_file: str = ""
    prometheus_insecure_skip_verify: bool = False
    autoscale_interval_seconds: float = Field(default=15.0, gt=0)
    resync_interval_seconds: float = Field(default=300.0, gt=0)
    rollout_interval_seconds: float = Field(
        default=10.0, gt=0, description="seconds between canary analyses and pause checks"
    )
    catalog_files: list[str] = Field(default_factory=list)
    pod_monitor: Literal["auto", "true", "false"] = "auto"
    model_cache_claim: str = ""
    image_vllm: str = ""
    image_sglang: str = ""
    image_tgi: str = ""
    image_llamacpp: str = ""
    metrics_port: int = Field(default=8080, ge=0, le=65535)
    metrics_bind: str = Field(
        default="0.0.0.0", description="address the metrics and liveness endpoints bind"
    )
    health_port: int = Field(default=8081, ge=0, le=65535)
    peering: str = Field(
        default="", description="kopf peering name; empty: standalone (one replica, Recreate)"
    )
    priority: int = 0
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    kubeconfig: str = ""

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
            model_cache_claim=self.model_cache_claim or None,
        )

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
