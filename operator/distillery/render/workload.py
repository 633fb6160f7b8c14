"""Render the serving workload of a DMD: Deployment, Service, PodDisruptionBudget and,
where the prometheus-operator API exists, a PodMonitor (pure).

A replica that spans nodes is a LeaderWorkerSet group instead of a Deployment pod: the
same pod template is the leader (it serves the API and exports the metrics, so the
Service and PodMonitor select leaders only), and the workers run the engine's headless
ranks. Everything else (revision, rollout, /scale) treats a group as one replica.

Inputs are the DMD, the placement the planner chose, and operator options (default
images, model cache); the output is plain manifests, the same ones ``distillery render``
prints for GitOps pipelines and the reconciler applies with server-side apply. The
templates under ``templates/`` lay the objects out; everything they contain is computed
here or in the engine's record (:mod:`distillery.engines`), and emitted through
``tojson`` so no value can change a document's structure.

A revision hash of the pod template labels every pod: the reconciler and rollouts tell
revisions apart by it, and an unchanged spec renders byte-identical objects, so a steady
state costs no writes.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from distillery.api.hashing import content_hash
from distillery.api.types import API_VERSION, KIND, DistilledModelDeployment
from distillery.engines import (
    ENGINES,
    SYNC_ARGV,
    EngineInputs,
    EngineLaunch,
    ModelSource,
    SourceError,
)
from distillery.render.cache import (
    DEFAULT_CACHE_FILL_IMAGE,
    CacheError,
    WeightCache,
    marker_check,
    weight_cache,
    with_prepull,
)
from distillery.render.layout import load_template
from distillery.render.user_template import UserTemplateError, merge, render_user_template
from distillery.sizing import Plan
from distillery.sizing.memory import checkpoint_bytes
from distillery.sizing.startup import cold_start_seconds, drain_seconds

GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
LABEL_DEPLOYMENT = "distillery.dev/deployment"
LABEL_MODEL = "distillery.dev/model"
LABEL_REVISION = "distillery.dev/revision"
LABEL_TRACK = "distillery.dev/track"
MANAGED_BY = "distillery"
# The LeaderWorkerSet controller's pod label: the pod's index in its group (0: leader).
LWS_WORKER_INDEX_LABEL = "leaderworkerset.sigs.k8s.io/worker-index"
# ... and the group's unique key, the same on every pod of one group.
LWS_GROUP_KEY_LABEL = "leaderworkerset.sigs.k8s.io/group-key"
# The LeaderWorkerSet API (sigs.k8s.io/lws) the kube layer reads and writes.
LWS_GROUP, LWS_VERSION, LWS_PLURAL = "leaderworkerset.x-k8s.io", "v1", "leaderworkersets"
WORKLOAD_KINDS = frozenset({"Deployment", "LeaderWorkerSet"})

DEFAULT_IMAGES: Mapping[str, str] = {name: e.image for name, e in ENGINES.items()}
DEFAULT_CPU_IMAGES: Mapping[str, str] = {
    name: e.cpu_image for name, e in ENGINES.items() if e.cpu_image
}
# Spot/preemptible node taints tolerated when placement.spot is true.
SPOT_TOLERATIONS: list[dict[str, str]] = [
    {"key": "cloud.google.com/gke-spot", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "kubernetes.azure.com/scalesetpriority", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "eks.amazonaws.com/capacityType", "operator": "Exists", "effect": "NoSchedule"},
]


# Replace pods without a surge: for clusters with no spare GPU.
ONE_AT_A_TIME: dict[str, Any] = {
    "type": "RollingUpdate",
    "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1},
}


class RenderError(ValueError):
    """The DMD cannot be rendered; the message is for its Stalled condition."""


@dataclass(frozen=True)
class RenderOptions:
    """Operator-level settings that shape every rendered workload."""

    images: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_IMAGES))
    cpu_images: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_CPU_IMAGES))
    pod_monitor: bool = False
    http_route: bool = False  # the Gateway API (HTTPRoute) is installed
    # The StorageClass of weight caches whose spec names none (None: the cluster's default).
    cache_storage_class: str | None = None
    s3_image: str = "amazon/aws-cli:2.31.13"
    # Fills hf:// and oci:// weight caches (``distillery cache-fill``): the operator's image.
    cache_fill_image: str = DEFAULT_CACHE_FILL_IMAGE
    gs_image: str = "gcr.io/google.com/cloudsdktool/google-cloud-cli:542.0.0-slim"


@dataclass(frozen=True)
class Rendered:
    """The children of one DMD, ready to apply."""

    # The serving workload: a Deployment, or a LeaderWorkerSet when a replica spans nodes.
    workload: dict[str, Any]
    service: dict[str, Any]
    pdb: dict[str, Any]
    pod_monitor: dict[str, Any] | None
    revision: str
    startup_seconds: float
    endpoint: str
    selector: str
    # With spec.rollout.canary.httpRoute and the Gateway API: a Service per track and
    # the HTTPRoute that weighs them.
    track_services: tuple[dict[str, Any], ...] = ()
    http_route: dict[str, Any] | None = None
    # With spec.model.cache: the claim holding this revision's weights and its fill Job.
    cache: WeightCache | None = None

    def objects(self) -> list[dict[str, Any]]:
        out = self.cache.objects() if self.cache else []
        out += [self.workload, self.service, self.pdb]
        out += [self.pod_monitor] if self.pod_monitor else []
        out += list(self.track_services)
        return out + ([self.http_route] if self.http_route else [])


def label_value(text: str) -> str:
    """A valid label value (<= 63 chars of [A-Za-z0-9._-], alphanumeric at both ends)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", ".", text).strip("._-")
    if len(cleaned) > 63:
        digest = hashlib.sha256(text.encode()).hexdigest()[:8]
        cleaned = cleaned[:54].rstrip("._-") + "-" + digest
    return cleaned


def replica_startup_seconds(dmd: DistilledModelDeployment, p: Plan) -> float:
    """Seconds from a new replica's start to serving: spec.scaling.startupSeconds, else
    the estimate from the chosen placement's weights, their source and the engine. The
    autoscaler and the rendered probes use this one figure."""
    spec = dmd.spec
    if spec.scaling.startup_seconds:
        return float(spec.scaling.startup_seconds)
    # The checkpoint is what is read (bf16 for online fp8: quantized after loading).
    checkpoint = checkpoint_bytes(p.model, p.chosen.quantization)
    return cold_start_seconds(checkpoint, weights_from(dmd), spec.serving.engine)


def weights_from(dmd: DistilledModelDeployment) -> str:
    """Where a new replica reads its weights: the source's scheme, or ``cache``."""
    mode = dmd.spec.model.cache.mode
    if mode != "None":
        return "local" if mode == "NodeLocal" else "cache"
    return ModelSource.parse(dmd.spec.model.uri, dmd.spec.model.name).scheme


def desired_replicas(dmd: DistilledModelDeployment) -> int:
    """spec.replicas clamped to [minReplicas, maxReplicas]; minReplicas when unset."""
    scaling = dmd.spec.scaling
    wanted = dmd.spec.replicas if dmd.spec.replicas is not None else scaling.min_replicas
    return max(scaling.min_replicas, min(scaling.max_replicas, wanted))


def _env(dmd: DistilledModelDeployment, launch_: EngineLaunch, source: ModelSource) -> list[Any]:
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in sorted(launch_.env.items())]
    ref = dmd.spec.model.credentials_secret_ref
    if ref is not None and source.scheme == "hf":
        for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
            env.append(
                {"name": name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}
            )
    for var in dmd.spec.serving.env:
        item: dict[str, Any] = {"name": var.name}
        if var.value_from is not None:
            if var.value_from.secret_key_ref is not None:
                r = var.value_from.secret_key_ref
                item["valueFrom"] = {"secretKeyRef": {"name": r.name, "key": r.key}}
            elif var.value_from.config_map_key_ref is not None:
                cm = var.value_from.config_map_key_ref
                item["valueFrom"] = {"configMapKeyRef": {"name": cm.name, "key": cm.key}}
        else:
            item["value"] = var.value or ""
        env = [e for e in env if e["name"] != var.name] + [item]
    return env


def _storage(
    dmd: DistilledModelDeployment, plan: Plan, source: ModelSource, options: RenderOptions
) -> tuple[list[Any], list[Any], list[Any]]:
    """Volumes, engine volume mounts and init containers for the model source."""
    local = plan.chosen.gpus_per_node  # 0 on CPU-only nodes
    shm = "1Gi" if local <= 1 else f"{2 * local}Gi"
    cache_gib = math.ceil(plan.chosen.weights_gib * 1.2 + 2)
    cache = {"name": "model-cache", "emptyDir": {"sizeLimit": f"{cache_gib}Gi"}}
    volumes: list[Any] = [
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": shm}},
        cache,
        {"name": "tmp", "emptyDir": {}},
    ]
    mounts: list[Any] = [
        {"name": "dshm", "mountPath": "/dev/shm"},
        {"name": "model-cache", "mountPath": "/models"},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    init: list[Any] = []
    ref = dmd.spec.model.credentials_secret_ref
    if source.scheme == "pvc":
        volumes.append(
            {
                "name": "model",
                "persistentVolumeClaim": {"claimName": source.claim, "readOnly": True},
            }
        )
        mounts.append({"name": "model", "mountPath": "/models/pvc", "readOnly": True})
    elif source.scheme == "oci":
        volumes.append(
            {"name": "model", "image": {"reference": source.location, "pullPolicy": "IfNotPresent"}}
        )
        mounts.append({"name": "model", "mountPath": "/models/oci", "readOnly": True})
    elif source.scheme in ("s3", "gs"):
        url = f"{source.scheme}://{source.location}"
        if source.scheme == "s3":
            image, argv = options.s3_image, [*SYNC_ARGV["s3"], url]
        else:
            image, argv = options.gs_image, [*SYNC_ARGV["gs"], url]
        fetch: dict[str, Any] = {
            "name": "fetch-model",
            "image": image,
            "command": [*argv, source.local_path],
            "volumeMounts": [{"name": "model-cache", "mountPath": "/models"}],
            "securityContext": {
                "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"]},
            },
            "resources": {"requests": {"cpu": "1", "memory": "1Gi"}},
        }
        if ref is not None:
            # The whole Secret as environment (AWS_ACCESS_KEY_ID, ...), by reference only.
            fetch["envFrom"] = [{"secretRef": {"name": ref.name}}]
        init.append(fetch)
    return volumes, mounts, init


def _resources(plan: Plan) -> dict[str, Any]:
    """One pod's resources: a replica's, or one node's share of a multi-node group."""
    c = plan.chosen
    if c.gpus == 0:
        mem = math.ceil(c.weights_gib + c.kv_needed_gib + c.overhead_gib + 2)
        return {"requests": {"cpu": "8", "memory": f"{mem}Gi"}, "limits": {"memory": f"{mem}Gi"}}
    gpus = c.gpus_per_node
    cpu = min(4 * gpus, 32)
    mem = math.ceil(c.weights_gib / c.nodes * 1.25 + 8)
    return {
        "requests": {"cpu": str(cpu), "memory": f"{mem}Gi", GPU_RESOURCE: str(gpus)},
        "limits": {"memory": f"{mem}Gi", GPU_RESOURCE: str(gpus)},
    }


def _placement(dmd: DistilledModelDeployment, plan: Plan) -> tuple[Any, Any, list[Any]]:
    """Affinity, node selector and tolerations."""
    c, p = plan.chosen, dmd.spec.placement
    node_selector = dict(p.node_selector)
    tolerations: list[dict[str, Any]] = []
    affinity: dict[str, Any] | None = None
    if c.gpus:
        affinity = {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {
                                    "key": GPU_PRODUCT_LABEL,
                                    "operator": "In",
                                    "values": [c.gpu.product],
                                }
                            ]
                        }
                    ]
                }
            }
        }
        tolerations.append({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"})
    else:
        affinity = {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {"key": GPU_PRODUCT_LABEL, "operator": "DoesNotExist"}
                            ]
                        }
                    ]
                }
            }
        }
    if p.spot:
        tolerations += SPOT_TOLERATIONS
    tolerations += [t.to_wire() for t in p.tolerations]
    return affinity, node_selector, tolerations


def _strategy(dmd: DistilledModelDeployment, plan: Plan) -> dict[str, Any]:
    """Surge counted in GPUs (default: one replica), never below the desired count; with
    no surge, replace one replica at a time (:data:`ONE_AT_A_TIME`, which a rollout also
    switches to when no spare GPU can take a surge pod)."""
    rollout = dmd.spec.rollout
    surge = (
        1 if rollout.max_surge_gpus is None else rollout.max_surge_gpus // max(1, plan.chosen.gpus)
    )
    if surge == 0:
        return copy.deepcopy(ONE_AT_A_TIME)
    return {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": surge, "maxUnavailable": 0}}


def set_route_weights(route: dict[str, Any], stable: int, canary: int) -> None:
    """Weights of the stable and canary backends of a rendered HTTPRoute."""
    refs = route["spec"]["rules"][0]["backendRefs"]
    refs[0]["weight"], refs[1]["weight"] = stable, canary


def pod_templates(workload: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The pod templates of a rendered workload: a Deployment's one, or a
    LeaderWorkerSet's leader and worker templates."""
    spec = workload["spec"]
    if workload["kind"] == "LeaderWorkerSet":
        group = spec["leaderWorkerTemplate"]
        return [group["leaderTemplate"], group["workerTemplate"]]
    return [spec["template"]]


def canary_workload(rendered: Rendered, replicas: int) -> dict[str, Any]:
    """The canary track of the rendered workload: the same pod templates (so the same
    revision) as a second workload, ``<name>-canary``, whose pods carry
    ``distillery.dev/track: canary``. The Service selects both tracks."""
    obj = copy.deepcopy(rendered.workload)
    meta = obj["metadata"]
    meta["name"] = f"{meta['name']}-canary"
    meta["labels"] = {**meta["labels"], LABEL_TRACK: "canary"}
    spec = obj["spec"]
    spec["replicas"] = replicas
    if "selector" in spec:
        spec["selector"]["matchLabels"][LABEL_TRACK] = "canary"
    for pod in pod_templates(obj):
        pod["metadata"]["labels"][LABEL_TRACK] = "canary"
        for constraint in pod["spec"].get("topologySpreadConstraints") or []:
            match = (constraint.get("labelSelector") or {}).get("matchLabels")
            if isinstance(match, dict) and LABEL_TRACK in match:
                match[LABEL_TRACK] = "canary"
    return obj


def set_one_at_a_time(workload: dict[str, Any]) -> None:
    """Replace replicas without a surge (:data:`ONE_AT_A_TIME`), in the workload's terms."""
    if workload["kind"] == "LeaderWorkerSet":
        workload["spec"]["rolloutStrategy"]["rollingUpdateConfiguration"] = copy.deepcopy(
            ONE_AT_A_TIME["rollingUpdate"]
        )
    else:
        workload["spec"]["strategy"] = copy.deepcopy(ONE_AT_A_TIME)


def _worker_template(leader: Mapping[str, Any], worker_args: list[str]) -> dict[str, Any]:
    """A group's worker pods: the leader's template running the engine's headless rank,
    with no API to probe or scrape."""
    worker = copy.deepcopy(dict(leader))
    worker["metadata"]["annotations"] = {
        k: v
        for k, v in worker["metadata"].get("annotations", {}).items()
        if not k.startswith("prometheus.io/")
    }
    for container in worker["spec"]["containers"]:
        if container.get("name") == "engine":
            container["args"] = list(worker_args)
            container.pop("ports", None)
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                container.pop(probe, None)
    return worker


# A revision is a label value users read: short.
REVISION_LENGTH = 10


def _hash(obj: Any) -> str:
    return content_hash(obj, REVISION_LENGTH)


def _identity(
    dmd: DistilledModelDeployment, owner_uid: str | None
) -> tuple[dict[str, str], dict[str, Any] | None]:
    """The labels every child carries, and its owner reference (none without a uid)."""
    name = dmd.name
    labels = {
        "app.kubernetes.io/name": dmd.spec.serving.engine,
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/component": "inference-server",
        "app.kubernetes.io/part-of": "distillery",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        LABEL_DEPLOYMENT: name,
        LABEL_MODEL: label_value(dmd.spec.model.name),
    }
    owner = (
        {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": name,
            "uid": owner_uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }
        if owner_uid
        else None
    )
    return labels, owner


def _source(
    dmd: DistilledModelDeployment,
    plan: Plan,
    options: RenderOptions,
    labels: Mapping[str, str],
    owner: Mapping[str, Any] | None,
) -> tuple[ModelSource, WeightCache | None]:
    """Where the engine reads the weights, and the weight cache when the spec has one
    (the engine then reads the cache's claim)."""
    spec = dmd.spec
    try:
        source = ModelSource.parse(spec.model.uri, spec.model.name)
    except SourceError as exc:
        raise RenderError(str(exc)) from None
    no_file = source.scheme in ("s3", "gs", "oci", "pvc") and not source.location
    if spec.serving.engine == "llamacpp" and no_file:
        raise RenderError("llama.cpp needs a GGUF file path in model.uri")
    try:
        cache = weight_cache(
            dmd,
            plan.model,
            plan.chosen.quantization,
            image=options.cache_fill_image,
            s3_image=options.s3_image,
            gs_image=options.gs_image,
            storage_class=options.cache_storage_class,
            labels=labels,
            owner=owner,
        )
    except CacheError as exc:
        raise RenderError(str(exc)) from None
    # Replicas read a filled cache's claim: to the engine it is a pvc:// model.
    return (cache.serving_source if cache else source), cache


def render(
    dmd: DistilledModelDeployment,
    plan: Plan,
    *,
    options: RenderOptions | None = None,
    replicas: int | None = None,
    owner_uid: str | None = None,
    user_template: str | None = None,
) -> Rendered:
    """Render the children of ``dmd`` for ``plan``. Raises :class:`RenderError`."""
    options = options or RenderOptions()
    spec, c = dmd.spec, plan.chosen
    name, namespace = dmd.name, dmd.namespace
    if not name:
        raise RenderError("metadata.name is required")
    engine = spec.serving.engine
    labels, owner = _identity(dmd, owner_uid)
    source, cache = _source(dmd, plan, options, labels, owner)
    launch_ = ENGINES[engine].launch(
        EngineInputs(
            source=source,
            served_name=spec.model.name,
            revision=spec.model.revision,
            tensor_parallel=c.tensor_parallel,
            gpus=c.gpus,
            quantization=c.quantization,
            max_model_len=spec.serving.max_model_len,
            max_concurrency=spec.serving.concurrency,
            gpu_memory_utilization=spec.placement.gpu_memory_utilization,
            kv_cache_dtype=spec.serving.kv_cache_dtype,
            extra_args=tuple(spec.serving.extra_args),
            slo_ttft_seconds=spec.scaling.slo.ttft_seconds,
            nodes=c.nodes,
            pipeline_parallel=c.pipeline_parallel,
            expert_parallel=c.expert_parallel,
        ),
    )
    image = (
        spec.serving.image
        or (options.cpu_images.get(engine) if c.gpus == 0 else None)
        or options.images.get(engine)
    )
    if not image:
        raise RenderError(f"no image for engine {engine}: set spec.serving.image")
    startup = replica_startup_seconds(dmd, plan)
    selector = {LABEL_DEPLOYMENT: name, LABEL_TRACK: "stable"}
    multi_node = c.nodes > 1
    # Only a group's leader serves the API and exports metrics.
    leaders = {LWS_WORKER_INDEX_LABEL: "0"} if multi_node else {}
    service_selector = {LABEL_DEPLOYMENT: name, **leaders}
    volumes, mounts, init = _storage(dmd, plan, source, options)
    affinity, node_selector, tolerations = _placement(dmd, plan)
    if cache is not None:
        placement = {
            "affinity": affinity,
            "nodeSelector": node_selector,
            "tolerations": tolerations,
        }
        cache = with_prepull(cache, dmd, image=options.cache_fill_image, placement=placement)
        if cache.node_dir is not None:
            # The node's copy instead of the claim, at the same path: the engine's
            # command line is the same either way.
            volumes = [
                {"name": "model", "hostPath": {"path": cache.node_dir, "type": "DirectoryOrCreate"}}
                if v.get("name") == "model"
                else v
                for v in volumes
            ]
        wait = math.ceil(cache.fill_seconds) + 600 if cache.node_dir else 0
        init.insert(0, marker_check(image, wait_seconds=wait))
    non_root = launch_.run_as_non_root
    pod_security: dict[str, Any] = {"seccompProfile": {"type": "RuntimeDefault"}}
    if non_root:
        pod_security.update({"runAsNonRoot": True, "runAsUser": 65532, "fsGroup": 65532})
    container_security: dict[str, Any] = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }
    if non_root:
        container_security["readOnlyRootFilesystem"] = True
    pod_annotations = {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(launch_.port),
        "prometheus.io/path": launch_.metrics_path,
    }
    context: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "labels": labels,
        "owner": owner,
        "replicas": replicas if replicas is not None else desired_replicas(dmd),
        "progress_deadline_seconds": max(600, math.ceil(startup * 3)),
        "selector": selector,
        "service_selector": service_selector,
        "pdb_selector": {LABEL_DEPLOYMENT: name},
        "strategy": _strategy(dmd, plan),
        "pod_labels": {**labels, **selector},
        "pod_annotations": pod_annotations,
        "deployment_annotations": {},
        "termination_grace_seconds": math.ceil(
            drain_seconds(
                spec.serving.max_model_len,
                c.decode_tokens_per_second
                / max(1, min(spec.serving.concurrency, c.max_concurrency)),
            )
        ),
        "pod_security_context": pod_security,
        "affinity": affinity,
        "node_selector": node_selector,
        "tolerations": tolerations,
        "init_containers": init,
        "image": image,
        "launch": launch_,
        "env": _env(dmd, launch_, source),
        "resources": _resources(plan),
        "container_security_context": container_security,
        "volume_mounts": mounts,
        "volumes": volumes,
        # Budget twice the expected load time before the startup probe gives up.
        "startup_failure_threshold": max(30, math.ceil(2 * startup / 10)),
        "port": launch_.port,
    }
    deployment = load_template("deployment.yaml.j2", context)
    template = deployment["spec"]["template"]
    if user_template is not None:
        user_ctx = {
            "dmd": {"name": name, "namespace": namespace, "spec": spec.to_wire()},
            "placement": c.to_json(plan.currency)["placement"],
            "engine": engine,
            "labels": dict(labels),
        }
        try:
            patch = render_user_template(user_template, user_ctx)
        except UserTemplateError as exc:
            raise RenderError(str(exc)) from None
        merged = merge(template, patch)
        _check_invariants(merged, template)
        deployment["spec"]["template"] = template = merged
    revision = _hash(template)
    template["metadata"]["labels"][LABEL_REVISION] = revision
    deployment["metadata"]["annotations"][LABEL_REVISION] = revision
    workload = _leader_worker_set(context, deployment, plan) if multi_node else deployment
    endpoint = f"http://{name}.{namespace}.svc.cluster.local:{launch_.port}/v1"
    route_spec = spec.rollout.canary.http_route if spec.rollout.canary else None
    track_services: tuple[dict[str, Any], ...] = ()
    http_route = None
    if options.http_route and route_spec is not None:
        track_services = tuple(
            load_template(
                "service.yaml.j2",
                {
                    **context,
                    "name": f"{name}-{track}",
                    "service_selector": {LABEL_DEPLOYMENT: name, LABEL_TRACK: track, **leaders},
                },
            )
            for track in ("stable", "canary")
        )
        route = {
            "parent_refs": [
                {k: v for k, v in ref.to_wire().items() if v is not None}
                for ref in route_spec.parent_refs
            ],
            "hostnames": list(route_spec.hostnames),
        }
        http_route = load_template("httproute.yaml.j2", {**context, "route": route})
    return Rendered(
        track_services=track_services,
        http_route=http_route,
        workload=workload,
        service=load_template("service.yaml.j2", context),
        pdb=load_template("pdb.yaml.j2", context),
        pod_monitor=load_template("podmonitor.yaml.j2", context) if options.pod_monitor else None,
        revision=revision,
        startup_seconds=startup,
        endpoint=endpoint,
        selector=f"{LABEL_DEPLOYMENT}={name}",
        cache=cache,
    )


def _leader_worker_set(
    context: Mapping[str, Any], deployment: Mapping[str, Any], plan: Plan
) -> dict[str, Any]:
    """The LeaderWorkerSet of a multi-node replica: the rendered Deployment's pod
    template leads each group; the workers' follows from it and the same launch inputs,
    so the leader template's hash is the group's revision."""
    launch_: EngineLaunch = context["launch"]
    if launch_.worker_args is None:
        raise RenderError("the engine has no multi-node launch: choose vllm or sglang")
    template = deployment["spec"]["template"]
    return load_template(
        "leaderworkerset.yaml.j2",
        {
            **context,
            "deployment_annotations": deployment["metadata"]["annotations"],
            "group_size": plan.chosen.nodes,
            "group_rollout": deployment["spec"]["strategy"]["rollingUpdate"],
            "leader_template": template,
            "worker_template": _worker_template(template, launch_.worker_args),
        },
    )


def _engine(template: Mapping[str, Any]) -> dict[str, Any]:
    for container in (template.get("spec") or {}).get("containers") or []:
        if container.get("name") == "engine":
            return dict(container)
    raise RenderError("user template removed the 'engine' container")


def _check_invariants(merged: Mapping[str, Any], rendered: Mapping[str, Any]) -> None:
    """A user template may add, never change what distillery owns: the engine's GPU
    resources, image command line, the GPU placement (node affinity, the GPU taint's
    toleration) and the pod's identity labels."""
    before, after = _engine(rendered), _engine(merged)
    for key in ("resources", "args", "command"):
        if before.get(key) != after.get(key):
            raise RenderError(
                f"user template changes the engine container's {key}, which "
                "distillery owns: use spec.serving.extraArgs or spec.placement"
            )
    if (rendered["spec"].get("affinity") or {}).get("nodeAffinity") != (
        merged["spec"].get("affinity") or {}
    ).get("nodeAffinity"):
        raise RenderError(
            "user template changes the pod's node affinity (the GPU placement), "
            "which distillery owns: use spec.placement"
        )
    kept = merged["spec"].get("tolerations") or []
    if any(t not in kept for t in rendered["spec"].get("tolerations") or []):
        raise RenderError(
            "user template removes a toleration distillery set (the GPU nodes' taint), "
            "which distillery owns: list only tolerations to add"
        )
    r_labels = rendered["metadata"]["labels"]
    m_labels = merged["metadata"].get("labels", {})
    changed = [k for k, v in r_labels.items() if m_labels.get(k) != v]
    if changed:
        raise RenderError(f"user template changes labels distillery owns: {', '.join(changed)}")


def manifests_yaml(rendered: Rendered) -> str:
    """The children as one YAML stream, for `distillery render`."""
    return objects_text(rendered.objects(), "yaml")


def objects_text(objects: Sequence[Mapping[str, Any]], fmt: str = "yaml") -> str:
    """Objects as one YAML stream, or as a JSON ``v1/List`` (what ``kubectl get -o json``
    prints for several objects and ``kubectl apply -f`` accepts)."""
    if fmt == "json":
        doc = {"apiVersion": "v1", "kind": "List", "items": [dict(o) for o in objects]}
        return json.dumps(doc, indent=2) + "\n"
    return yaml.safe_dump_all([copy.deepcopy(dict(o)) for o in objects], sort_keys=False, width=100)
