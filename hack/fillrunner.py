#!/usr/bin/env python3
"""The local cluster's kubelet and storage provisioner for weight caches.

kwok plays every kubelet of the local cluster: it marks pods Running and Jobs' pods
Succeeded without running anything, which is right for GPU pods (there are no GPUs) and
wrong for the pods that fill a weight cache: their work is the product's own code
(``distillery cache-fill``), and a test must see it download, fail, resume and write
the marker for real. So ``localcluster`` tells kwok to leave those pods alone, and this
process stands in for their kubelet and for a volume provisioner:

- A claim of the ``distillery-local`` StorageClass (the cluster's default) gets a
  ``hostPath`` PersistentVolume under the state folder, pre-bound to it, as a local-path
  provisioner would make; a released one is deleted with its folder.
- A Running fill pod has its container's command run on this machine, with each volume
  mount mapped to the folder of its claim, the environment resolved as the kubelet
  resolves it (values and Secret keys), and the termination log read back into the pod's
  status: exit code, reason and message, then phase Succeeded or Failed. The Job
  controller takes it from there (retries, completion).

- A node-local copy's pod (a NodeLocal cache's pre-pull DaemonSet) has its
  ``cache-fill --hold`` run the same way, its ``hostPath`` mapped to a folder per node
  under the state folder (``nodes/<node>/<path>``); the pod is Running, and Ready once
  the copy's marker is there, as its readiness probe would say. A copy that exits is
  counted as a restart and started again; a deleted pod's copy is stopped.

Only ``distillery cache-fill`` runs here (there is no image to run anything else): any
other command fails the pod with a message that says so. Init containers are not run.

Usage: ``python hack/fillrunner.py --kubeconfig K --state-dir D``.
"""

from __future__ import annotations

import argparse
import base64
import logging
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

STORAGE_CLASS = "distillery-local"
FILL_LABEL = "distillery.dev/weight-cache-of"
PREPULL_LABEL = "distillery.dev/weight-prepull-of"
MARKER = ".distillery-complete"
RESTART_SECONDS = 2.0
DISTILLERY = Path(sys.executable).parent / "distillery"
POLL_SECONDS = 0.5
log = logging.getLogger("fillrunner")


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


class FillRunner:
    def __init__(self, api: client.ApiClient, state_dir: Path) -> None:
        # Any: the client's models type every field Optional; this reads what it wrote.
        self.core: Any = client.CoreV1Api(api)
        self.volumes = state_dir / "volumes"
        self.volumes.mkdir(parents=True, exist_ok=True)
        self.nodes = state_dir / "nodes"
        self._started: set[str] = set()
        # Node-local copies by pod uid: the running process, or None between restarts.
        self._copies: dict[str, subprocess.Popen[str] | None] = {}
        self._stopped: set[str] = set()

    # ---- provisioner -------------------------------------------------------------

    def provision(self) -> None:
        for pvc in self.core.list_persistent_volume_claim_for_all_namespaces().items:
            if pvc.spec.volume_name or pvc.status.phase != "Pending":
                continue
            if (pvc.spec.storage_class_name or STORAGE_CLASS) != STORAGE_CLASS:
                continue
            ns, name = pvc.metadata.namespace, pvc.metadata.name
            path = self.volumes / f"{ns}-{name}-{pvc.metadata.uid[:8]}"
            path.mkdir(parents=True, exist_ok=True)
            path.chmod(0o777)  # the fill runs as a non-root user in a real pod
            pv = {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": f"pv-{pvc.metadata.uid}", "labels": {"provisioner": "fill"}},
                "spec": {
                    "capacity": {"storage": pvc.spec.resources.requests["storage"]},
                    "accessModes": pvc.spec.access_modes,
                    "persistentVolumeReclaimPolicy": "Retain",
                    "storageClassName": STORAGE_CLASS,
                    "hostPath": {"path": str(path), "type": "Directory"},
                    "claimRef": {"namespace": ns, "name": name, "uid": pvc.metadata.uid},
                },
            }
            try:
                self.core.create_persistent_volume(pv)
                log.info("provisioned %s for %s/%s", path, ns, name)
            except ApiException as exc:
                if exc.status != 409:
                    raise

    def reclaim(self) -> None:
        """Released volumes (their claim deleted) go, with their folder."""
        for pv in self.core.list_persistent_volume(label_selector="provisioner=fill").items:
            if pv.status.phase != "Released":
                continue
            shutil.rmtree(pv.spec.host_path.path, ignore_errors=True)
            try:
                self.core.delete_persistent_volume(pv.metadata.name)
                log.info("reclaimed %s", pv.metadata.name)
            except ApiException as exc:
                if exc.status != 404:
                    raise

    # ---- kubelet -----------------------------------------------------------------

    def run_pods(self) -> None:
        pods = self.core.list_pod_for_all_namespaces(label_selector=FILL_LABEL).items
        for pod in pods:
            uid = pod.metadata.uid
            if uid in self._started or pod.status.phase != "Running":
                continue
            if pod.metadata.deletion_timestamp:
                continue
            self._started.add(uid)
            threading.Thread(target=self._run, args=(pod,), daemon=True).start()

    def _host_path(self, namespace: str, claim: str) -> Path:
        pvc = self.core.read_namespaced_persistent_volume_claim(claim, namespace)
        pv = self.core.read_persistent_volume(pvc.spec.volume_name)
        return Path(pv.spec.host_path.path)

    def _env(self, namespace: str, container: Any) -> dict[str, str]:
        env: dict[str, str] = {"PATH": "/usr/bin:/bin"}
        for var in container.env or []:
            if var.value_from is None:
                env[var.name] = var.value or ""
                continue
            ref = var.value_from.secret_key_ref
            if ref is None:
                continue
            secret = self.core.read_namespaced_secret(ref.name, namespace)
            env[var.name] = base64.b64decode((secret.data or {})[ref.key]).decode()
        return env

    def _run(self, pod: Any) -> None:
        ns, name = pod.metadata.namespace, pod.metadata.name
        container = pod.spec.containers[0]
        started = _now()
        try:
            code, message = self._execute(pod, container)
        except Exception as exc:  # noqa: BLE001 - the pod fails with the reason
            code, message = 128, f"local runner: {exc}"
        reason = "Completed" if code == 0 else "Error"
        status = {
            "phase": "Succeeded" if code == 0 else "Failed",
            "conditions": [
                {"type": "Ready", "status": "False", "reason": "PodCompleted"},
                {"type": "ContainersReady", "status": "False", "reason": "PodCompleted"},
            ],
            "containerStatuses": [
                {
                    "name": container.name,
                    "image": container.image,
                    "imageID": "",
                    "ready": False,
                    "restartCount": 0,
                    "started": False,
                    "state": {
                        "terminated": {
                            "exitCode": code,
                            "reason": reason,
                            "message": message[-4096:],
                            "startedAt": started,
                            "finishedAt": _now(),
                        }
                    },
                }
            ],
        }
        self.core.patch_namespaced_pod_status(name, ns, {"status": status})
        log.info("pod %s/%s: exit %d: %s", ns, name, code, message.strip()[:200])

    def _mounts(self, pod: Any, container: Any) -> dict[str, Path]:
        """The container's mount paths and the folders on this machine behind them: a
        claim's volume, or a hostPath in the folder of the pod's node."""
        ns = pod.metadata.namespace
        volumes = {v.name: v for v in pod.spec.volumes or []}
        out: dict[str, Path] = {}
        for m in container.volume_mounts or []:
            v = volumes.get(m.name)
            if v is None:
                continue
            if v.persistent_volume_claim is not None:
                out[m.mount_path] = self._host_path(ns, v.persistent_volume_claim.claim_name)
            elif v.host_path is not None:
                folder = self.nodes / pod.spec.node_name / v.host_path.path.lstrip("/")
                folder.mkdir(parents=True, exist_ok=True)
                out[m.mount_path] = folder
        return out

    def _argv(self, pod: Any, container: Any) -> list[str] | None:
        """The container's ``cache-fill`` on this machine's folders (None: another
        command, which the local cluster cannot run)."""
        command = list(container.command or []) + list(container.args or [])
        if command[:2] != ["distillery", "cache-fill"]:
            return None
        mounts = self._mounts(pod, container)

        def mapped(arg: str) -> str:
            flag, sep, value = arg.partition("=")
            scheme = "file://" if value.startswith("file://") else ""
            path = value[len(scheme) :]
            for mount, host in mounts.items():
                if sep and (path == mount or path.startswith(mount + "/")):
                    return f"{flag}={scheme}{host}{path[len(mount) :]}"
            return arg

        return [str(DISTILLERY), *(mapped(a) for a in command[1:])]

    def _execute(self, pod: Any, container: Any) -> tuple[int, str]:
        ns = pod.metadata.namespace
        argv = self._argv(pod, container)
        if argv is None:
            return 127, "the local cluster runs only distillery cache-fill"
        with tempfile.TemporaryDirectory() as tmp:
            termination = Path(tmp) / "termination-log"
            proc = subprocess.run(
                [*argv, f"--termination-log={termination}"],
                env=self._env(ns, container),
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
            message = termination.read_text() if termination.exists() else proc.stderr[-2048:]
        sys.stdout.write(proc.stdout[-4096:])
        return proc.returncode, message

    # ---- node-local copies ----------------------------------------------------------

    def run_copies(self) -> None:
        pods = self.core.list_pod_for_all_namespaces(label_selector=PREPULL_LABEL).items
        live = set()
        for pod in pods:
            uid = pod.metadata.uid
            if pod.metadata.deletion_timestamp:
                continue
            live.add(uid)
            if uid in self._copies or not pod.spec.node_name:
                continue
            self._copies[uid] = None
            threading.Thread(target=self._hold_copy, args=(pod,), daemon=True).start()
        for uid in set(self._copies) - live:
            self._stopped.add(uid)
            proc = self._copies.pop(uid)
            if proc is not None and proc.poll() is None:
                proc.terminate()

    def _copy_status(self, pod: Any, ready: bool, restarts: int, last: str = "") -> None:
        container = pod.spec.containers[0]
        now, flag = _now(), "True" if ready else "False"
        status: dict[str, Any] = {
            "phase": "Running",
            "conditions": [
                {"type": t, "status": s, "lastTransitionTime": now}
                for t, s in (("Initialized", "True"), ("ContainersReady", flag), ("Ready", flag))
            ],
            "containerStatuses": [
                {
                    "name": container.name,
                    "image": container.image,
                    "imageID": "",
                    "ready": ready,
                    "started": True,
                    "restartCount": restarts,
                    "state": {"running": {"startedAt": now}},
                }
            ],
        }
        if last:
            status["containerStatuses"][0]["lastState"] = {
                "terminated": {"exitCode": 1, "reason": "Error", "message": last[-1024:]}
            }
        self.core.patch_namespaced_pod_status(
            pod.metadata.name, pod.metadata.namespace, {"status": status}
        )

    def _hold_copy(self, pod: Any) -> None:
        """Run a copy the way a kubelet runs a DaemonSet's container: restarted when it
        exits, Ready while its marker is there, stopped with its pod."""
        uid, ns, name = pod.metadata.uid, pod.metadata.namespace, pod.metadata.name
        container = pod.spec.containers[0]
        restarts, last = 0, ""
        try:
            argv = self._argv(pod, container)
            dest = next(Path(a.split("=", 1)[1]) for a in argv or [] if a.startswith("--dest="))
        except Exception as exc:  # noqa: BLE001 - the pod says why
            self._copy_status(pod, False, 0, f"local runner: {exc}")
            return
        assert argv is not None
        while uid not in self._stopped:
            with tempfile.TemporaryDirectory() as tmp:
                termination = Path(tmp) / "termination-log"
                proc = subprocess.Popen(
                    [*argv, f"--termination-log={termination}"],
                    env=self._env(ns, container), text=True,
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                )  # fmt: skip
                self._copies[uid] = proc
                self._copy_status(pod, False, restarts, last)
                reported = False
                while proc.poll() is None and uid not in self._stopped:
                    if not reported and (dest / MARKER).exists():
                        self._copy_status(pod, True, restarts, last)
                        log.info("pod %s/%s: copy complete on %s", ns, name, pod.spec.node_name)
                        reported = True
                    time.sleep(POLL_SECONDS)
                if uid in self._stopped:
                    return
                out = proc.stderr.read() if proc.stderr else ""
                last = termination.read_text() if termination.exists() else out[-2048:]
            restarts += 1
            log.info("pod %s/%s: copy exited %s: %s", ns, name, proc.returncode, last.strip())
            time.sleep(RESTART_SECONDS)

    def loop(self) -> None:
        while True:
            for step in (self.provision, self.reclaim, self.run_pods, self.run_copies):
                try:
                    step()
                except Exception as exc:  # noqa: BLE001 - next round tries again
                    log.warning("%s: %s", step.__name__, exc)
            time.sleep(POLL_SECONDS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--state-dir", required=True, type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    api = config.new_client_from_config(config_file=args.kubeconfig)  # type: ignore[no-untyped-call]
    FillRunner(api, args.state_dir).loop()


if __name__ == "__main__":
    main()
