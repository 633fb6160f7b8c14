"""Autoscaling: the policy (pure) and, in :mod:`distillery.autoscale.source`, the
Prometheus metrics source (I/O)."""

from distillery.autoscale.policy import (
    Capacity,
    Cluster,
    Decision,
    History,
    Limits,
    LoadSample,
    capacity_for,
    decide,
)

__all__ = [
    "Capacity",
    "Cluster",
    "Decision",
    "History",
    "Limits",
    "LoadSample",
    "capacity_for",
    "decide",
]
