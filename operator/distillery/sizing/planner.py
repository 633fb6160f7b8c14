"""The placement search: the cheapest allowed GPUs a model fits on, and why others lost.

Search space: allowed GPU types x tensor-parallel sizes x quantizations. A candidate is
feasible when the replica holds the weights, the runtime overhead and its KV cache within
``gpuMemoryUtilization`` of its GPUs' memory, on as many GPUs as one node offers, with a
tensor-parallel size the engines can split the model by (it divides the attention heads;
it divides the KV heads or is a multiple of them, in which case they are replicated).

A replica spans nodes (2 or 4 whole nodes of 8 GPUs, a LeaderWorkerSet group) only with
an engine that launches across nodes, and only when no allowed single node holds it: a
multi-node replica pays inter-node traffic and fails as a group, which the per-token
cost does not price. The engine says how it splits: vLLM runs tensor parallel within a
node and pipeline stages across nodes, SGLang one tensor-parallel group over all of them.

The KV cache must hold one ``maxModelLen`` sequence; a ``maxConcurrency`` the user
*wrote* also makes it hold that many ``typicalSequenceTokens`` sequences. A default the
user never set must not buy GPUs: a 7B at 16k context serves ~20 concurrent 4k sequences
on one L4, and two such replicas beat one tensor-parallel pair on PCIe-only GPUs.

Ranking: within a GPU type and quantization only the smallest tensor-parallel size that
fits is kept (more GPUs in one replica cost more than another replica for the same
speed-up); among the rest the lowest cost per million output tokens wins, each option
decoding as many sequences as it holds up to ``maxConcurrency`` -- a cheaper replica that
serves fewer tokens is not cheaper. Ties go to the GPU type listed first in
``placement.gpuTypes``, then to full precision, then to the cheaper replica-hour.
Every candidate considered is returned with the reason it lost, so ``distillery plan``
and the DMD status can explain the choice.

When nothing allowed fits, :class:`PlanError` says what would: another GPU type, more
GPUs, a quantization, or a lower ``maxConcurrency``, found by searching the whole
catalog with the constraints relaxed one at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from distillery.api.types import DistilledModelDeploymentSpec
from distillery.catalog import Catalog, GpuType, ModelEntry
from distillery.engines import ENGINES
from distillery.sizing import memory

TP_SIZES = (1, 2, 4, 8)
# Whole nodes a multi-node replica may span.
NODE_COUNTS = (2, 4)
# Only nodes this large make up a multi-node group: 8-GPU nodes are the ones clouds ship
# with the inter-node fabric (InfiniBand, EFA, RoCE) that tensor or pipeline parallelism
# across nodes needs; one- to four-GPU nodes sit on ordinary Ethernet, where a group
# would be slower than the smaller model it replaces.
GROUP_NODE_GPUS = 8
# From each engine's record (distillery.engines): which quantize a bf16 checkpoint to
# fp8 at load time, which quantizations each serves, which run on CPU-only nodes.
ONLINE_FP8_ENGINES = frozenset(name for name, e in ENGINES.items() if e.online_fp8)
ENGINE_QUANTIZATIONS: dict[str, frozenset[str]] = {
    name: e.quantizations for name, e in ENGINES.items()
}
CPU_ENGINES = frozenset(name for name, e in ENGINES.items() if e.cpu_image)
# Preference among equally priced options: keep precision.
QUANT_RANK = {"none": 0, "fp8": 1, "int8": 2, "awq": 3, "gptq": 3}


@dataclass(frozen=True)
class Requirements:
    """What one replica must hold, derived from a DMD spec."""

    model: ModelEntry
    engine: str
    quantization: str
    max_model_len: int
    max_concurrency: int
    typical_tokens: int
    utilization: float
    kv_cache_dtype: str
    gpu_types: tuple[str, ...]  # empty = every catalog type
    gpus_per_replica: int | None  # None = auto
    concurrency_explicit: bool = True  # serving.maxConcurrency written in the spec
    expert_parallel: bool = False  # placement.expertParallel
    max_nodes: int = 4  # placement.maxNodesPerReplica

    @property
    def kv_tokens_needed(self) -> int:
        if not self.concurrency_explicit:
            return self.max_model_len
        return max(self.max_model_len, self.max_concurrency * self.typical_tokens)

    def preference(self, gpu: str) -> int:
        """Position in placement.gpuTypes: ties go to the type listed first."""
        return self.gpu_types.index(gpu) if gpu in self.gpu_types else len(self.gpu_types)


@dataclass(frozen=True)
class Option:
    """One candidate placement and what it would give."""

    gpu: GpuType
    gpu_count: int
    quantization: str
    weights_gib: float
    overhead_gib: float
    kv_needed_gib: float
    budget_gib: float
    kv_cache_tokens: int
    max_concurrency: int
    cost_per_replica_hour: float
    cost_per_million_tokens: float | None
    decode_tokens_per_second: float
    feasible: bool
    reason: str = ""
    nodes: int = 1
    pipeline_parallel: int = 1
    expert_parallel: bool = False

    @property
    def tensor_parallel(self) -> int:
        return self.gpu_count // self.pipeline_parallel

    @property
    def gpus_per_node(self) -> int:
        """GPUs each pod of the replica requests (all of them on one node)."""
        return self.gpus // self.nodes

    @property
    def free_gib(self) -> float:
        return self.budget_gib - self.weights_gib - self.overhead_gib - self.kv_needed_gib

    @property
    def gpus(self) -> int:
        """GPUs a replica requests (0 on CPU-only nodes)."""
        return 0 if self.gpu.cpu_only else self.gpu_count

    @property
    def summary(self) -> str:
        if self.gpu.cpu_only:
            return self.gpu.name
        if self.nodes > 1:
            return f"{self.gpu.name}x{self.gpu_count} ({self.nodes} nodes)"
        return f"{self.gpu.name}x{self.gpu_count}"

    @property
    def per_token(self) -> float:
        """Cost per million output tokens, for ranking (inf when it decodes nothing)."""
        value = self.cost_per_million_tokens
        return round(value, 6) if value is not None else float("inf")

    def to_json(self, currency: str) -> dict[str, object]:
        out: dict[str, object] = {
            "placement": {
                "gpuType": self.gpu.name,
                "gpuProduct": self.gpu.product,
                "gpuCount": self.gpus,
                "tensorParallel": self.tensor_parallel,
                "quantization": self.quantization,
                "nodes": self.nodes,
                "pipelineParallel": self.pipeline_parallel,
                "expertParallel": self.expert_parallel,
            },
            "memory": {
                "weightsGiB": round(self.weights_gib, 2),
                "kvCacheGiB": round(self.kv_needed_gib, 2),
                "overheadGiB": round(self.overhead_gib, 2),
                "freeGiB": round(self.free_gib, 2),
                "budgetGiB": round(self.budget_gib, 2),
            },
            "kvCacheTokens": self.kv_cache_tokens,
            "maxConcurrency": self.max_concurrency,
            "costPerReplicaHour": round(self.cost_per_replica_hour, 4),
            "costPerMillionTokens": (
                round(self.cost_per_million_tokens, 4)
                if self.cost_per_million_tokens is not None
                else None
            ),
            "decodeTokensPerSecond": round(self.decode_tokens_per_second, 1),
            "currency": currency,
        }
        return out


@dataclass(frozen=True)
class Plan:
    """The chosen option and every alternative with the reason it lost."""

    model: ModelEntry
    requirements: Requirements
    chosen: Option
    alternatives: list[Option] = field(default_factory=list)
    currency: str = "USD"
    rule: str = ""  # why the chosen option won, in a sentence `plan` prints

    def to_json(self) -> dict[str, object]:
        out = self.chosen.to_json(self.currency)
        out["model"] = self.model.name
        out["kvTokensNeeded"] = self.requirements.kv_tokens_needed
        alts = []
        for alt in self.alternatives:
            entry = alt.to_json(self.currency)
            entry["feasible"] = alt.feasible
            entry["reason"] = alt.reason
            alts.append(entry)
        out["alternatives"] = alts
        return out


class PlanError(ValueError):
    """No allowed placement fits. ``alternatives`` says why each lost; the message says
    what would fit."""

    def __init__(self, message: str, alternatives: list[Option]):
        super().__init__(message)
        self.alternatives = alternatives


class UnknownModelError(ValueError):
    """The model is neither in the catalog nor described by spec.model.architecture."""


def resolve_model(spec: DistilledModelDeploymentSpec, catalog: Catalog) -> ModelEntry:
    if spec.model.architecture is not None:
        return ModelEntry.from_architecture(spec.model.name, spec.model.architecture)
    entry = catalog.model(spec.model.name)
    if entry is None:
        known = ", ".join(sorted(catalog.models))
        raise UnknownModelError(
            f"model {spec.model.name!r} is not in the catalog: describe it with "
            f"spec.model.architecture (paramsBillions, layers, hiddenSize, attentionHeads, "
            f"kvHeads, ...) or use a catalog model ({known})"
        )
    return entry


def requirements(spec: DistilledModelDeploymentSpec, catalog: Catalog) -> Requirements:
    model = resolve_model(spec, catalog)
    serving, placement = spec.serving, spec.placement
    typical = serving.typical_sequence_tokens or min(serving.max_model_len, 4096)
    gpu_types = () if placement.gpu_types == ["auto"] else tuple(placement.gpu_types)
    gpus = placement.gpus_per_replica
    explicit = serving.max_concurrency is not None
    return Requirements(
        model=model,
        engine=serving.engine,
        quantization=spec.model.quantization,
        max_model_len=serving.max_model_len,
        max_concurrency=serving.concurrency,
        typical_tokens=min(typical, serving.max_model_len),
        utilization=placement.gpu_memory_utilization,
        kv_cache_dtype=serving.kv_cache_dtype,
        gpu_types=gpu_types,
        gpus_per_replica=None if gpus == "auto" else int(gpus),
        concurrency_explicit=explicit,
        expert_parallel=placement.expert_parallel,
        max_nodes=placement.max_nodes_per_replica,
    )


def _quantizations(req: Requirements) -> list[str]:
    if req.model.released_fp8 and req.quantization in ("auto", "none", "fp8"):
        # Served as released: there are no bf16 weights to keep precision with.
        return ["fp8"]
    if req.quantization != "auto":
        return [req.quantization]
    quants = ["none"]
    if req.engine in ONLINE_FP8_ENGINES:
        quants.append("fp8")
    return quants


def _multi_node(engine: str) -> str | None:
    """How ``engine`` splits a replica across nodes (None: it cannot)."""
    record = ENGINES.get(engine)
    return record.multi_node if record else None


def layout(engine: str, gpu: GpuType, gpus: int) -> tuple[int, int]:
    """(nodes, pipeline stages) of a replica of ``gpus`` GPUs of ``gpu``: one node when
    they fit on one; else whole nodes, split as the engine launches across them."""
    split = _multi_node(engine)
    if (
        split is None
        or gpu.cpu_only
        or gpu.max_per_node < GROUP_NODE_GPUS
        or gpus <= gpu.max_per_node
        or gpus % gpu.max_per_node
        or gpus // gpu.max_per_node not in NODE_COUNTS
    ):
        return 1, 1
    nodes = gpus // gpu.max_per_node
    return nodes, (nodes if split == "pipeline" else 1)


def evaluate(req: Requirements, gpu: GpuType, gpus: int, quant: str) -> Option:
    """One candidate: its memory, capacity, cost, and whether (and why not) it works."""
    model = req.model
    nodes, stages = layout(req.engine, gpu, gpus)
    tp = gpus // stages
    est = memory.estimate(
        model, gpu, gpus, quant, req.utilization, req.max_concurrency, req.kv_cache_dtype, tp
    )
    kv_tokens = est.kv_tokens
    concurrency = kv_tokens // req.typical_tokens if req.typical_tokens else 0
    price = gpu.price_per_gpu_hour * gpus
    batch = max(1, min(concurrency, req.max_concurrency))
    tps = memory.decode_tokens_per_second(
        model, gpu, gpus, quant, batch, req.typical_tokens / 2, req.kv_cache_dtype, tp
    )
    per_mtok = price / (tps * 3600) * 1e6 if tps > 0 else None
    needed_kv = req.kv_tokens_needed * est.kv_per_token
    option = Option(
        gpu=gpu,
        gpu_count=gpus,
        quantization=quant,
        weights_gib=est.weights / memory.GIB,
        overhead_gib=est.overhead / memory.GIB,
        kv_needed_gib=needed_kv / memory.GIB,
        budget_gib=est.budget / memory.GIB,
        kv_cache_tokens=kv_tokens,
        max_concurrency=concurrency,
        cost_per_replica_hour=price,
        cost_per_million_tokens=per_mtok,
        decode_tokens_per_second=tps,
        feasible=True,
        nodes=nodes,
        pipeline_parallel=stages,
        expert_parallel=req.expert_parallel and gpus > 1,
    )
    reason = _infeasible_reason(req, option)
    return replace(option, feasible=False, reason=reason) if reason else option


def _infeasible_reason(req: Requirements, opt: Option) -> str:
    model, gpu, gpus, quant = req.model, opt.gpu, opt.tensor_parallel, opt.quantization
    if req.max_model_len > model.max_positions:
        return (
            f"maxModelLen {req.max_model_len} exceeds the model's {model.max_positions} positions"
        )
    if gpu.cpu_only and req.engine not in CPU_ENGINES:
        return f"engine {req.engine} needs a GPU (only llamacpp serves from CPU-only nodes)"
    if opt.gpu_count > gpu.max_per_node and (opt.nodes == 1 or opt.nodes > req.max_nodes):
        where = "this cluster's largest node offers" if gpu.nodes_observed else "per node"
        if _multi_node(req.engine) is None:
            why = f"a replica runs on one node: {req.engine} has no multi-node launch"
        elif gpu.max_per_node < GROUP_NODE_GPUS:
            why = (
                f"a replica spans nodes only of {GROUP_NODE_GPUS} GPUs or more, which carry "
                "the fabric multi-node serving needs"
            )
        elif opt.nodes > req.max_nodes:
            why = (
                f"a replica would span {opt.nodes} nodes; placement.maxNodesPerReplica "
                f"is {req.max_nodes}"
            )
        else:
            counts = " or ".join(str(n * gpu.max_per_node) for n in NODE_COUNTS)
            why = f"a replica spans {' or '.join(map(str, NODE_COUNTS))} whole nodes: {counts}"
        return f"{opt.gpu_count} GPUs exceed the {gpu.max_per_node} {gpu.name} {where} ({why})"
    if model.attention_heads % gpus:
        return (
            f"tensor parallel {gpus} does not divide the {model.attention_heads} attention "
            f"heads (valid sizes: {_sizes(model)})"
        )
    if model.kv_heads % gpus and gpus % model.kv_heads:
        return (
            f"tensor parallel {gpus} neither divides the {model.kv_heads} KV heads nor is a "
            f"multiple of them (valid sizes: {_sizes(model)})"
        )
    if quant not in ENGINE_QUANTIZATIONS.get(req.engine, frozenset()):
        return f"engine {req.engine} does not support quantization {quant}"
    if quant != "none" and quant not in gpu.quantizations:
        released = " (the model is released in fp8)" if model.released_fp8 else ""
        return f"{gpu.name} (compute {gpu.compute_capability}) does not support {quant}{released}"
    need = opt.weights_gib + opt.overhead_gib + opt.kv_needed_gib
    if need > opt.budget_gib:
        return (
            f"does not fit: needs {need:.1f} GiB (weights {opt.weights_gib:.1f}, KV "
            f"{opt.kv_needed_gib:.1f} for {req.kv_tokens_needed} tokens, overhead "
            f"{opt.overhead_gib:.1f}) of {opt.budget_gib:.1f} GiB, "
            f"short by {need - opt.budget_gib:.1f} GiB"
        )
    return ""


def _candidates(req: Requirements, catalog: Catalog) -> list[Option]:
    if req.gpu_types:
        names = req.gpu_types
    else:  # auto: CPU-only nodes only for the engine that runs there
        names = tuple(
            n for n, g in catalog.gpus.items() if not g.cpu_only or req.engine in CPU_ENGINES
        )
    out: list[Option] = []
    for name in names:
        gpu = catalog.gpu(name)
        if gpu is None:
            continue
        if gpu.cpu_only:
            sizes: tuple[int, ...] = (1,)
        elif req.gpus_per_replica:
            sizes = (req.gpus_per_replica,)
        else:
            sizes = TP_SIZES
            if _multi_node(req.engine):
                sizes += tuple(n * gpu.max_per_node for n in NODE_COUNTS if n <= req.max_nodes)
        for quant in _quantizations(req):
            for gpus in sizes:
                opt = evaluate(req, gpu, gpus, quant)
                out.append(opt)
                if "does not support" in opt.reason:
                    break  # the same at every size: one line says it
    return out


def _sizes(model: ModelEntry) -> str:
    return ", ".join(map(str, valid_tensor_parallel(model, max(TP_SIZES))))


def valid_tensor_parallel(model: ModelEntry, most: int = 64) -> list[int]:
    """Tensor-parallel sizes the engines can split ``model`` by, up to ``most``."""
    return [
        n
        for n in range(1, most + 1)
        if model.attention_heads % n == 0 and (model.kv_heads % n == 0 or n % model.kv_heads == 0)
    ]


def _rank(options: list[Option], req: Requirements) -> list[Option]:
    """Set aside feasible options another option on the same GPU type beats with no more
    GPUs and no less precision, then order: feasible by cost per token, infeasible after.

    So tensor parallelism grows only when the model does not fit on fewer GPUs, and a
    lower precision is used only when it saves GPUs: with ``quantization: auto``, fp8 is
    a way to fit, not a silent trade of quality for speed.
    """
    feasible_opts = [o for o in options if o.feasible]
    one_node = [o for o in feasible_opts if o.nodes == 1]
    ranked: list[Option] = []
    for opt in options:
        if opt.feasible and opt.nodes > 1 and one_node:
            top = min(one_node, key=lambda o: (o.per_token, req.preference(o.gpu.name)))
            why = (
                f"one node holds the model ({top.summary}, {top.quantization}): a replica "
                "spans nodes only when no allowed node holds it"
            )
            ranked.append(replace(opt, feasible=False, reason=why))
            continue
        better = [
            o
            for o in feasible_opts
            if o is not opt
            and o.gpu.name == opt.gpu.name
            and o.gpu_count <= opt.gpu_count
            and QUANT_RANK[o.quantization] <= QUANT_RANK[opt.quantization]
            and (o.gpu_count, o.quantization) != (opt.gpu_count, opt.quantization)
        ]
        if opt.feasible and better:
            top = min(better, key=lambda o: (o.gpu_count, QUANT_RANK[o.quantization]))
            if top.quantization == opt.quantization:
                why = f"a smaller tensor-parallel size ({top.gpu_count}) fits on {opt.gpu.name}"
            else:
                why = (
                    f"{top.quantization} precision fits on {top.gpu_count} {opt.gpu.name}: "
                    f"{opt.quantization} is used only where it saves GPUs"
                )
            opt = replace(opt, feasible=False, reason=why)
        ranked.append(opt)
    feasible = sorted(
        (o for o in ranked if o.feasible),
        key=lambda o: (
            o.per_token,
            req.preference(o.gpu.name),
            QUANT_RANK[o.quantization],
            round(o.cost_per_replica_hour, 6),
            o.gpu_count,
        ),
    )
    infeasible = [o for o in ranked if not o.feasible]
    return feasible + infeasible


def plan(spec: DistilledModelDeploymentSpec, catalog: Catalog) -> Plan:
    """Choose the placement for ``spec``; raise :class:`PlanError` when nothing fits."""
    req = requirements(spec, catalog)
    unknown = [n for n in req.gpu_types if catalog.gpu(n) is None]
    if unknown:
        raise PlanError(
            f"unknown GPU type(s) {', '.join(unknown)} in placement.gpuTypes; known: "
            f"{', '.join(sorted(catalog.gpus))} (extend the catalog to add one)",
            [],
        )
    if req.expert_parallel:
        engine = ENGINES.get(req.engine)
        if not req.model.is_moe:
            raise PlanError(
                f"placement.expertParallel needs a mixture-of-experts model; {req.model.name} "
                "is dense: remove expertParallel",
                [],
            )
        if engine is None or not engine.expert_parallel:
            raise PlanError(
                f"engine {req.engine} has no expert parallelism: use vllm or sglang, or "
                "remove placement.expertParallel",
                [],
            )
    ranked = _rank(_candidates(req, catalog), req)
    feasible = [o for o in ranked if o.feasible]
    if not feasible:
        raise PlanError(_nothing_fits_message(req, catalog, ranked), ranked)
    best = feasible[0]
    alternatives = []
    for opt in ranked[1:]:
        if opt.feasible:
            opt = replace(opt, feasible=True, reason=_lost_reason(best, opt, req, catalog.currency))
        alternatives.append(opt)
    return Plan(req.model, req, best, alternatives, catalog.currency, _rule(best, req, catalog))


def serving_batch(req: Requirements, opt: Option) -> int:
    """Sequences an option decodes at once: what it holds, up to maxConcurrency."""
    return max(1, min(opt.max_concurrency, req.max_concurrency))


def _rule(best: Option, req: Requirements, catalog: Catalog) -> str:
    """Why ``best`` won, in the sentence ``distillery plan`` prints."""
    if req.concurrency_explicit:
        among = (
            f"hold maxConcurrency {req.max_concurrency} sequences of {req.typical_tokens} tokens"
        )
    else:
        among = (
            f"hold one {req.max_model_len}-token sequence (maxConcurrency is not set; this "
            f"one holds {best.max_concurrency} of {req.typical_tokens} tokens)"
        )
    return (
        f"lowest cost per million output tokens ({best.per_token:.3f} {catalog.currency}) "
        f"decoding {serving_batch(req, best)} sequences at once, among options that {among}; "
        "ties go to the earlier placement.gpuTypes entry"
    )


def _lost_reason(best: Option, opt: Option, req: Requirements, currency: str) -> str:
    if opt.per_token > best.per_token:
        return (
            f"costs more per token: {opt.per_token:.3f} vs {best.per_token:.3f} {currency}/Mtok "
            f"({opt.cost_per_replica_hour:.2f} vs {best.cost_per_replica_hour:.2f} "
            f"{currency} per replica-hour)"
        )
    if req.preference(opt.gpu.name) > req.preference(best.gpu.name):
        return f"same cost per token, listed after {best.gpu.name} in placement.gpuTypes"
    if QUANT_RANK[opt.quantization] > QUANT_RANK[best.quantization]:
        return f"same cost, lower precision ({opt.quantization})"
    return "same cost per token, more per replica-hour"


def _nothing_fits_message(req: Requirements, catalog: Catalog, ranked: list[Option]) -> str:
    model = req.model
    if req.max_model_len > model.max_positions:
        return (
            f"serving.maxModelLen {req.max_model_len} exceeds {model.name}'s "
            f"{model.max_positions} positions: lower serving.maxModelLen"
        )
    split = [o for o in ranked if o.reason.startswith("tensor parallel")]
    if req.gpus_per_replica and split and len(split) == len(ranked):
        # Memory is not the problem: the engines cannot split the model this way.
        return (
            f"{model.name} cannot be split across {req.gpus_per_replica} GPUs: "
            f"{split[0].reason}. Set placement.gpusPerReplica to a valid size, or auto."
        )
    allowed = ", ".join(req.gpu_types) if req.gpu_types else "any catalog GPU"
    head = (
        f"{model.name} does not fit {allowed}"
        + (f" with {req.gpus_per_replica} GPUs per replica" if req.gpus_per_replica else "")
        + (f" at quantization {req.quantization}" if req.quantization != "auto" else "")
        + f" (needs a KV cache of {req.kv_tokens_needed} tokens)."
    )
    node_bound = [o for o in ranked if "largest node offers" in o.reason]
    if node_bound:
        head += f" On this cluster: {node_bound[0].summary} {node_bound[0].reason}."
    hints: list[str] = []

    def cheapest(r: Requirements) -> Option | None:
        feas = [o for o in _rank(_candidates(r, catalog), r) if o.feasible]
        return feas[0] if feas else None

    relaxations = [
        ("placement.gpusPerReplica: auto", replace(req, gpus_per_replica=None)),
        (
            f"placement.maxNodesPerReplica: {max(NODE_COUNTS)}",
            replace(req, gpus_per_replica=None, max_nodes=max(NODE_COUNTS)),
        ),
        ("model.quantization: auto", replace(req, quantization="auto")),
        ("model.quantization: fp8", replace(req, quantization="fp8", gpus_per_replica=None)),
        ("placement.gpuTypes: [auto]", replace(req, gpu_types=(), gpus_per_replica=None)),
        (
            "placement.gpuTypes: [auto] with model.quantization: fp8",
            replace(req, gpu_types=(), gpus_per_replica=None, quantization="fp8"),
        ),
    ]
    seen: set[str] = set()
    for change, relaxed in relaxations:
        if relaxed == req:
            continue
        opt = cheapest(relaxed)
        if opt is not None and f"{opt.summary}/{opt.quantization}" not in seen:
            seen.add(f"{opt.summary}/{opt.quantization}")
            hints.append(
                f"{opt.gpu_count}x {opt.gpu.name}"
                + (f" on {opt.nodes} nodes" if opt.nodes > 1 else "")
                + f" at {opt.quantization} "
                f"({opt.cost_per_replica_hour:.2f} {catalog.currency}/h) with {change}"
            )
        if len(hints) >= 2:
            break
    # The largest concurrency the best-budget allowed option could hold at this length.
    roomy = [o for o in ranked if o.reason.startswith("does not fit")]
    if roomy:
        top = max(roomy, key=lambda o: o.kv_cache_tokens)
        if top.kv_cache_tokens >= req.max_model_len and req.typical_tokens:
            conc = top.kv_cache_tokens // req.typical_tokens
            if 0 < conc < req.max_concurrency:
                hints.append(
                    f"{top.gpu_count}x {top.gpu.name} at {top.quantization} with "
                    f"serving.maxConcurrency: {conc}"
                )
    if not hints:
        return head + " Nothing in the catalog fits it: add a larger GPU type to the catalog."
    return head + " Would fit: " + "; or ".join(hints) + "."
