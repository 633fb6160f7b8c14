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

Only ``distillery cache-fill`` runs here (there is no image to run anything else): any
other command fails the pod with a message that says so.

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
        self._started: set[str] = set()

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

    def _execute(self, pod: Any, container: Any) -> tuple[int, str]:
        ns = pod.metadata.namespace
        command = list(container.command or []) + list(container.args or [])
        if command[:2] != ["distillery", "cache-fill"]:
            return 127, f"the local cluster runs only distillery cache-fill, not {command[:1]}"
        claims = {
            v.name: v.persistent_volume_claim.claim_name
            for v in pod.spec.volumes or []
            if v.persistent_volume_claim is not None
        }
        mounts = {
            m.mount_path: self._host_path(ns, claims[m.name])
            for m in container.volume_mounts or []
            if m.name in claims
        }

        def mapped(arg: str) -> str:
            for mount, host in mounts.items():
                flag, sep, value = arg.partition("=")
                if sep and (value == mount or value.startswith(mount + "/")):
                    return f"{flag}={host}{value[len(mount) :]}"
            return arg

        with tempfile.TemporaryDirectory() as tmp:
            termination = Path(tmp) / "termination-log"
            argv = [str(DISTILLERY), *(mapped(a) for a in command[1:])]
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

    def loop(self) -> None:
        while True:
            for step in (self.provision, self.reclaim, self.run_pods):
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
