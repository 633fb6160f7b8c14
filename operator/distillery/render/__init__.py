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
    LWS_GROUP,
    LWS_GROUP_KEY_LABEL,
    LWS_PLURAL,
    LWS_VERSION,
    LWS_WORKER_INDEX_LABEL,
    ONE_AT_A_TIME,
    WORKLOAD_KINDS,
    Rendered,
    RenderError,
    RenderOptions,
    canary_workload,
    desired_replicas,
    label_value,
    manifests_yaml,
    objects_text,
    pod_templates,
    render,
    replica_startup_seconds,
    set_one_at_a_time,
    set_route_weights,
    weights_from,
)

__all__ = [
    "DEFAULT_IMAGES",
    "LABEL_DEPLOYMENT",
    "LABEL_REVISION",
    "LABEL_TRACK",
    "LWS_GROUP",
    "LWS_GROUP_KEY_LABEL",
    "LWS_PLURAL",
    "LWS_VERSION",
    "LWS_WORKER_INDEX_LABEL",
    "ONE_AT_A_TIME",
    "WORKLOAD_KINDS",
    "RenderError",
    "RenderOptions",
    "Rendered",
    "canary_workload",
    "desired_replicas",
    "label_value",
    "manifests_yaml",
    "objects_text",
    "pod_templates",
    "render",
    "replica_startup_seconds",
    "set_one_at_a_time",
    "set_route_weights",
    "weights_from",
]
