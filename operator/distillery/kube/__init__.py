"""The Kubernetes edge: the HTTP client and credentials (:mod:`.rest`), the operator's
requests (:mod:`.client`), the watches that fill the
in-memory indices (:mod:`.informer`, what they keep: :mod:`.watched`), the controllers
that carry out the pure decisions (:mod:`.reconcile_controller`,
:mod:`.autoscale_controller`, :mod:`.canary_controller`, :mod:`.route_controller`), the
retry schedule (:mod:`.retry`), the leader election (:mod:`.leader`) and the runtime
that ties them together (:mod:`.runtime`).
"""

from distillery.kube.client import (
    AUTOSCALER_FIELD_MANAGER,
    ClusterClient,
    Kube,
    NodeCatalog,
    connect,
    in_thread,
    unreachable_reason,
)
from distillery.kube.rest import ApiError, CredentialsError

__all__ = [
    "AUTOSCALER_FIELD_MANAGER",
    "ApiError",
    "ClusterClient",
    "CredentialsError",
    "Kube",
    "NodeCatalog",
    "connect",
    "in_thread",
    "unreachable_reason",
]
