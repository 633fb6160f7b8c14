"""The operator's own series: per-DMD gauges from one table, exposed as labelled gauges
and dropped whole when a DMD is deleted."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from distillery import metrics

PER_DMD = {name for name, _ in metrics._PER_DMD.series}


def families() -> dict[str, dict[tuple[str, str], float]]:
    text = generate_latest(metrics.REGISTRY).decode()
    return {
        f.name: {(s.labels["namespace"], s.labels["name"]): s.value for s in f.samples}
        for f in text_string_to_metric_families(text)
        if f.type == "gauge" and f.name in PER_DMD
    }


def test_per_dmd_gauges_are_labelled_series_and_a_deleted_dmd_leaves_none() -> None:
    metrics.DESIRED_REPLICAS.labels("team-a", "qwen").set(3)
    metrics.COST_PER_HOUR.labels("team-a", "qwen").set(6.86)
    metrics.STALLED.labels("team-b", "llama").set(1)
    seen = families()
    assert seen["distillery_desired_replicas"][("team-a", "qwen")] == 3.0
    assert seen["distillery_cost_per_hour"][("team-a", "qwen")] == 6.86
    assert seen["distillery_stalled"][("team-b", "llama")] == 1.0
    # A series never set for a DMD is absent, not 0.
    assert ("team-b", "llama") not in seen["distillery_desired_replicas"]
    assert (
        metrics.REGISTRY.get_sample_value(
            "distillery_desired_replicas", {"namespace": "team-a", "name": "qwen"}
        )
        == 3.0
    )
    metrics.forget("team-a", "qwen")
    seen = families()
    assert all(("team-a", "qwen") not in series for series in seen.values())
    assert seen["distillery_stalled"][("team-b", "llama")] == 1.0
    metrics.forget("team-b", "llama")
    assert all(("team-b", "llama") not in series for series in families().values())
