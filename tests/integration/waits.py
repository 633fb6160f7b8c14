"""How long an integration test waits, and what it says when the wait runs out.

A fixed ``timeout=120`` is wrong twice: on an idle machine it hides a hang for minutes,
and on a busy 2-core CI machine it was once too short for a scale-up. Each bound here is
the sum of the intervals that must pass before the condition can hold (resync, the
autoscaler's interval, Prometheus' scrape and rate window, a pod's start), times a
slowdown factor for a loaded machine, plus a fixed allowance for process start and API
round trips. Change an interval and the bounds follow it.

``DISTILLERY_TEST_SLOWDOWN`` (default 3) scales every bound: raise it on a slower
machine rather than editing a test.

When a wait runs out it fails with what it last saw: the DMD's conditions, replicas and
the autoscaler's last decisions, not only "timed out".
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from kubernetes import client, config

from distillery.api.types import GROUP, PLURAL, VERSION
from distillery.autoscale.policy import RATE_WINDOW
from distillery.settings import Settings
from localcluster import Cluster
from tests.support.dmds import dmd_yaml

SLOWDOWN = float(os.environ.get("DISTILLERY_TEST_SLOWDOWN", "3"))
# Seconds a loaded machine may add to any wait: a Python process starting, a few API
# round trips, kubectl itself.
ALLOWANCE = 15.0
# kwok's "fast" stages: scheduled, bound and Running/Ready within a second or two; a
# Deployment's rollout adds a controller-manager sync.
POD_START = 5.0
# The local Prometheus scrapes every second (localprom's default).
SCRAPE_INTERVAL = 1.0


def new_api_client(kubeconfig: str) -> client.ApiClient:
    """A Kubernetes API client for a kubeconfig file (the client's own is untyped)."""
    api: client.ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=kubeconfig
    )
    return api


def wait_for(
    check: Callable[[], Any],
    what: str,
    timeout: float = 60.0,
    interval: float = 0.25,
    describe: Callable[[], str] | None = None,
) -> Any:
    """Poll ``check`` until it returns something truthy without raising.

    On timeout the error shows ``check``'s last result and, when given, ``describe()``:
    the state that explains why the condition never held.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except Exception as exc:  # noqa: BLE001 - "not yet"
            last = exc
        time.sleep(interval)
    seen = ""
    if describe is not None:
        try:
            seen = "\n" + describe()
        except Exception as exc:  # noqa: BLE001 - the failure matters more
            seen = f"\n(could not describe: {exc!r})"
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}{seen}")


@dataclass(frozen=True)
class Bounds:
    """Wait bounds for an operator run with ``settings``."""

    settings: Settings
    scrape_interval: float = SCRAPE_INTERVAL

    @staticmethod
    def within(*seconds: float) -> float:
        """The bound for a condition that needs ``seconds`` of intervals to pass."""
        return SLOWDOWN * sum(seconds) + ALLOWANCE

    @property
    def reconcile(self) -> float:
        """A change is reconciled: on its watch event, or at worst at the next resync."""
        return self.within(self.settings.resync_interval_seconds)

    @property
    def ready(self) -> float:
        """A DMD applied becomes Ready: reconciled, pods started, status updated."""
        return self.within(self.settings.resync_interval_seconds, POD_START)

    @property
    def metrics(self) -> float:
        """Metrics reach a decision: a scrape, then the autoscaler's next tick."""
        return self.within(
            self.scrape_interval, self.settings.autoscale_interval_seconds, POD_START
        )

    @property
    def takeover(self) -> float:
        """A standby leads after its leader died: the lease runs out unrenewed, then the
        standby's next try."""
        return self.within(
            self.settings.leader_election_lease_seconds,
            self.settings.leader_election_retry_period_seconds,
        )

    def decisions(self, count: int = 1) -> float:
        """``count`` autoscaler decisions on metrics Prometheus has."""
        return self.within(self.scrape_interval, count * self.settings.autoscale_interval_seconds)

    @property
    def scale_up(self) -> float:
        """Load to a scale-up: the rate window fills, a decision, the pods start."""
        return self.within(
            RATE_WINDOW,
            self.scrape_interval,
            2 * self.settings.autoscale_interval_seconds,
            POD_START,
        )

    def scale_down(self, window: float) -> float:
        """Load gone to a scale-down: the rate window empties, then ``window`` passes."""
        return self.within(
            RATE_WINDOW, window, self.scrape_interval, 2 * self.settings.autoscale_interval_seconds
        )

    def rollout(self, *pauses: float) -> float:
        """Rollout steps with these pauses pass: each pause, its pods start, the next
        analysis runs on the rollout timer."""
        per_step = self.settings.rollout_interval_seconds + POD_START
        return self.within(*pauses, len(pauses) * per_step, self.settings.rollout_interval_seconds)


class Dmds:
    """DistilledModelDeployments in one test namespace: applies, reads and waits on them,
    and carries the clients a test reads their children with."""

    def __init__(
        self, api_client: client.ApiClient, namespace: str, cluster: Cluster | None = None
    ):
        self.api_client, self.namespace, self._cluster = api_client, namespace, cluster
        self.api = client.CustomObjectsApi(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.core = client.CoreV1Api(api_client)

    @property
    def cluster(self) -> Cluster:
        assert self._cluster is not None, "kubectl needs Dmds(api_client, namespace, cluster)"
        return self._cluster

    def apply(self, name: str, spec: dict[str, Any]) -> None:
        """``kubectl apply`` a DMD, as a user would."""
        self.cluster.kubectl("apply", "-n", self.namespace, "-f", "-", input=dmd_yaml(name, spec))

    def patch(self, name: str, patch: dict[str, Any]) -> None:
        """``kubectl patch --type=merge`` a DMD."""
        self.cluster.kubectl(
            "patch", "dmd", name, "-n", self.namespace, "--type=merge", "-p", json.dumps(patch)
        )

    def get(self, name: str) -> dict[str, Any]:
        obj = self.api.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
        return cast(dict[str, Any], obj)

    def condition(self, name: str, type_: str) -> dict[str, Any]:
        return condition(self.get(name), type_)

    def replicas(self, name: str) -> int:
        return int(self.get(name)["spec"].get("replicas") or 0)

    def describe(self, name: str) -> str:
        """What ``kubectl describe`` would show that a failed wait needs."""
        obj = self.get(name)
        status = obj.get("status") or {}
        lines = [f"dmd/{name}: spec.replicas={obj['spec'].get('replicas')}"]
        lines += [
            f"  {c['type']}={c['status']} {c.get('reason', '')}: {c.get('message', '')}"
            for c in status.get("conditions", [])
        ]
        rollout = status.get("rollout") or {}
        if rollout:
            lines.append(
                f"  rollout {rollout.get('phase')} step {rollout.get('step')}: "
                f"{rollout.get('message', '')} (last analysis {rollout.get('lastAnalysis')})"
            )
        for d in (status.get("autoscaling") or {}).get("lastDecisions", [])[-3:]:
            lines.append(f"  decision {d.get('from')}->{d.get('to')}: {d.get('reason', '')}")
        return "\n".join(lines)

    def wait(self, name: str, check: Callable[[], Any], what: str, within: float) -> Any:
        return wait_for(check, f"dmd/{name}: {what}", within, describe=lambda: self.describe(name))

    def wait_condition(
        self,
        name: str,
        type_: str,
        within: float,
        status: str = "True",
        reason: str | None = None,
    ) -> dict[str, Any]:
        """Wait until condition ``type_`` has ``status`` (and ``reason``, when given);
        returns the condition, read at once (a status may move on between two reads)."""

        def holds() -> dict[str, Any] | None:
            c = self.condition(name, type_)
            ok = c.get("status") == status and reason in (None, c.get("reason"))
            return c if ok else None

        found: dict[str, Any] = self.wait(
            name, holds, f"{type_}={status}" + (f" ({reason})" if reason else ""), within
        )
        return found

    def wait_replicas(
        self, name: str, check: Callable[[int], bool], what: str, within: float
    ) -> int:
        """Wait until ``check(spec.replicas)``; returns the replicas."""

        def holds() -> tuple[int] | None:
            n = self.replicas(name)
            return (n,) if check(n) else None

        found: tuple[int] = self.wait(name, holds, what, within)
        return found[0]


def reconciled(api_client: client.ApiClient, namespace: str) -> set[str]:
    """The DMDs of ``namespace`` whose Deployment exists and whose status is of their
    current spec (``observedGeneration``)."""
    apps, custom = client.AppsV1Api(api_client), client.CustomObjectsApi(api_client)
    deployments = {d.metadata.name for d in apps.list_namespaced_deployment(namespace).items}
    objs = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
    return {
        o["metadata"]["name"]
        for o in objs
        if o["metadata"]["name"] in deployments
        and (o.get("status") or {}).get("observedGeneration") == o["metadata"]["generation"]
    }


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    """The condition ``type_`` of an object, or {}."""
    conditions = (obj.get("status") or {}).get("conditions", [])
    return next((c for c in conditions if c["type"] == type_), {})
