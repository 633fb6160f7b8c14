"""The kube edge's requests: every kind the operator renders has a path, and each write
is the request the API server expects (no server: a recording client stands in for
the HTTP layer, which tests/integration/test_rest_server.py runs against the real one)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from distillery.kube.client import CUSTOM_CHILD_KINDS, KINDS, Kube, error_summary
from distillery.kube.rest import ApiError, Credentials, Login, Rest, resource_path

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "render"


def rendered_kinds() -> set[str]:
    kinds: set[str] = set()
    for path in GOLDEN.glob("*.yaml"):
        kinds |= {d["kind"] for d in yaml.safe_load_all(path.read_text()) if d}
    return kinds


class Recording(Rest):
    """Records each request instead of sending it; ``fail`` answers a path with an error."""

    def __init__(self) -> None:
        super().__init__(Login(lambda: Credentials(server="https://127.0.0.1:9")))
        self.sent: list[tuple[str, str, dict[str, Any]]] = []
        self.fail: dict[str, ApiError] = {}
        self.replies: dict[str, Any] = {}

    def _record(self, method: str, path: str, kwargs: dict[str, Any]) -> Any:
        self.sent.append((method, path, kwargs))
        if path in self.fail:
            raise self.fail[path]
        return self.replies.get(path, {})

    def send(self, method: str, path: str, **kwargs: Any) -> None:
        self._record(method, path, kwargs)

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._record(method, path, kwargs)


@pytest.fixture
def rest() -> Recording:
    return Recording()


def test_every_rendered_kind_is_applied_server_side_at_its_path(rest: Recording) -> None:
    kinds = rendered_kinds() | set(CUSTOM_CHILD_KINDS)
    assert {"Deployment", "Service", "LeaderWorkerSet", "PodMonitor"} <= kinds
    for kind in sorted(kinds):
        Kube(rest).apply({"kind": kind, "metadata": {"name": "n", "namespace": "ns"}})
    assert len(rest.sent) == len(kinds)
    for (method, path, kwargs), kind in zip(rest.sent, sorted(kinds), strict=True):
        group, version, plural = KINDS[kind]
        assert method == "PATCH"
        assert path == resource_path(group, version, plural, "ns", "n")
        assert kwargs["query"] == {"fieldManager": "distillery", "force": "true"}
        assert kwargs["content_type"] == "application/apply-patch+yaml"
    # Core kinds live under /api/v1, the others under their group.
    assert ("PATCH", "/api/v1/namespaces/ns/services/n") in {(m, p) for m, p, _ in rest.sent}
    assert any(p == "/apis/apps/v1/namespaces/ns/deployments/n" for _, p, _ in rest.sent)


def test_an_unknown_kind_is_refused_by_name(rest: Recording) -> None:
    with pytest.raises(ValueError, match="does not apply ConfigMap"):
        Kube(rest).apply({"kind": "ConfigMap", "metadata": {"name": "n", "namespace": "ns"}})
    with pytest.raises(ValueError, match="does not delete Secret"):
        Kube(rest).delete_child("ns", "n", "Secret")
    assert rest.sent == []


def test_scale_goes_through_the_subresource_as_each_field_manager(rest: Recording) -> None:
    kube = Kube(rest)
    kube.scale_dmd("ns", "m", 3)
    kube.scale_workload("ns", "m-canary", 1)
    kube.scale_workload("ns", "m", 2, kind="LeaderWorkerSet")
    (_, dmd, dmd_args), (_, deploy, deploy_args), (_, lws, _) = rest.sent
    assert dmd.endswith("/distilledmodeldeployments/m/scale")
    assert dmd_args["query"] == {"fieldManager": "distillery-autoscaler"}
    assert dmd_args["body"] == {"spec": {"replicas": 3}}
    assert deploy == "/apis/apps/v1/namespaces/ns/deployments/m-canary/scale"
    assert deploy_args["query"] == {"fieldManager": "distillery"}
    assert lws == "/apis/leaderworkerset.x-k8s.io/v1/namespaces/ns/leaderworkersets/m/scale"


def test_deleting_what_is_already_gone_is_fine_and_other_errors_raise(rest: Recording) -> None:
    kube = Kube(rest)
    path = "/apis/apps/v1/namespaces/ns/deployments/gone"
    rest.fail[path] = ApiError(404, "Not Found")
    kube.delete_child("ns", "gone", "Deployment")
    assert rest.sent[-1][2]["query"] == {"propagationPolicy": "Background"}
    rest.fail[path] = ApiError(403, "Forbidden")
    with pytest.raises(ApiError):
        kube.delete_child("ns", "gone", "Deployment")


def test_route_children_skip_kinds_the_cluster_does_not_serve(rest: Recording) -> None:
    kube = Kube(rest)
    for kind in CUSTOM_CHILD_KINDS:
        rest.fail[resource_path(*KINDS[kind], "ns")] = ApiError(404, "Not Found")
    rest.replies["/apis/apps/v1/namespaces/ns/deployments"] = {
        "items": [{"metadata": {"name": "picker"}}]
    }
    assert kube.list_route_children("ns", "r") == {("Deployment", "picker")}
    # A built-in kind that fails is an error, not an empty list.
    rest.fail["/api/v1/namespaces/ns/services"] = ApiError(404, "Not Found")
    with pytest.raises(ApiError):
        kube.list_route_children("ns", "r")


def test_events_name_their_object_and_are_capped(rest: Recording) -> None:
    dmd = {"kind": "DistilledModelDeployment", "metadata": {"name": "m", "namespace": "ns"}}
    Kube(rest).post_event(dmd, "Normal", "Scaled", "x" * 5000, "2026-12-07T00:00:00Z")
    method, path, kwargs = rest.sent[0]
    assert (method, path) == ("POST", "/api/v1/namespaces/ns/events")
    event = kwargs["body"]
    assert event["involvedObject"]["name"] == "m"
    assert "uid" not in event["involvedObject"]  # not sent as null
    assert len(event["message"]) == 1024
    assert event["metadata"]["generateName"] == "m."


def test_node_gpu_counts_take_the_largest_node_per_product(rest: Recording) -> None:
    def node(product: str, gpus: str) -> dict[str, Any]:
        return {
            "metadata": {"labels": {"nvidia.com/gpu.product": product}},
            "status": {"allocatable": {"nvidia.com/gpu": gpus}},
        }

    rest.replies["/api/v1/nodes"] = {
        "items": [node("H100", "8"), node("H100", "4"), node("L4", "x"), node("L4", "0")]
    }
    assert Kube(rest).node_gpu_counts() == {"H100": 8}


def test_error_summary_is_one_line_with_the_status_message() -> None:
    body = '{"kind":"Status","message":"quota exceeded","reason":"Forbidden"}'
    assert error_summary(ApiError(403, "Forbidden", body)) == "API 403 Forbidden: quota exceeded"
    assert error_summary(ApiError(500, "Internal Server Error", "<html>")) == (
        "API 500 Internal Server Error"
    )
    assert error_summary(ValueError("bad")) == "ValueError: bad"
