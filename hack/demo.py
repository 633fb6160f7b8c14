#!/usr/bin/env python3
"""`make demo`: the main job on the local cluster.

Today it shows what exists end to end: a real control plane with fake GPU nodes, the
generated CRD installed, every example planned onto the cheapest GPUs that fit and
stored by the API server. The closed loop (operator, Prometheus, emulated vLLM fleet,
trace replay) joins it as those issues land.

With KUBECONFIG set it uses that cluster and leaves it running; otherwise it starts the
local one and stops it at the end.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "hack"))

from localcluster import BIN_DIR, ClusterError, start, stop  # noqa: E402


def sh(*args: str, env: dict[str, str]) -> str:
    proc = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{proc.stderr}")
    return proc.stdout


def main() -> int:
    own = "KUBECONFIG" not in os.environ
    state = ROOT / ".cluster"
    if own:
        try:
            cluster = start(state)
        except ClusterError as exc:
            print(f"[demo] cluster failed to start: {exc}", file=sys.stderr)
            return 1
        env = cluster.env()
    else:
        env = dict(os.environ)
    kubectl = str(BIN_DIR / "kubectl")
    distillery = str(ROOT / ".venv" / "bin" / "distillery")
    try:
        print(
            sh(
                kubectl,
                "get",
                "nodes",
                "-L",
                "nvidia.com/gpu.product",
                "-L",
                "nvidia.com/gpu.count",
                env=env,
            )
        )
        print(sh(kubectl, "apply", "--server-side", "-f", str(ROOT / "crds"), env=env))
        sh(
            kubectl,
            "wait",
            "--for=condition=Established",
            "crd/distilledmodeldeployments.distillery.dev",
            env=env,
        )
        examples = sorted((ROOT / "examples").glob("deepseek-r1-distill-*.yaml"))
        for path in examples:
            print(sh(distillery, "plan", str(path), env=env))
        for path in examples:
            print(sh(kubectl, "apply", "-f", str(path), env=env), end="")
        print()
        print(sh(kubectl, "get", "dmd", env=env))
        print("[demo] done: every example planned and stored by the API server")
    finally:
        if own:
            stop(state)
            print("[demo] local cluster stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
