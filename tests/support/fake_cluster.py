"""An in-memory cluster behind the controllers' seam (``kube.ClusterClient``).

It keeps what was applied, the DMD status written, events and ConfigMaps, records every
call in order, and fails a named call on demand, so the controllers' own logic (what
they remember, when they write, how they recover) is tested without an API server. The
integration tiers test the same controllers against a real one.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from distillery.api.merge_patch import apply_merge_patch
from distillery.reconcile.children import (
    DAEMONSET_COUNTS,
    OWNER_LABEL,
    WORKLOAD_COUNTS,
    child_key,
    child_state,
)
from distillery.render import WORKLOAD_KINDS
from distillery.render.routing import LABEL_ROUTE

WRITES = (
    "apply",
    "patch_dmd_status",
    "patch_route_status",
    "scale_dmd",
    "scale_workload",
    "delete_child",
    "remove_dmd_annotation",
    "post_event",
)


def observed(
    obj: Mapping[str, Any], ready: int | None = None, nodes: int | None = None
) -> dict[str, Any]:
    """An applied object as the API server shows it once its controller caught up: a
    Deployment or LeaderWorkerSet with its status (``ready`` ready replicas, all when
    None); with ``nodes``, a DaemonSet scheduled on that many nodes; other kinds as
    applied."""
    body = copy.deepcopy(dict(obj))
    daemonset = body["kind"] == "DaemonSet" and nodes is not None
    if body["kind"] in WORKLOAD_KINDS or daemonset:
        want = nodes if daemonset and nodes is not None else body["spec"]["replicas"]
        n = want if ready is None else ready
        counts = DAEMONSET_COUNTS if daemonset else WORKLOAD_COUNTS
        body["metadata"]["generation"] = 1
        figures = dict(zip(counts, (want, n, want, n), strict=True))
        body["status"] = {"observedGeneration": 1, **figures}
    return body


class FakeCluster:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}  # (kind, ns, name)
        self.status: dict[tuple[str, str], dict[str, Any]] = {}
        self.route_status: dict[tuple[str, str], dict[str, Any]] = {}
        self.replicas: dict[tuple[str, str], int] = {}
        self.events: list[tuple[str, str, str]] = []
        self.config_maps: dict[tuple[str, str], dict[str, str]] = {}
        self.gpus_per_node: dict[str, int] = {}
        self.logs: dict[tuple[str, str], str] = {}  # (namespace, pod) -> its log
        self._failures: dict[str, Exception] = {}
        self._times: dict[str, int] = {}

    def fail_next(self, method: str, error: Exception, times: int = 1) -> None:
        """The next ``times`` calls of ``method`` raise ``error``."""
        self._failures[method] = error
        self._times[method] = times

    def writes(self) -> list[tuple[str, str]]:
        return [c for c in self.calls if c[0] in WRITES]

    def _call(self, method: str, what: str) -> None:
        self.calls.append((method, what))
        error = self._failures.get(method)
        if error is not None:
            self._times[method] -= 1
            if self._times[method] <= 0:
                del self._failures[method]
            raise error

    # ---- ClusterClient ---------------------------------------------------------------

    def apply(self, obj: Mapping[str, Any]) -> None:
        meta = obj["metadata"]
        self._call("apply", f"{obj['kind']}/{meta['name']}")
        self.objects[(obj["kind"], meta["namespace"], meta["name"])] = copy.deepcopy(dict(obj))

    def patch_dmd_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        self._call("patch_dmd_status", name)
        # As the API server treats a merge patch: null deletes.
        current = self.status.get((namespace, name), {})
        self.status[(namespace, name)] = apply_merge_patch(current, copy.deepcopy(dict(status)))

    def patch_route_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        self._call("patch_route_status", name)
        current = self.route_status.get((namespace, name), {})
        self.route_status[(namespace, name)] = apply_merge_patch(
            current, copy.deepcopy(dict(status))
        )

    def scale_dmd(self, namespace: str, name: str, replicas: int) -> None:
        self._call("scale_dmd", f"{name}={replicas}")
        self.replicas[(namespace, name)] = replicas

    def scale_workload(
        self, namespace: str, name: str, replicas: int, kind: str = "Deployment"
    ) -> None:
        self._call("scale_workload", f"{name}={replicas}")
        self.objects[(kind, namespace, name)]["spec"]["replicas"] = replicas

    def delete_child(self, namespace: str, name: str, kind: str = "Deployment") -> None:
        self._call("delete_child", name)
        self.objects.pop((kind, namespace, name), None)

    def remove_dmd_annotation(self, namespace: str, name: str, key: str) -> None:
        self._call("remove_dmd_annotation", f"{name}:{key}")

    def post_event(
        self, dmd: Mapping[str, Any], type_: str, reason: str, message: str, now: str
    ) -> None:
        self._call("post_event", reason)
        self.events.append((type_, reason, message))

    def read_config_map_key(self, namespace: str, name: str, key: str) -> str | None:
        self._call("read_config_map_key", name)
        return self.config_maps.get((namespace, name), {}).get(key)

    def list_route_children(self, namespace: str, route: str) -> set[tuple[str, str]]:
        self._call("list_route_children", route)
        return {
            (kind, name)
            for (kind, ns, name), obj in self.objects.items()
            if ns == namespace and (obj["metadata"].get("labels") or {}).get(LABEL_ROUTE) == route
        }

    def node_gpu_counts(self) -> dict[str, int]:
        self._call("node_gpu_counts", "")
        return dict(self.gpus_per_node)

    def pod_log_tail(self, namespace: str, name: str, lines: int) -> str:
        self._call("pod_log_tail", name)
        return "\n".join(self.logs.get((namespace, name), "").splitlines()[-lines:])

    # ---- what a watch would show ------------------------------------------------------

    def children(self, namespace: str, owner: str, ready: bool = True) -> dict[str, Any]:
        """The owner's children as the operator's indices would hold them once the watch caught
        up: the applied objects, Deployments with every replica ``ready`` or none."""
        out = {}
        for (kind, ns, name), obj in self.objects.items():
            if ns != namespace or (obj["metadata"].get("labels") or {}).get(OWNER_LABEL) != owner:
                continue
            body = observed(obj, None if ready else 0)
            out[child_key(kind, name, owner)] = child_state(body)
        return out
