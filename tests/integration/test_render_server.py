"""Every rendered manifest is accepted by the real API server (server-side dry run),
including the LeaderWorkerSet of a multi-node replica (the LWS CRD and webhooks of the
real controller the local cluster runs)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from distillery.api.types import DistilledModelDeployment
from distillery.catalog import load_catalog
from distillery.render import RenderOptions, manifests_yaml, render
from distillery.sizing import plan
from localcluster import Cluster
from tests.integration.waits import wait_for
from tests.render_cases import CASES

pytestmark = pytest.mark.cluster
DATA = Path(__file__).resolve().parents[1] / "data"
USER_TEMPLATE = """
spec:
  containers:
    - name: log-shipper
      image: busybox:1.36
      args: ["tail", "-F", "/tmp/engine.log"]
  affinity:
    podAntiAffinity:
      preferredDuringSchedulingIgnoredDuringExecution:
        - weight: 10
          podAffinityTerm:
            topologyKey: kubernetes.io/hostname
            labelSelector: {matchLabels: {"distillery.dev/deployment": "{{ dmd.name }}"}}
"""


@pytest.fixture(scope="module")
def podmonitor_api(cluster: Cluster) -> None:
    cluster.kubectl("apply", "--server-side", "-f", str(DATA / "podmonitor-crd.yaml"))
    wait_for(
        lambda: (
            "podmonitors"
            in cluster.kubectl("api-resources", "--api-group", "monitoring.coreos.com")
        ),
        "PodMonitor API in discovery",
    )


@pytest.mark.usefixtures("podmonitor_api")
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("with_template", [False, True], ids=["plain", "user-template"])
def test_rendered_manifests_pass_server_dry_run(
    cluster: Cluster, namespace: str, case: str, with_template: bool
) -> None:
    raw = dict(CASES[case])
    raw["metadata"] = {**raw["metadata"], "namespace": namespace}
    dmd = DistilledModelDeployment.model_validate(raw)
    rendered = render(
        dmd,
        plan(dmd.spec, load_catalog()),
        owner_uid="0000-uid",
        options=RenderOptions(pod_monitor=True),
        user_template=USER_TEMPLATE if with_template else None,
    )
    out = cluster.kubectl(
        "apply",
        "--server-side",
        "--field-manager=distillery",
        "--dry-run=server",
        "-o",
        "yaml",
        "-f",
        "-",
        input=manifests_yaml(rendered),
    )
    kinds = [d["kind"] for d in yaml.safe_load_all(out) if d]
    if kinds == ["List"]:
        kinds = [i["kind"] for i in yaml.safe_load(out)["items"]]
    # A multi-node placement is a LeaderWorkerSet, which the real LWS CRD and the LWS
    # controller's validating webhook accept.
    workload = (
        "LeaderWorkerSet" if plan(dmd.spec, load_catalog()).chosen.nodes > 1 else "Deployment"
    )
    # A weight cache adds its claim, the Job that fills it and, NodeLocal, the DaemonSet
    # that copies it to the nodes.
    cache = [o["kind"] for o in rendered.cache.objects()] if rendered.cache else []
    if "nodelocal" in case:
        assert cache == ["PersistentVolumeClaim", "Job", "DaemonSet"]
    want = [workload, "PodDisruptionBudget", "PodMonitor", "Service", *cache]
    assert sorted(kinds) == sorted(want)
