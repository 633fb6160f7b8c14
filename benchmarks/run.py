"""`make bench`: every benchmark, each writing its JSON report under reports/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# (script, its own arguments); arguments given to `make bench` go to every script.
BENCHMARKS = [
    ("fidelity.py", []),
    ("autoscaling.py", []),
    ("autoscaling.py", ["--startup-sweep"]),
    ("operator_bench.py", []),
]


def main() -> int:
    failed = 0
    for script, args in BENCHMARKS:
        print(f"== {script} {' '.join(args)}", flush=True)
        cmd = [sys.executable, str(HERE / script), *args, *sys.argv[1:]]
        failed |= subprocess.call(cmd)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
