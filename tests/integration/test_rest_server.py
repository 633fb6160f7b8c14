"""The operator's own API client (distillery.kube.rest) against the real API server:
each way of logging in that operators meet (a client certificate, a pod's service
account, a token file refused then rotated, an exec plugin), the errors the server
gives, and the operator's writes landing as the server stores them."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from distillery.kube import ApiError, Kube, connect, unreachable_reason
from distillery.kube.client import error_summary
from distillery.kube.rest import Rest, login
from localcluster import Cluster

pytestmark = pytest.mark.cluster
REVIEW = "/apis/authentication.k8s.io/v1/selfsubjectreviews"


def who(rest: Rest) -> str:
    """The user name the API server authenticated the client as."""
    review = rest.json(
        "POST", REVIEW, body={"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    )
    return str(review["status"]["userInfo"]["username"])


def write_kubeconfig(
    path: Path, cluster: Cluster, user: dict[str, Any], ca: dict[str, Any] | None = None
) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "here",
                "clusters": [
                    {
                        "name": "local",
                        "cluster": {
                            "server": cluster.server,
                            **(ca or {"certificate-authority": str(cluster.ca_file)}),
                        },
                    }
                ],
                "users": [{"name": "me", "user": user}],
                "contexts": [{"name": "here", "context": {"cluster": "local", "user": "me"}}],
            }
        )
    )
    return path


def client_certificate(cluster: Cluster, tmp_path: Path, cn: str) -> tuple[str, str]:
    """A client certificate for ``cn`` in system:masters, signed by the cluster's CA."""
    pki = cluster.ca_file.parent
    key, csr, crt = tmp_path / "c.key", tmp_path / "c.csr", tmp_path / "c.crt"
    run = ["openssl"]
    subprocess.run(
        [*run, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
         "-subj", f"/O=system:masters/CN={cn}"],
        check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run(
        [*run, "x509", "-req", "-in", str(csr), "-CA", str(cluster.ca_file), "-CAkey",
         str(pki / "ca.key"), "-CAcreateserial", "-days", "1", "-out", str(crt)],
        check=True, capture_output=True,
    )  # fmt: skip
    return crt.read_text(), key.read_text()


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_a_client_certificate_from_inline_data(cluster: Cluster, tmp_path: Path) -> None:
    cert, key = client_certificate(cluster, tmp_path, "distillery-cert-test")
    path = write_kubeconfig(
        tmp_path / "config",
        cluster,
        {"client-certificate-data": b64(cert), "client-key-data": b64(key)},
        {"certificate-authority-data": b64(cluster.ca_file.read_text())},
    )
    assert who(connect(str(path))) == "distillery-cert-test"
    # No file of the key is left behind by loading it.
    assert not list(Path("/tmp").glob("distillery-tls-*"))


def test_a_pods_service_account(
    cluster: Cluster,
    api_client: client.ApiClient,
    namespace: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    core = client.CoreV1Api(api_client)
    core.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="operator"))
    )
    issued = core.create_namespaced_service_account_token(
        "operator", namespace, client.AuthenticationV1TokenRequest(spec={"audiences": []})
    )
    mounted = tmp_path / "serviceaccount"
    mounted.mkdir()
    (mounted / "token").write_text(str(issued.status.token))
    (mounted / "ca.crt").write_text(cluster.ca_file.read_text())
    (mounted / "namespace").write_text(namespace)
    host, port = cluster.server.removeprefix("https://").rsplit(":", 1)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", host)
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", port)
    rest = Rest(login(service_account=mounted))
    assert who(rest) == f"system:serviceaccount:{namespace}:operator"
    assert rest.login.current().namespace == namespace


def test_a_refused_token_file_is_read_again_once(cluster: Cluster, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("not-a-token")
    rest = connect(str(write_kubeconfig(tmp_path / "config", cluster, {"tokenFile": str(token)})))
    with pytest.raises(ApiError) as err:
        who(rest)
    assert err.value.status == 401
    # Rotated on disk (as a projected token is): the next 401 reads it and succeeds.
    token.write_text(cluster.token)
    assert who(rest) == "admin"


def test_an_exec_plugin(cluster: Cluster, tmp_path: Path) -> None:
    plugin = tmp_path / "plugin.py"
    credential = {"kind": "ExecCredential", "status": {"token": cluster.token}}
    plugin.write_text(f"import json\nprint(json.dumps({credential!r}))\n")
    user = {"exec": {"command": sys.executable, "args": [str(plugin)]}}
    assert who(connect(str(write_kubeconfig(tmp_path / "config", cluster, user)))) == "admin"


def test_errors_carry_the_servers_message(cluster: Cluster, namespace: str) -> None:
    kube = Kube(connect(str(cluster.kubeconfig)))
    assert kube.read_config_map_key(namespace, "absent", "key") is None
    broken = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "broken", "namespace": namespace},
        "spec": {"replicas": -1, "selector": {"matchLabels": {"a": "b"}}},
    }
    with pytest.raises(ApiError) as err:
        kube.apply(broken)
    assert err.value.status == 422
    assert "spec.replicas" in error_summary(err.value), error_summary(err.value)
    assert error_summary(err.value).startswith("API 422 Unprocessable Entity: ")


def test_writes_land_as_the_server_stores_them(
    cluster: Cluster, api_client: client.ApiClient, namespace: str
) -> None:
    kube = Kube(connect(str(cluster.kubeconfig), identity="write-test"))
    labels = {"app": "w"}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "w", "namespace": namespace, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "c", "image": "registry.invalid/x:1"}]},
            },
        },
    }
    kube.apply(deployment)
    kube.scale_workload(namespace, "w", 3)
    apps = client.AppsV1Api(api_client)
    stored = apps.read_namespaced_deployment("w", namespace)
    assert stored.spec.replicas == 3
    managers = {(f.manager, f.operation) for f in stored.metadata.managed_fields}
    assert ("distillery", "Apply") in managers
    dmd_like = {"kind": "Deployment", "metadata": {"name": "w", "namespace": namespace}}
    kube.post_event(dmd_like, "Normal", "Tested", "a message", "2026-12-07T00:00:00Z")
    events = client.CoreV1Api(api_client).list_namespaced_event(namespace).items
    assert [(e.reason, e.message) for e in events if e.reason == "Tested"] == [
        ("Tested", "a message")
    ]
    kube.delete_child(namespace, "w", "Deployment")
    kube.delete_child(namespace, "w", "Deployment")  # gone already: fine


def test_reads_of_nodes_and_discovery(cluster: Cluster) -> None:
    kube = Kube(connect(str(cluster.kubeconfig)))
    gpus = kube.node_gpu_counts()
    # The local cluster's inventory (hack/inventory.yaml): eight-GPU H100 nodes, and L4s.
    assert gpus["NVIDIA-H100-80GB-HBM3"] == 8
    assert "NVIDIA-L4" in gpus
    # Discovery: what the server serves, and not what it does not.
    assert kube._served("apps", "v1", "deployments")
    assert not kube._served("apps", "v1", "no-such-resources")
    assert not kube._served("no-such-group.example.com", "v1", "things")


def test_unreachable_reasons(cluster: Cluster, tmp_path: Path) -> None:
    assert unreachable_reason(str(cluster.kubeconfig)) is None
    refused = write_kubeconfig(tmp_path / "refused", cluster, {"token": "wrong"})
    assert "refused the credentials (401" in str(unreachable_reason(str(refused)))
    nowhere = tmp_path / "nowhere"
    nowhere.write_text(
        (tmp_path / "refused").read_text().replace(cluster.server, "https://127.0.0.1:9")
    )
    assert "cannot reach the API server at https://127.0.0.1:9" in str(
        unreachable_reason(str(nowhere), timeout=2)
    )
    assert "no Kubernetes credentials" in str(unreachable_reason(str(tmp_path / "absent")))
