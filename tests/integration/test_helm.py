"""The Helm chart on a real control plane: lint, server-side dry run, install, upgrade
with a CRD change, uninstall, and least-privilege RBAC (kubectl auth can-i).

Runs on a cluster of its own: the chart owns the CRD here, while the rest of the suite
installs it with kubectl."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from localcluster import BIN_DIR, Cluster, _versions, start
from tests.integration.waits import POD_START, Bounds, wait_for

# helm --wait: the chart applied, then the operator's pod scheduled and Ready.
HELM_WAIT = f"{Bounds.within(10.0, POD_START):.0f}s"

pytestmark = pytest.mark.cluster
ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "distillery"
NS = "distillery-system"
SA = f"system:serviceaccount:{NS}:distillery"


@pytest.fixture(scope="module")
def helm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with start(state_dir=tmp_path_factory.mktemp("helm-cluster"), quiet=True) as c:
        # The prometheus-operator API, so RBAC checks on PodMonitors resolve the resource,
        # and the Gateway API's and its Inference Extension's CRDs (their releases'), for
        # canary routes and ReasoningRoutes.
        c.kubectl("apply", "-f", str(ROOT / "tests" / "data" / "podmonitor-crd.yaml"))
        c.install_inference_extension()
        yield c


def helm(cluster: Cluster, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(BIN_DIR / "helm"), *args],
        env=cluster.env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def can_i(cluster: Cluster, verb: str, resource: str, namespace: str | None = None) -> bool:
    resource, _, sub = resource.partition("/")
    args = ["auth", "can-i", verb, resource, f"--as={SA}"]
    if sub:
        args.append(f"--subresource={sub}")
    args += ["-n", namespace] if namespace else ["--all-namespaces"]
    out = cluster.kubectl(*args, check=False).strip()
    return out == "yes"


def template(*args: str) -> list[dict[str, Any]]:
    """``helm template`` with no cluster and no --kube-version, as a user runs it."""
    proc = subprocess.run(
        [str(BIN_DIR / "helm"), "template", "d", str(CHART), *args],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def test_lint_strict() -> None:
    proc = subprocess.run(
        [str(BIN_DIR / "helm"), "lint", "--strict", str(CHART)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_template_without_a_cluster_knows_its_kubernetes_version() -> None:
    """helm is built as its release is: without a cluster it assumes the Kubernetes
    version of its client libraries, not v1.20, so the chart's kubeVersion holds."""
    proc = subprocess.run(
        [str(BIN_DIR / "helm"), "version", "--template", "{{.Version}}"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert proc.stdout == _versions()["HELM_VERSION"]
    kinds = {d["kind"] for d in template()}
    assert {"Deployment", "CustomResourceDefinition", "ServiceAccount"} <= kinds


def test_values_shape_the_operator_pod() -> None:
    """ServiceAccount annotations (workload identity), security contexts from values
    (OpenShift assigns the user), and a parent chart's `global` accepted."""
    role = "arn:aws:iam::123456789012:role/distillery"
    docs = template(
        "--set-json", f'serviceAccount.annotations={{"eks.amazonaws.com/role-arn": "{role}"}}',
        "--set", "podSecurityContext.runAsUser=null",
        "--set", "podSecurityContext.runAsGroup=null",
        "--set", "securityContext.readOnlyRootFilesystem=true",
        "--set", "global.imageRegistry=registry.example",
    )  # fmt: skip
    sa = next(d for d in docs if d["kind"] == "ServiceAccount")
    assert sa["metadata"]["annotations"] == {"eks.amazonaws.com/role-arn": role}
    pod = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert pod["containers"][0]["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    # The defaults: a fixed non-root user, no annotations.
    docs = template()
    sa = next(d for d in docs if d["kind"] == "ServiceAccount")
    assert "annotations" not in sa["metadata"]
    pod = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == 65532
    # A misspelt key is refused by the schema, naming it.
    proc = subprocess.run(
        [str(BIN_DIR / "helm"), "template", "d", str(CHART), "--set", "serviceAcount.x=1"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and "serviceAcount" in proc.stderr, proc.stderr


def test_two_replicas_elect_a_leader() -> None:
    """replicaCount 2: a Lease decides which acts, a PDB keeps one through drains, the
    replicas prefer different nodes and roll one at a time; without leader election two
    replicas are refused, and so are timings that would let two act at once."""
    docs = template("--set", "replicaCount=2")
    dep = next(d for d in docs if d["kind"] == "Deployment")
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    pod = dep["spec"]["template"]["spec"]
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["DISTILLERY_LEADER_ELECTION"]["value"] == "true"
    assert env["DISTILLERY_LEADER_ELECTION_ID"]["value"] == "d-distillery-leader"
    assert env["DISTILLERY_IDENTITY"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    anti = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    pdb = next(d for d in docs if d["kind"] == "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    role = next(d for d in docs if d["kind"] == "Role" and "leader" in d["metadata"]["name"])
    named = next(r for r in role["rules"] if r.get("resourceNames"))
    assert named["resourceNames"] == ["d-distillery-leader"] and named["verbs"] == ["get", "update"]
    # One replica: still elected (a rolling update hands over at once), no PDB.
    docs = template()
    assert not [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    dep = next(d for d in docs if d["kind"] == "Deployment")
    assert dep["spec"]["strategy"]["type"] == "RollingUpdate"
    docs = template("--set", "leaderElection.enabled=false")
    dep = next(d for d in docs if d["kind"] == "Deployment")
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    assert not [d for d in docs if "leader" in d["metadata"]["name"]]
    for args, says in (
        (["--set", "replicaCount=2", "--set", "leaderElection.enabled=false"], "replicaCount > 1"),
        (["--set", "leaderElection.renewDeadlineSeconds=20"], "retryPeriodSeconds <"),
    ):
        proc = subprocess.run(
            [str(BIN_DIR / "helm"), "template", "d", str(CHART), *args],
            capture_output=True,
            text=True,
        )
        assert proc.returncode != 0 and says in proc.stderr, proc.stderr


def test_template_passes_server_dry_run(helm_cluster: Cluster) -> None:
    helm_cluster.kubectl("create", "namespace", "dryrun")
    for values in (
        [],
        ["--set", "watchNamespaces={team-a}", "--set", "metrics.serviceMonitor.enabled=false"],
    ):
        rendered = helm(
            helm_cluster,
            "template",
            "distillery",
            str(CHART),
            "-n",
            "dryrun",
            "--kube-version",
            _versions()["KUBERNETES_VERSION"],
            *values,
        ).stdout
        out = helm_cluster.kubectl(
            "apply", "--dry-run=server", "-f", "-", input=rendered, check=False
        )
        # Namespaced mode renders Roles into team-a, which does not exist here.
        if values:
            assert "team-a" in rendered
            continue
        assert "(server dry run)" in out and "error" not in out.lower(), out


def test_install_upgrade_uninstall_and_rbac(helm_cluster: Cluster, tmp_path: Path) -> None:
    c = helm_cluster
    helm(
        c,
        "install",
        "distillery",
        str(CHART),
        "-n",
        NS,
        "--create-namespace",
        "--set",
        "prometheus.url=http://prometheus.monitoring:9090",
        "--set-json",
        'gpuPrices={"nvidia-l40s": 1.25}',
        "--set",
        "weightCache.storageClassName=filestore-rwx",
        "--wait",
        "--timeout",
        HELM_WAIT,
    )
    dep = yaml.safe_load(c.kubectl("get", "deployment", "distillery", "-n", NS, "-o", "yaml"))
    assert dep["status"].get("readyReplicas") == 1
    pod = dep["spec"]["template"]["spec"]
    ctr = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert ctr["securityContext"]["readOnlyRootFilesystem"] is True
    assert ctr["securityContext"]["capabilities"]["drop"] == ["ALL"]
    env = {e["name"]: e.get("value") for e in ctr["env"]}
    assert env["DISTILLERY_PROMETHEUS_URL"] == "http://prometheus.monitoring:9090"
    # Weight caches: filled by the operator's own image, on the class the values name.
    assert env["DISTILLERY_IMAGE_CACHE_FILL"] == ctr["image"]
    assert env["DISTILLERY_CACHE_STORAGE_CLASS"] == "filestore-rwx"
    catalog = yaml.safe_load(
        c.kubectl(
            "get",
            "configmap",
            "distillery-catalog",
            "-n",
            NS,
            "-o",
            "jsonpath={.data.catalog\\.yaml}",
        )
    )
    assert {"name": "nvidia-l40s", "pricePerGpuHour": 1.25} in catalog["gpus"]
    # The CRD came with the chart and serves DMDs.
    c.kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/distilledmodeldeployments.distillery.dev",
    )

    # Least privilege: exactly what the operator uses.
    allowed = [
        ("watch", "distilledmodeldeployments.distillery.dev"),
        ("patch", "distilledmodeldeployments.distillery.dev/status"),
        ("patch", "distilledmodeldeployments.distillery.dev/scale"),
        ("patch", "deployments.apps"),
        ("create", "deployments.apps"),
        ("patch", "services"),
        ("patch", "poddisruptionbudgets.policy"),
        ("patch", "podmonitors.monitoring.coreos.com"),
        ("patch", "httproutes.gateway.networking.k8s.io"),
        # Rollouts: resize the stable track, retire a canary, consume a command.
        ("patch", "deployments.apps/scale"),
        ("delete", "deployments.apps"),
        # Multi-node replicas (LeaderWorkerSet groups), the same verbs.
        ("create", "leaderworkersets.leaderworkerset.x-k8s.io"),
        ("patch", "leaderworkersets.leaderworkerset.x-k8s.io/scale"),
        ("delete", "leaderworkersets.leaderworkerset.x-k8s.io"),
        ("patch", "distilledmodeldeployments.distillery.dev"),
        # Weight caches: the claim and the Job that fills it, deleted once retired.
        ("create", "persistentvolumeclaims"),
        ("delete", "persistentvolumeclaims"),
        ("create", "jobs.batch"),
        ("delete", "jobs.batch"),
        ("list", "pods"),
        ("get", "configmaps"),
        ("create", "events"),
        ("list", "nodes"),  # GPUs per node, so a plan never outgrows a node
        # ReasoningRoutes: read them, write their status, and render each tier's
        # InferencePool, objective and endpoint picker (its identity and namespaced Role);
        # delete: a tier the route no longer has.
        ("watch", "reasoningroutes.distillery.dev"),
        ("patch", "reasoningroutes.distillery.dev/status"),
        ("create", "inferencepools.inference.networking.k8s.io"),
        ("delete", "inferenceobjectives.inference.networking.x-k8s.io"),
        ("create", "serviceaccounts"),
        ("create", "roles.rbac.authorization.k8s.io"),
        ("create", "rolebindings.rbac.authorization.k8s.io"),
        ("delete", "services"),
        ("delete", "httproutes.gateway.networking.k8s.io"),
        # After a restart: the route's children, to prune tiers removed meanwhile.
        ("list", "serviceaccounts"),
        ("list", "rolebindings.rbac.authorization.k8s.io"),
    ]
    denied = [
        ("get", "secrets"),
        ("list", "secrets"),
        ("create", "pods/exec"),
        ("delete", "distilledmodeldeployments.distillery.dev"),
        ("create", "clusterroles.rbac.authorization.k8s.io"),
        ("get", "nodes"),
        ("patch", "nodes"),
        ("create", "pods"),
        ("patch", "configmaps"),
        ("create", "persistentvolumes"),
        ("patch", "reasoningroutes.distillery.dev"),
        ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
    ]

    # Leader election: its one Lease in the release namespace, no other.
    def may_update_lease(name: str, namespace: str) -> bool:
        out = c.kubectl(
            "auth", "can-i", "update", f"leases.coordination.k8s.io/{name}",
            f"--as={SA}", "-n", namespace, check=False,
        )  # fmt: skip
        return out.strip() == "yes"

    assert may_update_lease("distillery-leader", NS)
    assert not may_update_lease("kube-controller-manager", NS)
    assert not may_update_lease("distillery-leader", "default")
    for verb, res in allowed:
        assert can_i(c, verb, res, "default"), f"should allow {verb} {res}"
    for verb, res in denied:
        assert not can_i(c, verb, res, "default"), f"should deny {verb} {res}"

    # Upgrade with a CRD change (a new printer column): the CRD on the server follows.
    chart = tmp_path / "distillery"
    shutil.copytree(CHART, chart)
    crd_file = chart / "templates" / "crd.yaml"
    text = crd_file.read_text()
    text = text.replace(
        "    additionalPrinterColumns:\n",
        "    additionalPrinterColumns:\n    - name: Engine\n      type: string\n"
        "      jsonPath: .spec.serving.engine\n",
        1,
    )
    crd_file.write_text(text)
    helm(c, "upgrade", "distillery", str(chart), "-n", NS, "--wait", "--timeout", HELM_WAIT)
    cols = yaml.safe_load(
        c.kubectl("get", "crd", "distilledmodeldeployments.distillery.dev", "-o", "yaml")
    )["spec"]["versions"][0]["additionalPrinterColumns"]
    assert cols[0]["name"] == "Engine"

    # Uninstall removes the operator, keeps the CRD (and with it every DMD).
    helm(c, "uninstall", "distillery", "-n", NS, "--wait")
    wait_for(
        lambda: (
            "NotFound"
            in c.kubectl("get", "deployment", "distillery", "-n", NS, check=False) + _stderr(c, NS)
        ),
        "operator gone",
    )
    assert "distilledmodeldeployments" in c.kubectl("get", "crd")
    assert not can_i(c, "watch", "distilledmodeldeployments.distillery.dev", "default")


def _stderr(c: Cluster, ns: str) -> str:
    proc = subprocess.run(
        [str(BIN_DIR / "kubectl"), "get", "deployment", "distillery", "-n", ns],
        env=c.env(),
        capture_output=True,
        text=True,
    )
    return proc.stderr


def test_namespaced_mode_rbac(helm_cluster: Cluster) -> None:
    c = helm_cluster
    for ns in ("team-a", "team-b"):
        c.kubectl("create", "namespace", ns, check=False)
    helm(
        c,
        "install",
        "scoped",
        str(CHART),
        "-n",
        NS,
        "--create-namespace",
        "--set",
        "crds.enabled=false",
        "--set",
        "watchNamespaces={team-a}",
        "--wait",
        "--timeout",
        HELM_WAIT,
    )
    sa = f"system:serviceaccount:{NS}:scoped-distillery"

    def allowed(verb: str, res: str, ns: str) -> bool:
        return (
            c.kubectl("auth", "can-i", verb, res, f"--as={sa}", "-n", ns, check=False).strip()
            == "yes"
        )

    assert allowed("patch", "deployments.apps", "team-a")
    assert not allowed("patch", "deployments.apps", "team-b")
    assert not allowed("get", "secrets", "team-a")
    env = yaml.safe_load(
        c.kubectl("get", "deployment", "scoped-distillery", "-n", NS, "-o", "yaml")
    )["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "DISTILLERY_NAMESPACES", "value": "team-a"} in env
    helm(c, "uninstall", "scoped", "-n", NS, "--wait")


def test_alerts_fire_as_documented(tmp_path: Path) -> None:
    """The chart's alerts under `promtool test rules`: each fires on the series the
    operator exports, with the DMD's namespace and name."""
    proc = subprocess.run(
        [str(BIN_DIR / "helm"), "template", "d", str(CHART),
         "--set", "metrics.prometheusRule.enabled=true",
         "--show-only", "templates/prometheusrule.yaml"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    rule = yaml.safe_load(proc.stdout)
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    labels = {"namespace": "team-a", "name": "r1"}
    tests = {
        "rule_files": [str(rules)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {"series": 'distillery_budget_limited{namespace="team-a",name="r1"}',
                     "values": "0 1x40"},
                    {"series": 'distillery_budget_limited{namespace="team-a",name="ok"}',
                     "values": "0x40"},
                    {"series": 'distillery_stalled{namespace="team-a",name="r1"}',
                     "values": "1x20"},
                    # Two replicas: op-0 leads for 10 minutes and dies, op-1 never takes
                    # over; from minute 30 both claim to lead.
                    {"series": 'distillery_leader{job="d-distillery-metrics",pod="op-0"}',
                     "values": "1x10 stale _x18 1x20"},
                    {"series": 'distillery_leader{job="d-distillery-metrics",pod="op-1"}',
                     "values": "0x29 1x20"},
                ],
                "alert_rule_test": [
                    {"eval_time": "10m", "alertname": "DistilleryBudgetLimited", "exp_alerts": []},
                    {
                        "eval_time": "30m",
                        "alertname": "DistilleryBudgetLimited",
                        "exp_alerts": [
                            {
                                "exp_labels": {**labels, "severity": "info"},
                                "exp_annotations": {
                                    "summary": "DMD team-a/r1 is held by its budget "
                                    "(scaling.maxCostPerHour): the SLO may be missed."
                                },
                            }
                        ],
                    },
                    {"eval_time": "5m", "alertname": "DistilleryNoLeader", "exp_alerts": []},
                    {"eval_time": "5m", "alertname": "DistilleryTwoLeaders", "exp_alerts": []},
                    {
                        "eval_time": "15m",
                        "alertname": "DistilleryNoLeader",
                        "exp_alerts": [{"exp_labels": {"severity": "critical"}, "exp_annotations": {
                            "summary": "No distillery replica holds the leader Lease; DMDs "
                            "are neither reconciled nor autoscaled."}}],
                    },
                    {
                        "eval_time": "35m",
                        "alertname": "DistilleryTwoLeaders",
                        "exp_alerts": [{"exp_labels": {"severity": "critical"}, "exp_annotations": {
                            "summary": "More than one distillery replica says it leads; check "
                            "kubectl get lease in the release namespace."}}],
                    },
                    {
                        "eval_time": "15m",
                        "alertname": "DistilleryDeploymentStalled",
                        "exp_alerts": [
                            {
                                "exp_labels": {**labels, "severity": "warning"},
                                "exp_annotations": {
                                    "summary": "DMD team-a/r1 is Stalled: see kubectl describe dmd."
                                },
                            }
                        ],
                    },
                ],
            }
        ],
    }  # fmt: skip
    test_file = tmp_path / "tests.yaml"
    test_file.write_text(yaml.safe_dump(tests))
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: hack/install-deps.sh installs the prometheus package"
    out = subprocess.run(
        [promtool, "test", "rules", str(test_file)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
