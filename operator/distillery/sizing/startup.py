"""How long a new replica takes to serve: load the weights, then start the engine.

The autoscaler counts starting replicas as incoming capacity, holds headroom for the
rises it has seen within this long, drains a backlog over two of them and waits two of
them before a scale-down, because this is minutes for a large model; the renderer sizes
the startup probe from it so a slow load is never killed as a hang. One estimate, used
by both (and by the simulator).
"""

from __future__ import annotations

from distillery.engines import ENGINES

# Bytes per second a replica reads weights at, by where they come from. hf:// downloads
# over the network on first start (2 Gbit/s: what one Hub download sustains from a
# cloud region); s3:// and gs:// are fetched by an init container from a same-region
# bucket (3.2 Gbit/s for one CLI sync) and then read from local disk; pvc:// and oci://
# (image volume) read from attached storage, and so does a filled weight cache
# ("cache": a ReadWriteMany claim, 1 GB/s is a mid-tier managed NFS or Lustre share);
# "local" is a copy on the node's own NVMe (2 GB/s: what safetensors loading sustains
# from one local SSD, well under the drive's sequential read).
# docs/sizing.md lists them; spec.scaling.startupSeconds overrides the whole estimate
# where a cluster measures otherwise.
LOAD_BYTES_PER_SECOND: dict[str, float] = {
    "hf": 250e6,
    "s3": 400e6,
    "gs": 400e6,
    "pvc": 1.0e9,
    "oci": 1.0e9,
    "cache": 1.0e9,
    "local": 2.0e9,
}
# Engine start after the weights are in memory: CUDA graph capture, torch.compile,
# KV-cache profiling (vLLM, SGLang), shard warm-up (TGI); llama.cpp maps the file.
ENGINE_START_SECONDS: dict[str, float] = {name: e.start_seconds for name, e in ENGINES.items()}


def cold_start_seconds(weights_bytes: float, source_scheme: str, engine: str) -> float:
    """Expected seconds from pod start to serving."""
    bandwidth = LOAD_BYTES_PER_SECOND.get(source_scheme, LOAD_BYTES_PER_SECOND["hf"])
    return weights_bytes / bandwidth + ENGINE_START_SECONDS.get(engine, 90.0)


def fill_seconds(checkpoint_bytes: float, source_scheme: str) -> float:
    """Expected seconds to fill a weight cache: one read of the checkpoint from its
    source (the engine's start is not part of it)."""
    bandwidth = LOAD_BYTES_PER_SECOND.get(source_scheme, LOAD_BYTES_PER_SECOND["hf"])
    return checkpoint_bytes / bandwidth


MIN_DRAIN_SECONDS = 60.0
MAX_DRAIN_SECONDS = 3600.0


def drain_seconds(max_model_len: int, tokens_per_second_per_sequence: float) -> float:
    """How long a replica that is being removed may take to finish what it serves.

    Reasoning models write thousands of tokens per answer: a 60 s grace period (the
    Kubernetes default is 30 s) cuts long answers off at every scale-down. The grace is
    the time to generate a whole context at the replica's per-sequence decode speed,
    within [1 min, 1 h]; an engine exits as soon as it is drained, so short answers do
    not wait for it.
    """
    if tokens_per_second_per_sequence <= 0:
        return MAX_DRAIN_SECONDS
    seconds = max_model_len / tokens_per_second_per_sequence
    return float(min(MAX_DRAIN_SECONDS, max(MIN_DRAIN_SECONDS, seconds)))
