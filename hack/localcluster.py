#!/usr/bin/env python3
"""A real local Kubernetes control plane with fake GPU nodes, for tests and the demo.

Why this exists: the operator must be tested against the real kube-apiserver, scheduler
and controller-manager (admission, CRD validation, server-side apply, garbage collection
and scheduling are theirs, and a mock gets them wrong). There is no Docker here, so the
binaries are built from Go modules by ``hack/build-tools.sh`` and run as plain processes
bound to 127.0.0.1; kwok plays the kubelets, so GPU nodes cost nothing.

Start order matters: etcd -> kube-apiserver -> kube-controller-manager (removes the
``not-ready`` taint, runs Deployments and garbage collection) -> kube-scheduler -> kwok
(marks nodes Ready and scheduled pods Running/Ready). Then the GPU node inventory of
``hack/inventory.yaml`` is created, and the LeaderWorkerSet controller (multi-node
replicas) starts with its CRD and webhooks, from the module version in
``hack/versions.env``: its webhooks are served on 127.0.0.1 with a certificate of the
cluster's CA, as the apiserver would reach them through a Service in a real cluster.
Last, the fill runner (``hack/fillrunner.py``) provisions hostPath volumes for claims of
the default StorageClass and runs weight-cache fill pods for real, which kwok is told
to leave alone.

Ports are chosen free at start, so a cluster left running by ``make cluster`` never
collides with the one a test session starts. ``state.json`` in the state folder records
what runs where; ``stop`` ends every process group it lists and waits until they are gone.

Usage::

    python hack/localcluster.py up [--state-dir .cluster]
    python hack/localcluster.py down [--state-dir .cluster]
    python hack/localcluster.py status [--state-dir .cluster]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

import podnet

ROOT = Path(__file__).resolve().parent.parent
BIN_DIR = ROOT / ".cache" / "bin"
DEFAULT_STATE_DIR = ROOT / ".cluster"
DEFAULT_INVENTORY = ROOT / "hack" / "inventory.yaml"
COMPONENTS = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
    "lws-controller",
    "fill-runner",
)
# Components that are Python programs of this repository rather than built binaries.
PYTHON_COMPONENTS = {"fill-runner": ROOT / "hack" / "fillrunner.py"}
# Pods kwok must not complete on its own: the fill runner runs them (see fillrunner.py).
FILL_POD_LABEL = "distillery.dev/weight-cache-of"
# A NodeLocal cache's copy on a node: the fill runner runs it and reports it Ready.
PREPULL_POD_LABEL = "distillery.dev/weight-prepull-of"
FAKE_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
OPERATOR_USER = "distillery-operator"
WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})


# The default StorageClass: its claims get hostPath volumes from the fill runner.
LOCAL_STORAGE_CLASS: dict[str, Any] = {
    "apiVersion": "storage.k8s.io/v1",
    "kind": "StorageClass",
    "metadata": {
        "name": "distillery-local",
        "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
    },
    "provisioner": "distillery.dev/local-hostpath",
    "reclaimPolicy": "Delete",
    "volumeBindingMode": "Immediate",
}


class ClusterError(RuntimeError):
    """The local cluster could not start; the message carries the failing log tail."""


def _versions() -> dict[str, str]:
    out: dict[str, str] = {}
    for line in (ROOT / "hack" / "versions.env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            out[key] = value
    return out


# Ports for the cluster's components come from below the kernel's ephemeral range
# (32768-60999 by default): a port is chosen at start and bound seconds later, and any
# process binding port 0 meanwhile (a test's HTTP server, an outgoing connection) takes
# ports from the ephemeral range, so it cannot take one of these first.
PORT_RANGE = (20000, 32000)


def free_port() -> int:
    """A port nothing listens on, outside the ephemeral range (see PORT_RANGE)."""
    for _ in range(200):
        port = random.randint(*PORT_RANGE)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise ClusterError(f"no free port in {PORT_RANGE}")


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _gomodcache() -> Path:
    out = subprocess.run(["go", "env", "GOMODCACHE"], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip())


def kwok_stage_files(state_dir: Path) -> list[Path]:
    """The stage set kwok's own 'fast' kustomization lists, read from the module cache,
    with two changes: a weight cache's fill pod is not completed by kwok (the fill runner
    runs it and reports how it ended), and a node-local copy's pod is not made ready by
    kwok (the fill runner runs the copy and reports it ready once complete)."""
    version = _versions()["KWOK_VERSION"]
    base = _gomodcache() / f"sigs.k8s.io/kwok@{version}" / "kustomize" / "stage"
    if not base.is_dir():
        raise ClusterError(f"kwok stages not found at {base}: run hack/build-tools.sh kwok")
    files = [base / "node" / "fast" / "node-initialize.yaml"]
    files += sorted((base / "node" / "heartbeat-with-lease").glob("*.yaml"))
    files += sorted(p for p in (base / "pod" / "fast").glob("pod-*.yaml"))
    files = [f for f in files if f.name != "kustomization.yaml"]
    out = []
    for f in files:
        left_to_runner = {"pod-complete.yaml": FILL_POD_LABEL, "pod-ready.yaml": PREPULL_POD_LABEL}
        if f.name in left_to_runner:
            stage = yaml.safe_load(f.read_text())
            stage["spec"]["selector"]["matchExpressions"].append(
                {"key": f'.metadata.labels["{left_to_runner[f.name]}"]', "operator": "DoesNotExist"}
            )
            f = state_dir / f"kwok-{f.name}"
            f.write_text(yaml.safe_dump(stage))
        out.append(f)
    return out


def lws_module_dir() -> Path:
    """The pinned LeaderWorkerSet module (its CRD and webhook manifests), from the cache."""
    version = _versions()["LWS_VERSION"]
    base = _gomodcache() / f"sigs.k8s.io/lws@{version}"
    if not base.is_dir():
        raise ClusterError(f"LeaderWorkerSet {version} not found at {base}: run make tools")
    return base


def _module_files(module: str, version_key: str, files: list[str]) -> list[Path]:
    base = _gomodcache() / f"{module}@{_versions()[version_key]}"
    found = [base / f for f in files]
    missing = [str(f) for f in found if not f.is_file()]
    if missing:
        raise ClusterError(f"not found: {', '.join(missing)}: run hack/build-tools.sh")
    return found


def gateway_api_crd_files() -> list[Path]:
    """The Gateway API's standard CRDs, from the pinned module in the Go module cache."""
    standard = "config/crd/standard/gateway.networking.k8s.io_"
    kinds = ("gatewayclasses", "gateways", "grpcroutes", "httproutes", "referencegrants")
    return _module_files(
        "sigs.k8s.io/gateway-api", "GATEWAY_API_VERSION", [f"{standard}{k}.yaml" for k in kinds]
    )


def inference_extension_crd_files() -> list[Path]:
    """The inference extension's CRDs (InferencePool v1, InferenceObjective), from the
    pinned module in the Go module cache."""
    return _module_files(
        "sigs.k8s.io/gateway-api-inference-extension",
        "GIE_VERSION",
        [
            "config/crd/bases/inference.networking.k8s.io_inferencepools.yaml",
            "config/crd/bases/inference.networking.x-k8s.io_inferenceobjectives.yaml",
        ],
    )


def lws_webhooks(base: Path, port: int, ca_bundle: str) -> list[dict[str, Any]]:
    """LWS's webhook configurations as its release ships them (pod webhooks only for
    pods of a LeaderWorkerSet), served at https://127.0.0.1:``port``."""
    docs = [
        d for d in yaml.safe_load_all((base / "config/webhook/manifests.yaml").read_text()) if d
    ]
    for doc in docs:
        doc["metadata"]["name"] = "lws-" + doc["metadata"]["name"]
        for hook in doc["webhooks"]:
            path = hook["clientConfig"]["service"]["path"]
            hook["clientConfig"] = {"url": f"https://127.0.0.1:{port}{path}", "caBundle": ca_bundle}
            if hook["name"] in ("mpod.kb.io", "vpod.kb.io"):
                hook["objectSelector"] = {
                    "matchExpressions": [
                        {"key": "leaderworkerset.sigs.k8s.io/name", "operator": "Exists"}
                    ]
                }
            hook["timeoutSeconds"] = 10
    return docs


def operator_argv(kubeconfig: str | Path, namespace: str, *flags: str) -> list[str]:
    """`distillery run` with ``kubeconfig``, watching ``namespace``, metrics and health
    on free ports: how the demo and the integration tests start the operator."""
    return [
        sys.executable, "-m", "distillery.cli", "run",
        "--namespace", namespace,
        "--kubeconfig", str(kubeconfig),
        "--metrics-port", "0",
        "--health-port", "0",
        *flags,
    ]  # fmt: skip


def operator_env(**extra: str) -> dict[str, str]:
    """This process's environment without its ``DISTILLERY_`` settings (the operator
    under test gets only the ones given), with the operator image's allocator setting."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTILLERY_")}
    # As the operator image sets it: fewer malloc arenas, far less RSS with threads.
    env["MALLOC_ARENA_MAX"] = "2"
    return {**env, **extra}


def fleet_argv(
    kubeconfig: str | Path,
    namespace: str,
    sd_file: Path,
    port: int,
    time_scale: float,
    netns: str | None = None,
) -> list[str]:
    """The emulated fleet (hack/fleet.py): pods of ``namespace`` as engines, their
    scrape targets in ``sd_file``, the front door on ``port``; with ``netns`` (the
    cluster's pod network), each pod listens on its own address."""
    return [
        sys.executable, str(ROOT / "hack" / "fleet.py"),
        "--kubeconfig", str(kubeconfig),
        "--namespace", namespace,
        "--sd-file", str(sd_file),
        "--port", str(port),
        "--time-scale", str(time_scale),
        *(["--netns", netns] if netns else []),
    ]  # fmt: skip


def background(
    argv: list[str], log: Path, *, append: bool = False, **popen: Any
) -> subprocess.Popen[bytes]:
    """Start ``argv`` with no standard input, its output and errors in ``log``."""
    with open(log, "ab" if append else "wb") as out:
        return subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **popen
        )


def terminate(proc: subprocess.Popen[bytes] | None, grace: float = 20.0) -> None:
    """Stop a process started with :func:`background`: SIGTERM, SIGKILL if it is still
    running after ``grace`` seconds; reaped either way."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


@dataclass
class Cluster:
    """A running local cluster: where it listens and how to reach it."""

    state_dir: Path
    server: str
    token: str
    ports: dict[str, int]
    pids: dict[str, int] = field(default_factory=dict)
    # The pod network's namespace (podnet), or None where pods answer on loopback ports.
    pod_network: podnet.PodNetwork | None = None
    pod_network_note: str = ""  # what podnet.setup said: the network, or why none
    # Handles of the processes this Python process started (none after load()); kept so
    # they are reaped, not garbage-collected while running.
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict, repr=False)

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def ca_file(self) -> Path:
        return self.state_dir / "pki" / "ca.crt"

    def env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    def api(self, method: str, path: str, body: Any = None, timeout: float = 10.0) -> Any:
        return _api_call(self.server, self.token, self.ca_file, method, path, body, timeout)

    def kubectl(self, *args: str, check: bool = True, input: str | None = None) -> str:
        proc = subprocess.run(
            [str(BIN_DIR / "kubectl"), *args],
            env=self.env(),
            capture_output=True,
            text=True,
            input=input,
            timeout=120,
        )
        if check and proc.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc.stdout

    def install_crds(self) -> None:
        """Apply the generated CRDs (crds/) as ``make install`` does, and wait until the
        API server serves them and discovery lists them."""
        self.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
        self._wait_served("distillery.dev", ["distilledmodeldeployments", "reasoningroutes"])

    def install_gateway_api(self) -> None:
        """The Gateway API's standard CRDs as its release ships them (from the pinned
        module), served and discoverable."""
        for f in gateway_api_crd_files():
            self.kubectl("apply", "--server-side", "-f", str(f))
        self._wait_served("gateway.networking.k8s.io", ["httproutes", "gateways"])

    def install_inference_extension(self) -> None:
        """The Gateway API's CRDs and the Gateway API Inference Extension's (InferencePool
        v1, InferenceObjective), as their releases ship them, served and discoverable."""
        self.install_gateway_api()
        for f in inference_extension_crd_files():
            self.kubectl("apply", "--server-side", "-f", str(f))
        self._wait_served("inference.networking.k8s.io", ["inferencepools"])
        self._wait_served("inference.networking.x-k8s.io", ["inferenceobjectives"])

    def _wait_served(self, group: str, plurals: list[str]) -> None:
        for plural in plurals:
            self.kubectl(
                "wait", "--for=condition=Established", "--timeout=60s", f"crd/{plural}.{group}"
            )
        deadline = time.monotonic() + 60
        while True:
            listed = self.kubectl("api-resources", "--api-group", group, "-o", "name", check=False)
            missing = [p for p in plurals if f"{p}.{group}" not in listed.split()]
            if not missing:
                return
            if time.monotonic() > deadline:
                raise ClusterError(f"{', '.join(missing)} ({group}) not in discovery after 60 s")
            time.sleep(0.25)

    @property
    def operator_kubeconfig(self) -> Path:
        """Credentials of the operator's own user, whose requests are audited."""
        return self.state_dir / "operator.kubeconfig"

    def operator_writes(
        self, namespace: str | None = None, agent: str | None = None
    ) -> list[dict[str, Any]]:
        """The operator's write requests so far, from the audit log; with ``agent``, only
        those whose user agent contains it (an instance's identity)."""
        return self.operator_requests(namespace, agent, WRITE_VERBS)

    def operator_requests(
        self,
        namespace: str | None = None,
        agent: str | None = None,
        verbs: Collection[str] = (),
    ) -> list[dict[str, Any]]:
        """The operator's requests so far with one of ``verbs`` (all without), from the
        audit log; with ``agent``, only those whose user agent contains it."""
        out: list[dict[str, Any]] = []
        log = self.state_dir / "logs" / "audit.log"
        if not log.exists():
            return out
        for line in log.read_text().splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("user", {}).get("username") != OPERATOR_USER:
                continue
            if verbs and event.get("verb") not in verbs:
                continue
            ref = event.get("objectRef", {})
            if namespace is not None and ref.get("namespace") != namespace:
                continue
            if agent is not None and agent not in event.get("userAgent", ""):
                continue
            out.append(event)
        return out

    def kill_component(self, name: str) -> None:
        """SIGKILL one component (a crash, not a shutdown) and wait until it is gone."""
        pid = self.pids[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        proc = self.procs.get(name)
        if proc is not None:
            proc.wait(timeout=20)
        deadline = time.monotonic() + 20
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)

    def start_component(self, name: str, timeout: float = 120.0) -> None:
        """Start a killed component again with the same arguments; wait until healthy."""
        args = json.loads((self.state_dir / "logs" / f"{name}.args.json").read_text())
        proc = _spawn(self.state_dir, name, args)
        self.procs[name] = proc
        self.pids[name] = proc.pid
        self.save()
        log = self.state_dir / "logs" / f"{name}.log"
        if name == "kube-apiserver":
            _wait(name, lambda: self.api("GET", "/readyz") == "ok", proc, log, timeout)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        stop(self.state_dir)
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        self.procs.clear()

    def save(self) -> None:
        state = {
            "server": self.server,
            "token": self.token,
            "ports": self.ports,
            "pids": self.pids,
            "podNetwork": asdict(self.pod_network) if self.pod_network else None,
            "podNetworkNote": self.pod_network_note,
        }
        (self.state_dir / "state.json").write_text(json.dumps(state, indent=2))

    @classmethod
    def load(cls, state_dir: Path) -> Cluster:
        state = json.loads((state_dir / "state.json").read_text())
        net = state.get("podNetwork")
        return cls(
            state_dir,
            state["server"],
            state["token"],
            state["ports"],
            state["pids"],
            podnet.PodNetwork(**net) if net else None,
            state.get("podNetworkNote", ""),
        )

    @property
    def pod_netns(self) -> str | None:
        """The network namespace pods' addresses live in, for the emulated fleet."""
        return self.pod_network.netns if self.pod_network else None


def _api_call(
    server: str, token: str, ca: Path, method: str, path: str, body: Any, timeout: float
) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(server + path, data=data, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        ctype = "application/merge-patch+json" if method == "PATCH" else "application/json"
        req.add_header("Content-Type", ctype)
    ctx = ssl.create_default_context(cafile=str(ca))
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=timeout) as resp:
            raw = resp.read()
            ctype = resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:500]
        exc.close()
        raise ClusterError(f"{method} {path}: HTTP {exc.code}: {detail}") from None
    return json.loads(raw) if "json" in ctype else raw.decode()


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _make_pki(pki: Path) -> None:
    """A CA, the apiserver's serving certificate and the service-account signing key."""
    pki.mkdir(parents=True, exist_ok=True)
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "3650",
        "-keyout",
        str(pki / "ca.key"),
        "-out",
        str(pki / "ca.crt"),
        "-subj",
        "/CN=distillery-local-ca",
    )
    ext = pki / "apiserver.ext"
    ext.write_text(
        "subjectAltName=IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,"
        "DNS:kubernetes.default,DNS:kubernetes.default.svc\n"
        "extendedKeyUsage=serverAuth\n"
    )
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        str(pki / "apiserver.key"),
        "-out",
        str(pki / "apiserver.csr"),
        "-subj",
        "/CN=kube-apiserver",
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        str(pki / "apiserver.csr"),
        "-CA",
        str(pki / "ca.crt"),
        "-CAkey",
        str(pki / "ca.key"),
        "-CAcreateserial",
        "-days",
        "3650",
        "-out",
        str(pki / "apiserver.crt"),
        "-extfile",
        str(ext),
    )
    # The LeaderWorkerSet controller's webhook server, reached by the apiserver at 127.0.0.1.
    lws = pki / "lws"
    lws.mkdir()
    (lws / "ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
    )
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes",
        "-keyout", str(lws / "tls.key"), "-out", str(lws / "tls.csr"), "-subj", "/CN=lws-webhook",
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", str(lws / "tls.csr"), "-CA", str(pki / "ca.crt"),
        "-CAkey", str(pki / "ca.key"), "-CAcreateserial", "-days", "3650",
        "-out", str(lws / "tls.crt"), "-extfile", str(lws / "ext"),
    )  # fmt: skip
    _openssl("genrsa", "-out", str(pki / "sa.key"), "2048")
    _openssl("rsa", "-in", str(pki / "sa.key"), "-pubout", "-out", str(pki / "sa.pub"))


def _write_kubeconfig(path: Path, server: str, ca: Path, user: str, token: str) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "distillery-local",
                "cluster": {"server": server, "certificate-authority": str(ca)},
            }
        ],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [
            {"name": "distillery-local", "context": {"cluster": "distillery-local", "user": user}}
        ],
        "current-context": "distillery-local",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _spawn(state_dir: Path, name: str, args: list[str]) -> subprocess.Popen[bytes]:
    script = PYTHON_COMPONENTS.get(name)
    binary = BIN_DIR / name
    if script is None and not binary.exists():
        raise ClusterError(f"{binary} is missing: run hack/build-tools.sh first")
    argv0 = [sys.executable, str(script)] if script else [str(binary)]
    # Remembered so a fault test can restart the component as it was.
    (state_dir / "logs" / f"{name}.args.json").write_text(json.dumps(args))
    # A new session per component: `make cluster` exits and leaves them running, and
    # stop() can end each one with its whole process group.
    log = state_dir / "logs" / f"{name}.log"
    return background([*argv0, *args], log, append=True, start_new_session=True)


def _wait(
    what: str,
    check: Callable[[], Any],
    proc: subprocess.Popen[bytes],
    log: Path,
    timeout: float = 120.0,
) -> None:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ClusterError(f"{what} exited with {proc.returncode}; log tail:\n{_tail(log)}")
        try:
            if check():
                return
        except Exception as exc:  # noqa: BLE001 - any failure means "not yet"
            last_error = exc
        time.sleep(0.25)
    raise ClusterError(
        f"{what} not healthy after {timeout:.0f}s ({last_error}); log tail:\n{_tail(log)}"
    )


def _https_ok(port: int, path: str = "/healthz") -> bool:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(f"https://127.0.0.1:{port}{path}", context=ctx, timeout=2) as r:
            return bool(r.status == 200)
    except urllib.error.HTTPError as exc:
        exc.close()
        return False
    except urllib.error.URLError:
        return False


def node_manifests(inventory: dict[str, Any]) -> list[dict[str, Any]]:
    """Expand the inventory's pools into Node objects kwok will manage."""
    nodes: list[dict[str, Any]] = []
    for pool in inventory["pools"]:
        for i in range(int(pool.get("count", 1))):
            name = f"{pool['name']}-{i}"
            labels = {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
                "distillery.dev/pool": pool["name"],
                **pool.get("labels", {}),
            }
            capacity = {
                "cpu": str(pool.get("cpu", 32)),
                "memory": pool.get("memory", "256Gi"),
                "pods": str(pool.get("pods", 110)),
            }
            taints: list[dict[str, str]] = list(pool.get("taints", []))
            gpus = int(pool.get("gpus", 0))
            if gpus:
                capacity["nvidia.com/gpu"] = str(gpus)
                labels.update(
                    {
                        "nvidia.com/gpu.product": pool["gpuProduct"],
                        "nvidia.com/gpu.count": str(gpus),
                        "nvidia.com/gpu.memory": str(pool["gpuMemoryMiB"]),
                        "nvidia.com/gpu.present": "true",
                    }
                )
                taints.append({"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"})
            nodes.append(
                {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {
                        "name": name,
                        "labels": labels,
                        "annotations": {FAKE_NODE_ANNOTATION[0]: FAKE_NODE_ANNOTATION[1]},
                    },
                    "spec": {"taints": taints},
                    "status": {"capacity": capacity, "allocatable": dict(capacity)},
                }
            )
    return nodes


def start(
    state_dir: Path = DEFAULT_STATE_DIR,
    inventory_file: Path = DEFAULT_INVENTORY,
    quiet: bool = False,
) -> Cluster:
    """Start a fresh cluster in ``state_dir`` (wiped first) and return it once healthy."""
    if (state_dir / "state.json").exists():
        stop(state_dir)
    if state_dir.exists():
        subprocess.run(["rm", "-rf", str(state_dir)], check=True)
    (state_dir / "logs").mkdir(parents=True)
    pki = state_dir / "pki"
    _make_pki(pki)
    admin_token = os.urandom(16).hex()
    cm_token, sched_token, kwok_token, op_token, lws_token = (
        os.urandom(16).hex() for _ in range(5)
    )
    (pki / "tokens.csv").write_text(
        f'{admin_token},admin,admin,"system:masters"\n'
        f"{cm_token},system:kube-controller-manager,system:kube-controller-manager\n"
        f"{sched_token},system:kube-scheduler,system:kube-scheduler\n"
        f'{kwok_token},kwok,kwok,"system:masters"\n'
        f'{op_token},{OPERATOR_USER},{OPERATOR_USER},"system:masters"\n'
        f'{lws_token},lws-controller,lws-controller,"system:masters"\n'
    )
    # Audit only the operator's requests: tests count its writes from this log.
    # LOCALCLUSTER_AUDIT_LEVEL=Request also records what each write sent (to read what
    # a burst's patches say); Metadata by default, which is all the tests need.
    level = os.environ.get("LOCALCLUSTER_AUDIT_LEVEL", "Metadata")
    if level not in ("Metadata", "Request", "RequestResponse"):
        raise SystemExit(
            f"LOCALCLUSTER_AUDIT_LEVEL={level!r}: use Metadata, Request or RequestResponse"
        )
    (pki / "audit-policy.yaml").write_text(
        "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\n"
        f"rules:\n  - level: {level}\n    users: [{OPERATOR_USER}]\n  - level: None\n"
    )
    (pki / "tokens.csv").chmod(0o600)
    ports = {
        "etcd": free_port(),
        "etcd-peer": free_port(),
        "apiserver": free_port(),
        "controller-manager": free_port(),
        "scheduler": free_port(),
        "kwok": free_port(),
        "lws-webhook": free_port(),
        "lws-health": free_port(),
    }
    server = f"https://127.0.0.1:{ports['apiserver']}"
    cluster = Cluster(state_dir, server, admin_token, ports)
    _write_kubeconfig(cluster.kubeconfig, server, pki / "ca.crt", "admin", admin_token)
    for name, tok in (
        ("operator", op_token),
        ("controller-manager", cm_token),
        ("scheduler", sched_token),
        ("kwok", kwok_token),
        ("lws-controller", lws_token),
    ):
        _write_kubeconfig(state_dir / f"{name}.kubeconfig", server, pki / "ca.crt", name, tok)
    logs = state_dir / "logs"

    def say(msg: str) -> None:
        if not quiet:
            print(f"[cluster] {msg}", flush=True)

    t0 = time.monotonic()
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        procs["etcd"] = _spawn(
            state_dir,
            "etcd",
            [
                "--name=distillery-local",
                f"--data-dir={state_dir / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{ports['etcd']}",
                f"--advertise-client-urls=http://127.0.0.1:{ports['etcd']}",
                f"--listen-peer-urls=http://127.0.0.1:{ports['etcd-peer']}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{ports['etcd-peer']}",
                f"--initial-cluster=distillery-local=http://127.0.0.1:{ports['etcd-peer']}",
                "--unsafe-no-fsync",
                "--quota-backend-bytes=4294967296",
                "--log-level=warn",
            ],
        )
        cluster.pids["etcd"] = procs["etcd"].pid
        cluster.save()
        _wait("etcd", lambda: _port_open(ports["etcd"]), procs["etcd"], logs / "etcd.log")
        say(f"etcd up ({time.monotonic() - t0:.1f}s)")
        procs["kube-apiserver"] = _spawn(
            state_dir,
            "kube-apiserver",
            [
                f"--etcd-servers=http://127.0.0.1:{ports['etcd']}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={ports['apiserver']}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                f"--token-auth-file={pki / 'tokens.csv'}",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                "--authorization-mode=Node,RBAC",
                "--service-cluster-ip-range=10.96.0.0/16",
                "--allow-privileged=true",
                "--profiling=false",
                f"--cert-dir={pki}",
                f"--audit-policy-file={pki / 'audit-policy.yaml'}",
                f"--audit-log-path={state_dir / 'logs' / 'audit.log'}",
                "--audit-log-maxsize=200",
            ],
        )
        cluster.pids["kube-apiserver"] = procs["kube-apiserver"].pid
        cluster.save()
        _wait(
            "kube-apiserver",
            lambda: cluster.api("GET", "/readyz") == "ok",
            procs["kube-apiserver"],
            logs / "kube-apiserver.log",
        )
        say(f"kube-apiserver up ({time.monotonic() - t0:.1f}s)")
        procs["kube-controller-manager"] = _spawn(
            state_dir,
            "kube-controller-manager",
            [
                f"--kubeconfig={state_dir / 'controller-manager.kubeconfig'}",
                "--bind-address=127.0.0.1",
                f"--secure-port={ports['controller-manager']}",
                "--leader-elect=false",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                "--controllers=*,-nodeipam,-service-lb-controller,-cloud-node-lifecycle",
                "--node-monitor-grace-period=60s",
                "--concurrent-gc-syncs=10",
                "--authentication-skip-lookup=true",
                f"--authentication-kubeconfig={state_dir / 'controller-manager.kubeconfig'}",
                f"--authorization-kubeconfig={state_dir / 'controller-manager.kubeconfig'}",
                "--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics",
            ],
        )
        cluster.pids["kube-controller-manager"] = procs["kube-controller-manager"].pid
        procs["kube-scheduler"] = _spawn(
            state_dir,
            "kube-scheduler",
            [
                f"--kubeconfig={state_dir / 'scheduler.kubeconfig'}",
                "--bind-address=127.0.0.1",
                f"--secure-port={ports['scheduler']}",
                "--leader-elect=false",
                f"--authentication-kubeconfig={state_dir / 'scheduler.kubeconfig'}",
                f"--authorization-kubeconfig={state_dir / 'scheduler.kubeconfig'}",
                "--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics",
            ],
        )
        cluster.pids["kube-scheduler"] = procs["kube-scheduler"].pid
        stage_args = [f"--config={f}" for f in kwok_stage_files(state_dir)]
        cluster.pod_network, cluster.pod_network_note = podnet.setup(state_dir, _alive)
        cluster.save()
        say(cluster.pod_network_note)
        pod_cidr, node_ip = "10.0.0.0/16", "10.0.0.1"
        if cluster.pod_network is not None:
            pod_cidr, node_ip = cluster.pod_network.cidr, cluster.pod_network.node_ip
        procs["kwok"] = _spawn(
            state_dir,
            "kwok",
            [
                f"--kubeconfig={state_dir / 'kwok.kubeconfig'}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={'='.join(FAKE_NODE_ANNOTATION)}",
                "--node-lease-duration-seconds=40",
                f"--cidr={pod_cidr}",
                f"--node-ip={node_ip}",
                f"--server-address=127.0.0.1:{ports['kwok']}",
                *stage_args,
            ],
        )
        cluster.pids["kwok"] = procs["kwok"].pid
        cluster.save()
        _wait(
            "kube-controller-manager",
            lambda: _https_ok(ports["controller-manager"]),
            procs["kube-controller-manager"],
            logs / "kube-controller-manager.log",
        )
        _wait(
            "kube-scheduler",
            lambda: _https_ok(ports["scheduler"]),
            procs["kube-scheduler"],
            logs / "kube-scheduler.log",
        )
        say(f"controller-manager and scheduler up ({time.monotonic() - t0:.1f}s)")
        inventory = yaml.safe_load(inventory_file.read_text())
        nodes = node_manifests(inventory)
        for node in nodes:
            cluster.api("POST", "/api/v1/nodes", node)

        def all_nodes_ready() -> bool:
            items = cluster.api("GET", "/api/v1/nodes")["items"]
            ready = [
                n
                for n in items
                if any(
                    c["type"] == "Ready" and c["status"] == "True"
                    for c in n.get("status", {}).get("conditions", [])
                )
                and not any(
                    t["key"].startswith("node.kubernetes.io/")
                    for t in n.get("spec", {}).get("taints", []) or []
                )
            ]
            return len(ready) == len(nodes)

        _wait(
            "kwok nodes Ready and untainted",
            all_nodes_ready,
            procs["kwok"],
            logs / "kwok.log",
            timeout=180,
        )

        def default_sa() -> bool:
            cluster.api("GET", "/api/v1/namespaces/default/serviceaccounts/default")
            return True

        _wait(
            "default service account",
            default_sa,
            procs["kube-controller-manager"],
            logs / "kube-controller-manager.log",
        )
        procs["lws-controller"] = _start_lws(cluster, ports)
        say(f"LeaderWorkerSet controller up ({time.monotonic() - t0:.1f}s)")
        cluster.api("POST", "/apis/storage.k8s.io/v1/storageclasses", LOCAL_STORAGE_CLASS)
        procs["fill-runner"] = _spawn(
            state_dir,
            "fill-runner",
            [f"--kubeconfig={cluster.kubeconfig}", f"--state-dir={state_dir}"],
        )
        cluster.pids["fill-runner"] = procs["fill-runner"].pid
        cluster.save()
        say(
            f"{len(nodes)} nodes Ready; cluster up in {time.monotonic() - t0:.1f}s; "
            f"KUBECONFIG={cluster.kubeconfig}"
        )
    except BaseException:
        stop(state_dir)
        for proc in procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        raise
    cluster.procs = procs
    return cluster


def _start_lws(cluster: Cluster, ports: dict[str, int]) -> subprocess.Popen[bytes]:
    """The LeaderWorkerSet controller, its CRD and its webhooks, in the order a release
    installs them: the CRD first (the controller's caches wait for it and give up after a
    while), then the controller, then the webhooks it serves (certificates from the
    cluster's CA, so its own cert rotation is off)."""
    state_dir, pki = cluster.state_dir, cluster.state_dir / "pki"
    base = lws_module_dir()
    crd = yaml.safe_load(
        (base / "config/crd/bases/leaderworkerset.x-k8s.io_leaderworkersets.yaml").read_text()
    )
    cluster.api("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
    name = "leaderworkersets.leaderworkerset.x-k8s.io"

    def established() -> bool:
        got = cluster.api("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
        conds = (got.get("status") or {}).get("conditions") or []
        return any(c["type"] == "Established" and c["status"] == "True" for c in conds)

    deadline = time.monotonic() + 60
    while not established():
        if time.monotonic() > deadline:
            raise ClusterError(f"CRD {name} not Established after 60s")
        time.sleep(0.25)
    config = {
        "apiVersion": "config.lws.x-k8s.io/v1alpha1",
        "kind": "Configuration",
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "webhook": {"host": "127.0.0.1", "port": ports["lws-webhook"], "certDir": str(pki / "lws")},
        "health": {"healthProbeBindAddress": f"127.0.0.1:{ports['lws-health']}"},
        "metrics": {"bindAddress": "0"},
    }
    (state_dir / "lws-config.yaml").write_text(yaml.safe_dump(config))
    proc = _spawn(
        state_dir,
        "lws-controller",
        [
            f"--config={state_dir / 'lws-config.yaml'}",
            f"--kubeconfig={state_dir / 'lws-controller.kubeconfig'}",
            "--zap-log-level=info",
        ],
    )
    cluster.pids["lws-controller"] = proc.pid
    cluster.save()
    log = state_dir / "logs" / "lws-controller.log"

    def healthy() -> bool:
        url = f"http://127.0.0.1:{ports['lws-health']}/readyz"
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200) and _port_open(ports["lws-webhook"])

    _wait("lws-controller", healthy, proc, log)
    ca_bundle = base64.b64encode((pki / "ca.crt").read_bytes()).decode()
    for doc in lws_webhooks(base, ports["lws-webhook"], ca_bundle):
        plural = doc["kind"].lower() + "s"
        cluster.api("POST", f"/apis/admissionregistration.k8s.io/v1/{plural}", doc)
    return proc


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as gone; reap it.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return Path(f"/proc/{pid}").exists() and "zombie" not in _proc_state(pid)


def _proc_state(pid: int) -> str:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("State:"):
                return line.lower()
    except OSError:
        pass
    return ""


def stop(state_dir: Path = DEFAULT_STATE_DIR, timeout: float = 20.0) -> None:
    """End every component listed in ``state_dir`` and wait until all are gone."""
    state_file = state_dir / "state.json"
    if not state_file.exists():
        return
    state = json.loads(state_file.read_text())
    pids: dict[str, int] = state.get("pids", {})
    # Reverse start order: kwok and the controllers first, etcd last.
    order = [c for c in reversed(COMPONENTS) if c in pids]
    for name in order:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pids[name], signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(pids[n]) for n in order):
        time.sleep(0.1)
    for name in order:
        if _alive(pids[name]):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pids[name], signal.SIGKILL)
    while any(_alive(pids[n]) for n in order) and time.monotonic() < deadline + 10:
        time.sleep(0.1)
    if net := state.get("podNetwork"):
        podnet.teardown(net["netns"], net["host_veth"])
    state_file.unlink()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    parser.add_argument("--inventory", type=Path, default=DEFAULT_INVENTORY)
    args = parser.parse_args(argv)
    if args.command == "up":
        try:
            start(args.state_dir, args.inventory)
        except ClusterError as exc:
            print(f"[cluster] failed: {exc}", file=sys.stderr)
            return 1
        return 0
    if args.command == "down":
        stop(args.state_dir)
        print("[cluster] stopped")
        return 0
    if not (args.state_dir / "state.json").exists():
        print("[cluster] not running")
        return 1
    cluster = Cluster.load(args.state_dir)
    for name, pid in cluster.pids.items():
        print(f"{name:24} pid {pid:<8} {'running' if _alive(pid) else 'gone'}")
    print(f"server {cluster.server}  KUBECONFIG={cluster.kubeconfig}")
    net = cluster.pod_network
    print(f"pods {net.cidr} in netns {net.netns}" if net else "pods on loopback ports")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
