"""`make bench`: every benchmark, each writing its JSON report under reports/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = ["autoscaling.py", "operator_bench.py"]


def main() -> int:
    failed = 0
    for script in BENCHMARKS:
        print(f"== {script}", flush=True)
        failed |= subprocess.call([sys.executable, str(HERE / script), *sys.argv[1:]])
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
