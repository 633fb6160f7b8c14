"""Replay a request trace over HTTP against an OpenAI-compatible front door.

Requests go out at their trace times divided by the time scale, streaming, so time to
first token is the first server-sent event; both it and the total latency are recorded
and reported back in the trace's own (uncompressed) seconds. Bounded: it sends exactly
the trace's requests and stops.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aiohttp

from distillery.simulate.workload import Request


@dataclass
class Result:
    arrival: float  # trace seconds
    ttft: float | None  # trace seconds; None when it failed
    latency: float | None
    status: int
    pod: str = ""


async def _one(
    session: aiohttp.ClientSession,
    url: str,
    model: str,
    req: Request,
    scale: float,
    results: list[Result],
) -> None:
    body = {
        "model": model,
        "prompt": "x",
        "prompt_tokens": req.prompt_tokens,
        "max_tokens": req.output_tokens,
        "stream": True,
    }
    t0 = time.monotonic()
    ttft: float | None = None
    try:
        async with session.post(url, json=body) as resp:
            if resp.status != 200:
                await resp.read()
                results.append(Result(req.arrival, None, None, resp.status))
                return
            latency: float | None = None
            async for line in resp.content:
                if not line.startswith(b"data:") or line.startswith(b"data: [DONE]"):
                    continue
                if ttft is None:
                    ttft = (time.monotonic() - t0) * scale
                try:
                    chunk = json.loads(line[5:])
                except ValueError:
                    continue
                # Prefer what the engine measured: wall-clock HTTP overhead times the
                # time scale would otherwise dominate at high compression.
                if chunk.get("ttft") is not None:
                    ttft = float(chunk["ttft"])
                if chunk.get("latency") is not None:
                    latency = float(chunk["latency"])
            if latency is None:
                latency = (time.monotonic() - t0) * scale
            results.append(
                Result(req.arrival, ttft, latency, 200, resp.headers.get("x-distillery-pod", ""))
            )
    except (TimeoutError, aiohttp.ClientError):
        results.append(Result(req.arrival, None, None, 0))


async def replay(
    requests: Sequence[Request],
    base_url: str,
    model: str,
    time_scale: float,
    progress: Callable[[list[Result], int], None] | None = None,
) -> list[Result]:
    url = base_url.rstrip("/") + "/v1/completions"
    results: list[Result] = []
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.monotonic()
        tasks = []
        for i, req in enumerate(requests):
            delay = req.arrival / time_scale - (time.monotonic() - start)
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_one(session, url, model, req, time_scale, results)))
            if progress is not None and i % 50 == 0:
                progress(results, i + 1)
        await asyncio.gather(*tasks)
    return results
