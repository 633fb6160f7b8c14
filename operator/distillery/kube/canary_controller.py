"""Canary analysis against Prometheus (I/O), for the rollouts that are in a step.

Each pass measures every DMD whose canary step has started: one query per counter, over
the window since the step's canary became ready, summed per track by
:func:`distillery.rollout.analysis.measure`. The latest measurement per DMD is kept in
memory for the reconciler, which judges it; nothing here writes to the API server, so
losing this memory in a restart costs one pass, not a decision.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from distillery.api.conditions import parse_rfc3339
from distillery.autoscale.inputs import PodInfo
from distillery.autoscale.source import (
    ANALYSIS_QUERIES,
    MetricsUnavailableError,
    PrometheusSource,
)
from distillery.kube.client import in_thread
from distillery.rollout.analysis import Measurement, measure
from distillery.rollout.strategy import PROGRESSING, PROMOTING

log = logging.getLogger("distillery.rollout")
Key = tuple[str, str]


def in_step(body: Mapping[str, Any]) -> bool:
    """A canary step has started and waits on analysis."""
    ro = (body.get("status") or {}).get("rollout") or {}
    return (
        ro.get("strategy") == "Canary"
        and ro.get("phase") == PROGRESSING
        and bool(ro.get("stepStartedAt"))
        and bool(ro.get("canaryRevision"))
    )


def rollout_under_way(body: Mapping[str, Any]) -> bool:
    """A rollout of any kind is under way (its pauses need a clock, not just events)."""
    ro = (body.get("status") or {}).get("rollout") or {}
    return ro.get("phase") in (PROGRESSING, PROMOTING)


@dataclass
class CanaryAnalyzer:
    source: PrometheusSource | None
    latest: dict[Key, Measurement] = field(default_factory=dict)

    @property
    def configured(self) -> bool:
        return self.source is not None

    def forget(self, namespace: str, name: str) -> None:
        self.latest.pop((namespace, name), None)

    async def run_pass(
        self, bodies: Iterable[Mapping[str, Any]], pods: Mapping[Key, Sequence[PodInfo]]
    ) -> None:
        if self.source is None:
            return
        due = [b for b in bodies if in_step(b)]
        if not due:
            return
        now = time.time()
        for body in due:
            ro = body["status"]["rollout"]
            engine = ((body.get("spec") or {}).get("serving") or {}).get("engine", "vllm")
            ns, name = str(body["metadata"]["namespace"]), str(body["metadata"]["name"])
            start = parse_rfc3339(str(ro["stepStartedAt"]))
            try:
                # The step's own window: one query per counter, for all pods of the
                # namespace (a handful of DMDs are mid-canary at any time).
                counts = await in_thread(
                    self.source.window_counts, engine, ns, max(5, math.ceil(now - start))
                )
            except MetricsUnavailableError as exc:
                log.warning("canary analysis of %s/%s skipped: %s", ns, name, exc)
                self.latest.pop((ns, name), None)
                continue
            queries = ANALYSIS_QUERIES.get(engine)
            self.latest[(ns, name)] = measure(
                str(ro["canaryRevision"]),
                int(ro.get("step") or 1),
                start,
                now,
                list(pods.get((ns, name), [])),
                counts,
                counts_requests=queries is not None and queries.requests is not None,
            )
