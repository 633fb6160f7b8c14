"""Leader election on a ``coordination.k8s.io/v1`` Lease: several replicas, one acts.

High availability for the operator means two or more identical replicas of which exactly
one reconciles, scales and writes status, and another takes over when it dies. kopf's
peering does not give that: replicas of equal priority all freeze (a Deployment's
replicas are identical), and a paused kopf stops its own watches but not the runtime's
resync, autoscale and rollout loops. So an instance holds a Lease *before* it starts
kopf at all, as every client-go controller does (``kubectl get lease`` shows who leads):

- A standby takes the Lease when its holder has not renewed it for the holder's
  ``leaseDurationSeconds``, timed on the standby's own monotonic clock from the moment it
  last saw the record change, so no two machines' clocks need agree; or at once when the
  holder released it (an empty holder).
- The leader renews every retry period. If no renewal succeeded for the renew deadline
  it stops acting (the process exits non-zero and its pod restarts as a standby). The
  renew deadline is shorter than the lease, so a cut-off leader has stopped before any
  standby may start: two instances never act at once.
- On a graceful stop (SIGTERM, a rolling update) the leader releases the Lease and a
  standby takes over within one retry period instead of a whole lease.

:func:`next_step` is the rule, pure; :class:`LeaderElector` carries it out against the API
server from a thread of its own (the client is synchronous, and the renewals must go on
while the event loop is busy).
"""

from __future__ import annotations

import enum
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from distillery import metrics
from distillery.kube.client import count_write, error_summary
from distillery.kube.rest import ApiError, Rest, resource_path

log = logging.getLogger("distillery.leader")
LEASES = ("coordination.k8s.io", "v1", "leases")


@dataclass(frozen=True)
class LeaseRecord:
    """What a Lease says, as far as election goes."""

    holder: str | None
    lease_seconds: float
    transitions: int
    resource_version: str | None
    acquire_time: str | None = None

    @classmethod
    def from_object(cls, obj: object) -> LeaseRecord:
        if not isinstance(obj, dict):
            raise TypeError(f"a Lease is an object, not {type(obj).__name__}")
        spec = obj.get("spec") or {}
        return cls(
            holder=spec.get("holderIdentity") or None,
            lease_seconds=float(spec.get("leaseDurationSeconds") or 0),
            transitions=int(spec.get("leaseTransitions") or 0),
            resource_version=(obj.get("metadata") or {}).get("resourceVersion"),
            acquire_time=spec.get("acquireTime"),
        )


class Step(enum.Enum):
    CREATE = "create"  # no Lease yet
    RENEW = "renew"  # ours
    TAKE = "take"  # released, or not renewed for a whole lease
    WAIT = "wait"  # someone else's, still live


def next_step(
    record: LeaseRecord | None, identity: str, unchanged_for: float
) -> tuple[Step, float]:
    """What an instance named ``identity`` does about a Lease it has seen unchanged for
    ``unchanged_for`` seconds (its own clock), and how long it would still have to wait."""
    if record is None:
        return Step.CREATE, 0.0
    if record.holder == identity:
        return Step.RENEW, 0.0
    if record.holder is None:
        return Step.TAKE, 0.0
    remaining = record.lease_seconds - unchanged_for
    if remaining <= 0:
        return Step.TAKE, 0.0
    return Step.WAIT, remaining


def lease_body(
    namespace: str,
    name: str,
    holder: str | None,
    lease_seconds: float,
    transitions: int,
    now: datetime,
    resource_version: str | None = None,
    acquire_time: str | None = None,
) -> dict[str, Any]:
    """The Lease object that says ``holder`` holds it as of ``now``."""
    stamp = now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # a MicroTime
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if resource_version is not None:
        meta["resourceVersion"] = resource_version  # replaced only if nobody wrote since
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": meta,
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": max(1, math.ceil(lease_seconds)),
            "acquireTime": acquire_time or stamp,
            "renewTime": stamp,
            "leaseTransitions": transitions,
        },
    }


@dataclass(frozen=True)
class Timings:
    lease_seconds: float = 15.0
    renew_deadline_seconds: float = 10.0
    retry_period_seconds: float = 2.0


class LeaderElector:
    """Acquire, renew and release one Lease for one instance."""

    def __init__(
        self,
        rest: Rest,
        namespace: str,
        name: str,
        identity: str,
        timings: Timings = Timings(),
        clock: Callable[[], float] = time.monotonic,
    ):
        self.rest = rest
        self.namespace, self.name, self.identity = namespace, name, identity
        self.timings = timings
        self.clock = clock
        self.lost_reason: str | None = None
        self._record: LeaseRecord | None = None
        self._seen_version: str | None = None
        self._seen_at = clock()
        self._timeout = max(1.0, timings.renew_deadline_seconds / 3)

    def __repr__(self) -> str:
        return f"Lease {self.namespace}/{self.name} as {self.identity}"

    # ---- one attempt ------------------------------------------------------------------

    def _read(self) -> LeaseRecord | None:
        try:
            obj = self.rest.json("GET", self._path(self.name), timeout=self._timeout)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        record = LeaseRecord.from_object(obj)
        if record.resource_version != self._seen_version:
            self._seen_version, self._seen_at = record.resource_version, self.clock()
        return record

    def _write(self, step: Step, record: LeaseRecord | None) -> bool:
        now = datetime.now(UTC)
        seconds = self.timings.lease_seconds
        try:
            if step is Step.CREATE:
                body = lease_body(self.namespace, self.name, self.identity, seconds, 0, now)
                obj = self.rest.json("POST", self._path(), body=body, timeout=self._timeout)
            else:
                assert record is not None
                keep = step is Step.RENEW
                body = lease_body(
                    self.namespace,
                    self.name,
                    self.identity,
                    seconds,
                    record.transitions if keep else record.transitions + 1,
                    now,
                    resource_version=record.resource_version,
                    acquire_time=record.acquire_time if keep else None,
                )
                obj = self._replace(body)
        except ApiError as exc:
            if exc.status == 409:  # another instance wrote first: read again next time
                self._record = None
                return False
            raise
        count_write("update" if record else "create", "Lease")
        self._record = LeaseRecord.from_object(obj)
        self._seen_version, self._seen_at = self._record.resource_version, self.clock()
        return True

    def _replace(self, body: dict[str, Any]) -> object:
        """Write the Lease if nobody wrote since ``body``'s resourceVersion (else 409)."""
        return self.rest.json("PUT", self._path(self.name), body=body, timeout=self._timeout)

    def _path(self, name: str | None = None) -> str:
        return resource_path(*LEASES, self.namespace, name)

    def try_acquire_or_renew(self) -> bool:
        """One attempt: True when this instance holds the Lease afterwards.

        A leader renews from the record it wrote last (one request); when that version
        turns out stale it decides once more on the live record."""
        for _ in range(2):
            record = self._record if self._holds(self._record) else self._read()
            step, _ = next_step(record, self.identity, self.clock() - self._seen_at)
            if step is Step.WAIT:
                self._record = record
                return False
            if self._write(step, record):
                return True
            if step is not Step.RENEW:
                return False
        return False

    def _holds(self, record: LeaseRecord | None) -> bool:
        return record is not None and record.holder == self.identity

    # ---- the loops --------------------------------------------------------------------

    def acquire(self) -> None:
        """Block until this instance leads (a standby is stopped by SIGTERM's default
        action: it has nothing to clean up)."""
        reported: str | None = None
        while True:
            try:
                if self.try_acquire_or_renew():
                    metrics.LEADER.set(1)
                    log.info("%r: leading", self)
                    return
                holder = self._record.holder if self._record else None
                if holder != reported:
                    log.info("%r: standing by, held by %s", self, holder)
                    reported = holder
            except Exception as exc:  # noqa: BLE001 - a standby keeps trying
                log.warning("%r: could not read or take the lease: %s", self, error_summary(exc))
            time.sleep(self.timings.retry_period_seconds)

    def hold(self, stop: threading.Event, on_lost: Callable[[str], None]) -> threading.Thread:
        """Renew in a thread until ``stop``; call ``on_lost`` once if leadership is lost."""

        def renew_loop() -> None:
            last_renewed = self.clock()
            while not stop.wait(self.timings.retry_period_seconds):
                try:
                    if self.try_acquire_or_renew():
                        last_renewed = self.clock()
                        continue
                    why = f"the lease was taken by {self._record.holder if self._record else '?'}"
                except Exception as exc:  # noqa: BLE001 - judged by the deadline below
                    why = f"renewing failed: {error_summary(exc)}"
                    if self.clock() - last_renewed < self.timings.renew_deadline_seconds:
                        log.warning("%r: %s; retrying", self, why)
                        continue
                    why = (
                        f"not renewed for {self.timings.renew_deadline_seconds:g} s "
                        f"(last error: {why})"
                    )
                self.lost_reason = why
                metrics.LEADER.set(0)
                log.error("%r: leadership lost: %s; stopping", self, why)
                on_lost(why)
                return

        thread = threading.Thread(target=renew_loop, name="lease-renewal", daemon=True)
        thread.start()
        return thread

    def release(self) -> None:
        """Hand the Lease over at once (graceful stop): an empty holder, a 1 s lease."""
        if self.lost_reason is not None or not self._holds(self._record):
            return
        assert self._record is not None
        body = lease_body(
            self.namespace,
            self.name,
            None,
            1,
            self._record.transitions,
            datetime.now(UTC),
            resource_version=self._record.resource_version,
            acquire_time=self._record.acquire_time,
        )
        try:
            self._replace(body)
            count_write("update", "Lease")
            log.info("%r: released", self)
        except Exception as exc:  # noqa: BLE001 - the lease then expires by itself
            log.warning("%r: could not release the lease: %s", self, error_summary(exc))
        finally:
            metrics.LEADER.set(0)
            self._record = None


class StandbyHealth:
    """``/healthz`` while standing by: kopf's own endpoint starts only with kopf, and a
    liveness probe must not restart a healthy standby."""

    def __init__(self, bind: str, port: int):
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                ok = self.path.split("?")[0] == "/healthz"
                body = b'{"leader": false}' if ok else b"not found"
                self.send_response(200 if ok else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer((bind, port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
