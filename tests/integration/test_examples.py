"""Every Kubernetes manifest in examples/ is accepted by the real API server, and every
DistilledModelDeployment among them is reconciled to Ready by the operator (kwok makes
the pods Ready). Test fixtures under testdata/ and non-manifest files are skipped."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from kubernetes import client

from localcluster import Cluster
from tests.integration.operator_process import OperatorProcess
from tests.integration.waits import Dmds

pytestmark = pytest.mark.cluster
ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"


def manifests() -> list[Path]:
    out = []
    for path in sorted((ROOT / "examples").rglob("*.yaml")):
        if "testdata" in path.parts:
            continue
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        if docs and all(isinstance(d, dict) and "apiVersion" in d and "kind" in d for d in docs):
            out.append(path)
    return out


@pytest.mark.usefixtures("crd_installed")
def test_examples_apply_and_dmds_become_ready(
    cluster: Cluster,
    api_client: client.ApiClient,
    namespace: str,
    tmp_path: Path,
) -> None:
    cluster.kubectl("apply", "--server-side", "-f", str(DATA / "gitops-crds.yaml"))
    for crd in (
        "scaledobjects.keda.sh",
        "applications.argoproj.io",
        "helmreleases.helm.toolkit.fluxcd.io",
        "kustomizations.kustomize.toolkit.fluxcd.io",
        "helmrepositories.source.toolkit.fluxcd.io",
        "gitrepositories.source.toolkit.fluxcd.io",
    ):
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{crd}")
    for ns in ("argocd", "flux-system"):
        cluster.kubectl("create", "namespace", ns, check=False)
    # The llama.cpp example reads its GGUF file from a claim: a static volume for it.
    volume = yaml.safe_dump_all(
        [
            {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": f"gguf-{namespace}"},
                "spec": {
                    "capacity": {"storage": "10Gi"},
                    "accessModes": ["ReadOnlyMany"],
                    "storageClassName": "manual",
                    "hostPath": {"path": "/srv/gguf"},
                    "claimRef": {"namespace": namespace, "name": "gguf-models"},
                },
            },
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": "gguf-models"},
                "spec": {
                    "accessModes": ["ReadOnlyMany"],
                    "storageClassName": "manual",
                    "volumeName": f"gguf-{namespace}",
                    "resources": {"requests": {"storage": "10Gi"}},
                },
            },
        ]
    )
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=volume)
    paths = manifests()
    assert len(paths) >= 12
    dmds = []
    for path in paths:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        own_ns = {(d.get("metadata") or {}).get("namespace") for d in docs} - {None}
        target = str(own_ns.pop()) if own_ns else namespace
        out = cluster.kubectl("apply", "-n", target, "-f", str(path))
        assert "created" in out or "configured" in out, (path, out)
        dmds += [
            d["metadata"]["name"]
            for d in yaml.safe_load_all(path.read_text())
            if d and d.get("kind") == "DistilledModelDeployment"
        ]
    assert len(dmds) >= 9
    op = OperatorProcess(cluster, namespace, tmp_path / "op").start()
    try:
        waits = Dmds(api_client, namespace)
        for name in dmds:
            # All were applied at once: the last may wait for the others' reconciles.
            waits.wait_condition(name, "Ready", op.bounds.ready + op.bounds.reconcile)
    finally:
        op.stop()
    cluster.kubectl("delete", "pv", f"gguf-{namespace}", "--wait=false", check=False)
