"""Request workloads for the simulator: loaders for the trace formats users have.

- ``azure``: Azure LLM inference trace CSV (``TIMESTAMP, ContextTokens, GeneratedTokens``).
- ``servegen``: a ServeGen folder of per-client rate curves (``chunk-N-trace.csv``: one
  row per window with ``start_s, rate_rps, cv, dist, shape, scale``) and per-window
  length distributions (``chunk-N-dataset.json``). Clients are summed into one arrival
  stream. Inter-arrival gaps follow each window's distribution (Gamma or Weibull with
  the given shape; exponential otherwise) with the scale set so the mean gap is exactly
  ``1 / rate_rps``: the published scale does not always match the published rate, and
  the rate is the quantity the curves describe. Input and output lengths are sampled
  from the client's empirical distribution for the window.
- ``jsonl``: one object per line with ``timestamp`` (ms), ``input_length``,
  ``output_length``.
- ``csv``: ``timestamp_s,input_tokens,output_tokens``.

Every file may be gzip-compressed: ``trace.csv`` is read from ``trace.csv.gz`` when only
that exists (the repository ships its traces compressed).

Every loader is deterministic for a seed. ``rate_scale`` multiplies the request rate
(recorded traces: each request is kept ``floor(x)`` times plus once more with the
fractional probability, copies jittered within a second; ServeGen: the rate curves are
multiplied); ``time_scale`` compresses time (arrivals divided by it).
"""

from __future__ import annotations

import ast
import bisect
import csv
import gzip
import io
import json
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Request:
    arrival: float  # seconds from the start of the workload
    prompt_tokens: int
    output_tokens: int
    # Prompt tokens the engine finds in its prefix cache: held in the KV cache, not
    # computed. Traces carry none unless they say so; calibration runs re-send prompts.
    cached_tokens: int = 0


class WorkloadError(ValueError):
    """A trace file is malformed; the message names the file and the line."""


def resolve(path: Path) -> Path:
    """``path``, or ``path.gz`` when only the compressed file exists."""
    if path.exists() or path.suffix == ".gz":
        return path
    gz = path.with_name(path.name + ".gz")
    return gz if gz.exists() else path


def open_text(path: Path) -> io.TextIOBase:
    """Open a trace file as text, gzip or not (newline="" for the csv module)."""
    path = resolve(path)
    try:
        if path.suffix == ".gz":
            return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
        return open(path, encoding="utf-8", newline="")
    except OSError as exc:
        raise WorkloadError(f"{path}: {exc.strerror or exc}") from exc


# A trace's rows: (arrival seconds, prompt tokens, output tokens), in the file's order.
Row = tuple[float, int, int]


def _finish(raw: Iterable[Row], rate_scale: float, time_scale: float, seed: int) -> list[Request]:
    if rate_scale <= 0 or time_scale <= 0:
        raise WorkloadError("rate_scale and time_scale must be positive")
    rng = random.Random(seed)
    out: list[Request] = []
    for t, p, o in raw:
        copies = int(rate_scale)
        if rng.random() < rate_scale - copies:
            copies += 1
        for i in range(copies):
            jitter = 0.0 if i == 0 else rng.random()
            out.append(Request((t + jitter) / time_scale, max(1, p), max(1, o)))
    out.sort(key=lambda r: r.arrival)
    if not out:
        return out
    t0 = out[0].arrival if out[0].arrival > 0 else 0.0
    return [Request(r.arrival - t0, r.prompt_tokens, r.output_tokens) for r in out]


def _row_error(path: Path, line: int, fmt: str, exc: Exception, found: object) -> WorkloadError:
    """A bad row, named by file and line; a missing field most often means the wrong
    ``--format``, so the message says which format was assumed and what it found."""
    if isinstance(exc, KeyError):
        return WorkloadError(
            f"{path}:{line}: not a {fmt} trace: no field {exc} (found {found}); "
            f"is --format {fmt} right? (azure, servegen, jsonl, csv)"
        )
    return WorkloadError(f"{path}:{line}: {fmt} trace: {exc}")


def _azure_rows(path: Path) -> list[Row]:
    rows: list[Row] = []
    with open_text(path) as f:
        reader = csv.DictReader(f)
        start: datetime | None = None
        for n, row in enumerate(reader, start=2):
            try:
                stamp = row["TIMESTAMP"].strip()
                # Seven fractional digits: keep microseconds.
                if "." in stamp:
                    head, frac = stamp.split(".", 1)
                    stamp = f"{head}.{frac[:6]}"
                ts = datetime.fromisoformat(stamp)
                start = start or ts
                rows.append(
                    (
                        (ts - start).total_seconds(),
                        int(row["ContextTokens"]),
                        int(row["GeneratedTokens"]),
                    )
                )
            except (KeyError, ValueError, AttributeError) as exc:
                raise _row_error(path, n, "azure", exc, reader.fieldnames) from exc
    return rows


def _jsonl_rows(path: Path) -> list[Row]:
    rows: list[Row] = []
    with open_text(path) as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as exc:
                raise WorkloadError(
                    f"{path}:{n}: not a jsonl trace: the line is not JSON ({exc}); "
                    "is --format jsonl right? (azure, servegen, jsonl, csv)"
                ) from exc
            try:
                rows.append(
                    (
                        float(obj["timestamp"]) / 1000.0,
                        int(obj["input_length"]),
                        int(obj["output_length"]),
                    )
                )
            except (KeyError, ValueError, TypeError) as exc:
                found = sorted(obj) if isinstance(obj, dict) else line.strip()[:60]
                raise _row_error(path, n, "jsonl", exc, found) from exc
    return rows


def _csv_rows(path: Path) -> list[Row]:
    rows: list[Row] = []
    with open_text(path) as f:
        reader = csv.DictReader(f)
        for n, row in enumerate(reader, start=2):
            try:
                rows.append(
                    (float(row["timestamp_s"]), int(row["input_tokens"]), int(row["output_tokens"]))
                )
            except (KeyError, ValueError, TypeError) as exc:
                raise _row_error(path, n, "csv", exc, reader.fieldnames) from exc
    return rows


class _Empirical:
    """Sampling from a {value: probability} table."""

    def __init__(self, table: dict[float, float]):
        items = sorted(table.items())
        total = sum(p for _, p in items) or 1.0
        self.values = [v for v, _ in items]
        acc, self.cdf = 0.0, []
        for _, p in items:
            acc += p / total
            self.cdf.append(acc)

    def sample(self, rng: random.Random) -> float:
        i = bisect.bisect_left(self.cdf, rng.random())
        return self.values[min(i, len(self.values) - 1)]


def _gap_sampler(dist: str, shape: float, rate: float, rng: random.Random) -> float:
    mean = 1.0 / rate
    if dist == "Gamma" and shape > 0:
        return rng.gammavariate(shape, mean / shape)
    if dist == "Weibull" and shape > 0:
        scale = mean / math.gamma(1 + 1 / shape)
        return rng.weibullvariate(scale, shape)
    return rng.expovariate(rate)


def load_servegen(
    folder: Path,
    rate_scale: float = 1.0,
    time_scale: float = 1.0,
    seed: int = 0,
    clients: Sequence[int] | None = None,
    duration: float | None = None,
) -> list[Request]:
    rng = random.Random(seed)
    traces = sorted(
        {p.with_suffix("") if p.suffix == ".gz" else p for p in folder.glob("chunk-*-trace.csv*")},
        key=lambda p: int(p.name.split("-")[1]),
    )
    if not traces:
        raise WorkloadError(f"{folder}: no chunk-N-trace.csv files")
    out: list[tuple[float, int, int]] = []
    for trace in traces:
        index = int(trace.name.split("-")[1])
        if clients is not None and index not in clients:
            continue
        dataset_path = folder / f"chunk-{index}-dataset.json"
        try:
            with open_text(dataset_path) as f:
                dataset = json.loads(f.read())
        except (OSError, ValueError) as exc:
            raise WorkloadError(f"{dataset_path}: {exc}") from exc
        windows = sorted((int(k), v) for k, v in dataset.items())
        samplers: dict[int, tuple[_Empirical, _Empirical]] = {}
        for start_key, tables in windows:
            samplers[start_key] = (
                _Empirical(ast.literal_eval(tables["input_tokens"])),
                _Empirical(ast.literal_eval(tables["output_tokens"])),
            )
        keys = [k for k, _ in windows]
        with open_text(trace) as f:
            rows = list(csv.reader(f))
        starts = [float(r[0]) for r in rows if r and r[0] not in ("", "start_s")]
        step = (starts[1] - starts[0]) if len(starts) > 1 else 600.0
        for n, row in enumerate(rows, start=1):
            if not row or row[0] in ("", "start_s"):
                continue
            try:
                start, rate = float(row[0]), float(row[1]) * rate_scale
                dist = row[3]
                shape = float(row[4]) if row[4] else 0.0
            except (IndexError, ValueError) as exc:
                raise WorkloadError(f"{trace}:{n}: {exc}") from exc
            if rate <= 0:
                continue
            if duration is not None and start >= duration:
                break
            which = keys[max(0, bisect.bisect_right(keys, start) - 1)]
            inputs, outputs = samplers[which]
            t = start + _gap_sampler(dist, shape, rate, rng)
            while t < start + step:
                out.append((t, int(inputs.sample(rng)), int(outputs.sample(rng))))
                t += _gap_sampler(dist, shape, rate, rng)
    out.sort()
    return _finish(out, 1.0, time_scale, seed)


ROW_READERS = {"azure": _azure_rows, "jsonl": _jsonl_rows, "csv": _csv_rows}


def load(
    path: Path, fmt: str, rate_scale: float = 1.0, time_scale: float = 1.0, seed: int = 0
) -> list[Request]:
    if fmt == "servegen":
        return load_servegen(path, rate_scale, time_scale, seed)
    if fmt not in ROW_READERS:
        raise WorkloadError(f"unknown trace format {fmt!r}: azure, servegen, jsonl or csv")
    return _finish(ROW_READERS[fmt](path), rate_scale, time_scale, seed)
