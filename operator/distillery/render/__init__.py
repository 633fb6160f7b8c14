"""Rendering: a DMD and its plan in, the children's manifests out (pure).

The workload (Deployment, Service, PodDisruptionBudget, PodMonitor, HTTPRoute) is in
:mod:`.workload`; engine command lines in :mod:`.engines`; model sources in
:mod:`.source`; sandboxed user templates in :mod:`.user_template`.
"""

from distillery.render.workload import (
    DEFAULT_IMAGES,
    LABEL_DEPLOYMENT,
    LABEL_REVISION,
    LABEL_TRACK,
    ONE_AT_A_TIME,
    Rendered,
    RenderError,
    RenderOptions,
    canary_deployment,
    desired_replicas,
    label_value,
    manifests_yaml,
    objects_text,
    render,
    replica_startup_seconds,
    set_route_weights,
)

__all__ = [
    "DEFAULT_IMAGES",
    "LABEL_DEPLOYMENT",
    "LABEL_REVISION",
    "LABEL_TRACK",
    "ONE_AT_A_TIME",
    "RenderError",
    "RenderOptions",
    "Rendered",
    "canary_deployment",
    "desired_replicas",
    "label_value",
    "manifests_yaml",
    "objects_text",
    "render",
    "replica_startup_seconds",
    "set_route_weights",
]
