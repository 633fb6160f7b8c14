"""Rendering: a DMD and its plan in, the children's manifests out (pure).

The package exports what the CLI, the controllers and the tests use; the reconcile
pipeline's canary and traffic-split helpers are imported from :mod:`.workload` itself.

The workload (Deployment or LeaderWorkerSet, Service, PodDisruptionBudget, PodMonitor,
HTTPRoute) is in :mod:`.workload`; the weight cache's claim and fill Job in :mod:`.cache`;
the manifest templates in :mod:`.layout`; sandboxed user templates in
:mod:`.user_template`. Engine command lines and model sources live with the engines
(:mod:`distillery.engines`).
"""

from distillery.render.workload import (
    DEFAULT_IMAGES,
    LWS_GROUP,
    LWS_GROUP_KEY_LABEL,
    LWS_PLURAL,
    LWS_VERSION,
    LWS_WORKER_INDEX_LABEL,
    WORKLOAD_KINDS,
    Rendered,
    RenderError,
    RenderOptions,
    desired_replicas,
    manifests_yaml,
    objects_text,
    pod_templates,
    render,
    replica_startup_seconds,
)

__all__ = [
    "DEFAULT_IMAGES",
    "LWS_GROUP",
    "LWS_GROUP_KEY_LABEL",
    "LWS_PLURAL",
    "LWS_VERSION",
    "LWS_WORKER_INDEX_LABEL",
    "WORKLOAD_KINDS",
    "RenderError",
    "RenderOptions",
    "Rendered",
    "desired_replicas",
    "manifests_yaml",
    "objects_text",
    "pod_templates",
    "render",
    "replica_startup_seconds",
]
