"""Shared test setup: make hack/ importable (the local cluster and Prometheus helpers)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "hack"))

# On a busy 2-core CI machine a property test's example generation can exceed
# Hypothesis' timing health check (too_slow) while every example passes: time is not what
# these tests assert (benchmarks measure speed), so that check and the per-example
# deadline are off; the health checks on what is generated stay on.
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile("distillery", suppress_health_check=[HealthCheck.too_slow], deadline=None)
settings.load_profile("distillery")
