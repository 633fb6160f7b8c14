"""The Kubernetes edge: the API client (:mod:`.client`), the watches that fill the
in-memory indices (:mod:`.informer`, what they keep: :mod:`.watched`), the controllers
that carry out the pure decisions (:mod:`.reconcile_controller`,
:mod:`.autoscale_controller`, :mod:`.canary_controller`, :mod:`.route_controller`), the
retry schedule (:mod:`.retry`), the leader election (:mod:`.leader`) and the runtime
that ties them together (:mod:`.runtime`).
"""

from kubernetes.client.exceptions import ApiException

from distillery.kube.client import (
    AUTOSCALER_FIELD_MANAGER,
    ClusterClient,
    Kube,
    NodeCatalog,
    in_thread,
    new_api_client,
    unreachable_reason,
)

__all__ = [
    "AUTOSCALER_FIELD_MANAGER",
    "ApiException",
    "ClusterClient",
    "Kube",
    "NodeCatalog",
    "in_thread",
    "new_api_client",
    "unreachable_reason",
]
