"""The weight cache of a DMD: a claim per model revision and the Job that fills it (pure).

Why: without it every replica downloads the checkpoint before it serves, so each
scale-up pays a Hub download and the autoscaler must hold headroom for it. With
``spec.model.cache.mode: Shared`` the checkpoint is read from its source once, into a
PersistentVolumeClaim that every replica then mounts read-only; the serving pods see it
as a ``pvc://`` source, so engines need no cache-specific launch.

Correctness rests on one marker: the fill writes :data:`MARKER` after every byte, and
serving pods carry an init container that refuses to start the engine without it, so a
pod never loads a partial checkpoint. The reconciler does not create or roll out
serving pods until the Job reports complete (:mod:`distillery.reconcile.desired`).

A cache is keyed by what its content and its claim depend on: the source, the revision
and the claim's immutable shape (storage class, access mode, size). Changing any of them
fills a new claim; the old one is retired and deleted after a grace period.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from distillery.api.hashing import content_hash
from distillery.api.types import DistilledModelDeployment
from distillery.catalog import ModelEntry
from distillery.engines import SYNC_ARGV, ModelSource
from distillery.render.layout import load_template
from distillery.sizing.memory import GIB, checkpoint_bytes
from distillery.sizing.startup import fill_seconds

# Written last by every fill, at the claim's root; its content is the fill's summary.
MARKER = ".distillery-complete"
# How the fill's progress line starts; the operator reads the last one from the pod's log.
PROGRESS_PREFIX = "progress: "
FILL_MOUNT = "/weights"
LOCAL_MOUNT = "/local"
# On a NodeLocal cache's pre-pull pods (not replicas either, see LABEL_CACHE_OF).
LABEL_PREPULL_OF = "distillery.dev/weight-prepull-of"
SOURCE_MOUNT = "/source"
LABEL_CACHE_KEY = "distillery.dev/cache-key"
# On the fill's pods instead of distillery.dev/deployment: they are not replicas, and
# the autoscaler and rollouts count every pod that carries the deployment label.
LABEL_CACHE_OF = "distillery.dev/weight-cache-of"
SOURCE_ANNOTATION = "distillery.dev/weights-source"
CACHE_KEY_LENGTH = 8
# Attempts of one fill before the Job fails and the DMD says why (a retry resumes:
# finished files are kept and checked by size).
FILL_BACKOFF_LIMIT = 2
# A Job is a child the reconciler creates once: its pod template is immutable.
JOB_NAME_LIMIT = 63
DEFAULT_CACHE_FILL_IMAGE = "ghcr.io/distillery-dev/distillery:0.1.0"
# An object-store fill: the pods' own sync command, then the marker, written last.
SYNC_FILL_SCRIPT = (
    'set -eu; {sync} "$1" "$2"; '
    'bytes=$(du -sb "$2" | cut -f1); '
    'printf \'{{"source": "%s", "bytes": %s}}\\n\' "$1" "$bytes" > "$2/' + MARKER + '"; '
    'cp "$2/' + MARKER + '" /dev/termination-log'
)


@dataclass(frozen=True, kw_only=True)
class WeightCache:
    """One revision's cache: its claim, the Job that fills it and how pods mount it."""

    claim: str
    job: str
    source: str  # what fills it, for status: the URI and, for hf://, the revision
    expected_bytes: int
    fill_seconds: float  # at the source's bandwidth
    pvc: dict[str, Any]
    fill_job: dict[str, Any]
    # The serving pods' view: the claim as a read-only pvc:// source.
    serving_source: ModelSource
    # NodeLocal: the DaemonSet that copies the claim to every node the replicas may land
    # on, and the folder each node holds the copy in (the serving pods mount it instead).
    prepull: dict[str, Any] | None = None
    node_dir: str | None = None

    def objects(self) -> list[dict[str, Any]]:
        return [self.pvc, self.fill_job, *([self.prepull] if self.prepull else [])]


class CacheError(ValueError):
    """The cache cannot be made as specified; the message says how to fix it."""


def _job_name(name: str, key: str) -> str:
    full = f"{name}-weights-{key}"
    if len(full) <= JOB_NAME_LIMIT:
        return full
    # Job names become a pod label value: keep 63 characters, still unique by the hash.
    return f"{name[: JOB_NAME_LIMIT - len(key) - 10].rstrip('-.')}-weights-{key}"


def _fill_container(
    dmd: DistilledModelDeployment, source: ModelSource, image: str, s3_image: str, gs_image: str
) -> tuple[str, list[str], list[dict[str, Any]], list[dict[str, Any]]]:
    """Image, command, environment and envFrom of the fill, with the pods' credentials."""
    model = dmd.spec.model
    ref = model.credentials_secret_ref
    env: list[dict[str, Any]] = []
    env_from: list[dict[str, Any]] = []
    if source.scheme == "hf":
        command = [
            "distillery",
            "cache-fill",
            f"--source=hf://{source.location.strip('/')}",
            f"--revision={model.revision}",
            f"--dest={FILL_MOUNT}",
        ]
        if ref is not None:
            env.append(
                {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": ref.to_wire()}},
            )
        # A Hub mirror set for the engine (HF_ENDPOINT) is where the fill reads too.
        for var in dmd.spec.serving.env:
            if var.name == "HF_ENDPOINT":
                env.append(var.to_wire())
        return image, command, env, env_from
    if ref is not None:
        # The whole Secret as environment (AWS_ACCESS_KEY_ID, ...), by reference only.
        env_from.append({"secretRef": {"name": ref.name}})
    if source.scheme in ("s3", "gs"):
        script = SYNC_FILL_SCRIPT.format(sync=shlex.join(SYNC_ARGV[source.scheme]))
        fill_image = s3_image if source.scheme == "s3" else gs_image
        url = f"{source.scheme}://{source.location}"
        return fill_image, ["sh", "-c", script, "fill", url, FILL_MOUNT], env, env_from
    # oci://: the artifact is an image volume at /source; copy it into the claim.
    command = [
        "distillery",
        "cache-fill",
        f"--source=file://{SOURCE_MOUNT}",
        f"--dest={FILL_MOUNT}",
    ]
    return image, command, env, env_from


def cache_size_gib(model: ModelEntry, quantization: str, requested: int | None) -> int:
    """The claim's size: as requested, else the checkpoint plus 10% and 2 GiB. Raises
    :class:`CacheError` for a request below the checkpoint."""
    need = checkpoint_bytes(model, quantization) / GIB
    if requested is not None:
        if requested < need:
            raise CacheError(
                f"spec.model.cache.sizeGiB {requested} is smaller than the checkpoint "
                f"({need:.1f} GiB): set at least {math.ceil(need * 1.1 + 2)} or leave it "
                "out to size it from the model"
            )
        return requested
    return math.ceil(need * 1.1 + 2)


def weight_cache(
    dmd: DistilledModelDeployment,
    model: ModelEntry,
    quantization: str,
    *,
    image: str,
    s3_image: str,
    gs_image: str,
    labels: Mapping[str, str],
    owner: Mapping[str, Any] | None,
    storage_class: str | None = None,
) -> WeightCache | None:
    """The cache ``dmd`` asks for, or None (``cache.mode: None``). ``quantization`` is
    the placement's (it decides the checkpoint's size); ``labels`` the children's;
    ``storage_class`` the operator's default for a spec that names none."""
    spec = dmd.spec.model.cache
    if spec.mode == "None":
        return None
    source = ModelSource.parse(dmd.spec.model.uri, dmd.spec.model.name)
    if source.scheme == "pvc":
        raise CacheError("spec.model.cache: a pvc:// model is already on a volume")
    size = cache_size_gib(model, quantization, spec.size_gi_b)
    storage = spec.storage_class_name or storage_class
    uri = f"{source.scheme}://{source.location.strip('/')}"
    described = f"{uri}@{dmd.spec.model.revision}" if source.scheme == "hf" else uri
    key = content_hash(
        {
            "source": described,
            "storageClassName": storage,
            "accessMode": spec.access_mode,
            "sizeGiB": size,
        },
        CACHE_KEY_LENGTH,
    )
    name, namespace = dmd.name, dmd.namespace
    claim = f"{name}-weights-{key}"
    job = _job_name(name, key)
    expected = int(checkpoint_bytes(model, quantization))
    context_labels = {**labels, "app.kubernetes.io/component": "weight-cache", LABEL_CACHE_KEY: key}
    annotations = {SOURCE_ANNOTATION: described}
    pvc_owner = owner if spec.delete_policy == "Delete" else None
    fill_image, command, env, env_from = _fill_container(dmd, source, image, s3_image, gs_image)
    volumes: list[dict[str, Any]] = [
        {"name": "weights", "persistentVolumeClaim": {"claimName": claim}}
    ]
    mounts: list[dict[str, Any]] = [{"name": "weights", "mountPath": FILL_MOUNT}]
    if source.scheme == "oci":
        volumes.append(
            {
                "name": "source",
                "image": {"reference": source.location, "pullPolicy": "IfNotPresent"},
            }
        )
        mounts.append({"name": "source", "mountPath": SOURCE_MOUNT, "readOnly": True})
    seconds = fill_seconds(expected, source.scheme)
    pod_labels = {k: v for k, v in context_labels.items() if k != "distillery.dev/deployment"} | {
        LABEL_CACHE_OF: name
    }
    pvc = load_template(
        "weightcache-pvc.yaml.j2",
        {
            "claim": claim,
            "namespace": namespace,
            "labels": context_labels,
            "annotations": annotations,
            "owner": pvc_owner,
            "access_mode": spec.access_mode,
            "storage_class": storage,
            "size": f"{size}Gi",
        },
    )
    fill_job = load_template(
        "weightcache-job.yaml.j2",
        {
            "job": job,
            "namespace": namespace,
            "labels": context_labels,
            "annotations": annotations,
            "owner": owner,
            "backoff_limit": FILL_BACKOFF_LIMIT,
            # Four times the expected read, at least an hour: a slow mirror is not a hang.
            "deadline_seconds": max(3600, math.ceil(4 * seconds)),
            "pod_labels": pod_labels,
            "image": fill_image,
            "command": command,
            "env": env,
            "env_from": env_from,
            "mounts": mounts,
            "volumes": volumes,
        },
    )
    sub = source.hf_file if source.scheme == "hf" else None
    return WeightCache(
        claim=claim,
        job=job,
        source=described,
        expected_bytes=expected,
        fill_seconds=seconds,
        pvc=pvc,
        fill_job=fill_job,
        serving_source=ModelSource("pvc", f"{claim}/{sub or ''}"),
    )


def with_prepull(
    cache: WeightCache,
    dmd: DistilledModelDeployment,
    *,
    image: str,
    placement: Mapping[str, Any],
) -> WeightCache:
    """``cache`` with its node-local copy (``cache.mode: NodeLocal``): a DaemonSet on
    the nodes the serving pods may land on (their ``placement``: nodeSelector, affinity,
    tolerations) that copies the filled claim to the node and stays ready while the copy
    is complete. It requests no GPU, so it never takes one from a replica."""
    spec = dmd.spec.model.cache
    if spec.mode != "NodeLocal":
        return cache
    labels = dict(cache.pvc["metadata"]["labels"])
    key = labels[LABEL_CACHE_KEY]
    name = f"{dmd.name}-prepull-{key}"
    node_dir = f"{spec.node_path.rstrip('/')}/{dmd.namespace}/{cache.claim}"
    pod_labels = {LABEL_PREPULL_OF: dmd.name, LABEL_CACHE_KEY: key}
    prepull = load_template(
        "weightcache-prepull.yaml.j2",
        {
            "name": name,
            "namespace": dmd.namespace,
            "labels": {**labels, "app.kubernetes.io/component": "weight-prepull"},
            "annotations": cache.pvc["metadata"].get("annotations") or {},
            "owner": (cache.fill_job["metadata"].get("ownerReferences") or [None])[0],
            "selector": pod_labels,
            "pod_labels": pod_labels,
            "image": image,
            "command": [
                "distillery",
                "cache-fill",
                f"--source=file://{FILL_MOUNT}",
                f"--dest={LOCAL_MOUNT}",
                "--hold",
            ],
            "marker": f"{LOCAL_MOUNT}/{MARKER}",
            "claim": cache.claim,
            "node_dir": node_dir,
            "fill_mount": FILL_MOUNT,
            "local_mount": LOCAL_MOUNT,
            "placement": dict(placement),
        },
    )
    return replace(cache, prepull=prepull, node_dir=node_dir)


def marker_check(image: str, *, wait_seconds: int = 0) -> dict[str, Any]:
    """The serving pods' init container: no engine starts without the fill's marker.
    It runs the engine's own image (already pulled) and touches nothing. With
    ``wait_seconds`` (a node-local copy, which a node that joined late may still be
    making) it waits for the marker that long, then fails and is started again."""
    path = f"/models/pvc/{MARKER}"
    missing = f'echo "weight cache incomplete: {path} missing"; exit 1'
    script = f"test -f {path} || {{ {missing}; }}"
    if wait_seconds:
        script = (
            f"i=0; until test -f {path}; do "
            f"if [ $i -ge {wait_seconds} ]; then {missing}; fi; "
            f'[ $((i % 60)) -eq 0 ] && echo "waiting for the copy on this node: {path}"; '
            "sleep 5; i=$((i + 5)); done"
        )
    return {
        "name": "wait-for-weights",
        "image": image,
        "command": ["sh", "-c", script],
        "volumeMounts": [{"name": "model", "mountPath": "/models/pvc", "readOnly": True}],
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
    }
