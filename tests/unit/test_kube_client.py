"""The kube edge's table of kinds: every kind the operator renders is written through a
method the Kubernetes client has (no server: the methods are looked up, not called)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from kubernetes import client

from distillery.kube.client import CUSTOM_CHILD_KINDS, Kube

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "render"
TYPED = [
    "Deployment",
    "DaemonSet",
    "Service",
    "ServiceAccount",
    "PersistentVolumeClaim",
    "PodDisruptionBudget",
    "Job",
    "Role",
    "RoleBinding",
]


def rendered_kinds() -> set[str]:
    kinds: set[str] = set()
    for path in GOLDEN.glob("*.yaml"):
        kinds |= {d["kind"] for d in yaml.safe_load_all(path.read_text()) if d}
    return kinds


@pytest.fixture
def kube() -> Kube:
    return Kube(client.ApiClient())


@pytest.mark.parametrize("kind", TYPED)
@pytest.mark.parametrize("verb", ["patch", "delete", "list"])
def test_typed_kinds_have_their_client_methods(kube: Kube, kind: str, verb: str) -> None:
    method = kube._typed(kind, verb)
    assert callable(method)
    assert method.__name__.startswith(f"{verb}_namespaced_")


def test_every_rendered_kind_can_be_applied(kube: Kube, monkeypatch: pytest.MonkeyPatch) -> None:
    applied: list[tuple[str, ...]] = []

    class Reply:  # an unread reply: the edge only returns its connection
        def drain_conn(self) -> None: ...
        def release_conn(self) -> None: ...

    def record(*args: object, **kwargs: object) -> Reply:
        applied.append(tuple(str(a) for a in args[:4]))
        return Reply()

    for api in (kube.apps, kube.core, kube.policy, kube.batch, kube.rbac, kube.custom):
        for attr in dir(api):
            if attr.startswith("patch_namespaced_"):
                monkeypatch.setattr(api, attr, record)
    kinds = rendered_kinds() | set(CUSTOM_CHILD_KINDS)
    assert {"Deployment", "Service", "LeaderWorkerSet"} <= kinds
    for kind in sorted(kinds):
        kube.apply({"kind": kind, "metadata": {"name": "n", "namespace": "ns"}})
    assert len(applied) == len(kinds)


def test_an_unknown_kind_is_refused_by_name(kube: Kube) -> None:
    with pytest.raises(ValueError, match="does not apply ConfigMap"):
        kube.apply({"kind": "ConfigMap", "metadata": {"name": "n", "namespace": "ns"}})
    with pytest.raises(ValueError, match="does not delete Secret"):
        kube.delete_child("ns", "n", "Secret")
