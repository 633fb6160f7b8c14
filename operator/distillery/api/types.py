"""The DistilledModelDeployment API: spec and status as pydantic models.

These models are the single source of truth. The CRD in ``crds/`` (and in the Helm chart)
is generated from them by :mod:`distillery.api.crd`; field descriptions become
``kubectl explain`` text; cross-field rules are declared here as CEL
(``x-kubernetes-validations``) so the API server rejects bad input before the operator
sees it, and are checked again by the models' own validators for manifests read from
files (``distillery plan``/``render``), so both paths give the same message.

Field names are the camelCase wire names; Python attributes are snake_case. Models
forbid unknown fields so a typo in a manifest is an error, not a silently ignored key.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, model_validator
from pydantic.alias_generators import to_camel

GROUP = "distillery.dev"
VERSION = "v1alpha1"
KIND = "DistilledModelDeployment"
PLURAL = "distilledmodeldeployments"
SINGULAR = "distilledmodeldeployment"
SHORT_NAMES = ["dmd"]
CATEGORIES = ["distillery"]
API_VERSION = f"{GROUP}/{VERSION}"

Engine = Literal["vllm", "sglang", "tgi", "llamacpp"]
Quantization = Literal["auto", "none", "fp8", "int8", "awq", "gptq"]
Objective = Literal["latency", "balanced", "cost"]
ScalingMode = Literal["operator", "external"]
RolloutStrategy = Literal["RollingUpdate", "Canary"]
# The longest message a status field keeps (the CRD's maxLength): a longer one would
# make the whole status patch fail, so writers clip to it (see clip()).
STATUS_MESSAGE_LIMIT = 1024
# Why the autoscaler holds below what the load asks: ScalingLimited's reason.
LimitReason = Literal["MaxReplicas", "BudgetLimited", "Unschedulable"]

GPU_TYPE_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
MODEL_URI = r"^(hf|pvc|s3|gs|oci)://[^\s]+$"
ENV_NAME = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"


@dataclass(frozen=True)
class CrossFieldRule:
    """A rule across fields, declared once: the API server checks ``cel`` (an
    ``x-kubernetes-validations`` entry of the generated CRD), the models check ``holds``
    for manifests read from files, and both answer with ``message``."""

    cel: str
    message: str
    holds: Callable[[Any], bool]
    field_path: str | None = None

    def schema(self) -> dict[str, str]:
        entry = {"rule": self.cel, "message": self.message}
        if self.field_path:
            entry["fieldPath"] = self.field_path
        return entry


def _rules(*rules: CrossFieldRule) -> dict[str, Any]:
    return {"x-kubernetes-validations": [r.schema() for r in rules]}


def clip(text: str, limit: int = STATUS_MESSAGE_LIMIT) -> str:
    """``text`` cut to ``limit`` characters, marked when cut."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
        frozen=True,
    )
    # The model's cross-field rules; their CEL goes into the CRD through model_config.
    RULES: ClassVar[tuple[CrossFieldRule, ...]] = ()

    @model_validator(mode="after")
    def _cross_field_rules(self) -> Self:
        for rule in type(self).RULES:
            if not rule.holds(self):
                raise ValueError(rule.message)
        return self

    def to_wire(self) -> dict[str, Any]:
        """The object as it appears in a manifest: camelCase, unset optionals omitted."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


IntOrAuto = Annotated[
    int | Literal["auto"],
    WithJsonSchema(
        {"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}]}
    ),
]


class SecretKeyRef(_Model):
    """A key in a Secret in the DMD's namespace. Its value is only ever passed by reference."""

    name: str = Field(
        description="Name of the Secret.",
        min_length=1,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
    )
    key: str = Field(
        default="token",
        description="Key within the Secret.",
        min_length=1,
        max_length=253,
        pattern=r"^[-._a-zA-Z0-9]+$",
    )


class ConfigMapKeyRef(_Model):
    """A key in a ConfigMap in the DMD's namespace."""

    name: str = Field(
        description="Name of the ConfigMap.",
        min_length=1,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
    )
    key: str = Field(
        default="token",
        description="Key within the ConfigMap.",
        min_length=1,
        max_length=253,
        pattern=r"^[-._a-zA-Z0-9]+$",
    )


class ModelArchitecture(_Model):
    """Architecture of a model that is not in the catalog (values from its config.json)."""

    params_billions: float = Field(description="Total parameters, in billions.", gt=0, le=2000)
    layers: int = Field(description="num_hidden_layers.", ge=1, le=1000)
    hidden_size: int = Field(description="hidden_size.", ge=64, le=65536)
    intermediate_size: int | None = Field(
        default=None,
        description="intermediate_size (defaults to 4 x hiddenSize).",
        ge=64,
        le=262144,
    )
    attention_heads: int = Field(description="num_attention_heads.", ge=1, le=1024)
    kv_heads: int = Field(description="num_key_value_heads.", ge=1, le=1024)
    head_dim: int | None = Field(
        default=None,
        description="head_dim (defaults to hiddenSize / attentionHeads).",
        ge=8,
        le=1024,
    )
    vocab_size: int = Field(default=128256, description="vocab_size.", ge=1, le=10_000_000)
    tied_embeddings: bool = Field(default=False, description="tie_word_embeddings.")
    max_positions: int = Field(
        default=131072, description="max_position_embeddings.", ge=128, le=10_000_000
    )
    dtype: Literal["bfloat16", "float16", "float8"] = Field(
        default="bfloat16",
        description="The weights' format as released (float8: an FP8 checkpoint, served "
        "at one byte per weight).",
    )
    experts: int | None = Field(
        default=None,
        description="Mixture of experts: routed experts per MoE layer (n_routed_experts or "
        "num_experts). Memory counts all of them.",
        ge=2,
        le=4096,
    )
    experts_per_token: int | None = Field(
        default=None,
        description="Mixture of experts: experts each token uses (num_experts_per_tok).",
        ge=1,
        le=256,
    )
    moe_intermediate_size: int | None = Field(
        default=None, description="Mixture of experts: moe_intermediate_size.", ge=1, le=262144
    )
    moe_layers: int | None = Field(
        default=None,
        description="Mixture of experts: how many layers are MoE (defaults to all; DeepSeek: "
        "num_hidden_layers - first_k_dense_replace).",
        ge=1,
        le=1000,
    )
    kv_lora_rank: int | None = Field(
        default=None,
        description="Multi-head latent attention: kv_lora_rank (the KV cache holds this "
        "latent plus the rope key per token and layer).",
        ge=1,
        le=65536,
    )
    qk_rope_head_dim: int | None = Field(
        default=None, description="Multi-head latent attention: qk_rope_head_dim.", ge=0, le=4096
    )

    RULES = (
        CrossFieldRule(
            cel="self.kvHeads <= self.attentionHeads",
            message="kvHeads must not exceed attentionHeads",
            holds=lambda m: m.kv_heads <= m.attention_heads,
            field_path=".kvHeads",
        ),
        CrossFieldRule(
            cel="has(self.experts) == has(self.expertsPerToken) && "
            "has(self.experts) == has(self.moeIntermediateSize)",
            message="a mixture of experts needs experts, expertsPerToken and "
            "moeIntermediateSize together",
            holds=lambda m: (
                (m.experts is None)
                == (m.experts_per_token is None)
                == (m.moe_intermediate_size is None)
            ),
            field_path=".experts",
        ),
        CrossFieldRule(
            cel="!has(self.experts) || !has(self.expertsPerToken) || "
            "self.expertsPerToken <= self.experts",
            message="expertsPerToken must not exceed experts",
            holds=lambda m: (
                m.experts is None or m.experts_per_token is None or m.experts_per_token <= m.experts
            ),
            field_path=".expertsPerToken",
        ),
        CrossFieldRule(
            cel="!has(self.moeLayers) || self.moeLayers <= self.layers",
            message="moeLayers must not exceed layers",
            holds=lambda m: m.moe_layers is None or m.moe_layers <= m.layers,
            field_path=".moeLayers",
        ),
    )
    model_config = ConfigDict(json_schema_extra=_rules(*RULES))


class ModelCacheSpec(_Model):
    """A weight cache per model revision: a volume filled once by a download Job and
    mounted read-only by every replica, so a scale-up reads weights from the volume
    instead of downloading them again."""

    mode: Literal["None", "Shared", "NodeLocal"] = Field(
        default="None",
        description="None: every pod downloads the weights itself. Shared: one "
        "PersistentVolumeClaim per model revision, filled by a Job before any serving pod "
        "starts (no GPU is held while it fills) and mounted read-only by every replica. "
        "NodeLocal: the Shared claim, then copied by a DaemonSet to `nodePath` on every "
        "node the replicas may land on before they start; replicas read the node's copy "
        "(hostPath, read-only), and a pod on a node that joined later waits for its copy.",
    )
    node_path: str = Field(
        default="/var/lib/distillery/weights",
        description="NodeLocal: the folder on each node (local NVMe) that holds the copies, "
        "one subfolder per namespace and cache claim. The namespace must admit hostPath "
        "volumes (Pod Security baseline or privileged).",
        max_length=200,
        pattern=r"^/[-._/A-Za-z0-9]*$",
    )
    storage_class_name: str | None = Field(
        default=None,
        description="StorageClass of the cache claim (one with ReadWriteMany for replicas on "
        "several nodes); the cluster's default when unset.",
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
    )
    size_gi_b: int | None = Field(
        default=None,
        alias="sizeGiB",
        description="Claim size in GiB. Default: the checkpoint's size from the model's "
        "parameters and dtype, plus 10% and 2 GiB. A size below the checkpoint is refused.",
        ge=1,
        le=100_000,
    )
    access_mode: Literal["ReadWriteMany", "ReadWriteOnce"] = Field(
        default="ReadWriteMany",
        description="ReadWriteMany lets replicas on any node mount the cache; "
        "ReadWriteOnce only suits clusters where every replica lands on one node.",
    )
    delete_policy: Literal["Delete", "Retain"] = Field(
        default="Delete",
        description="What happens to the cache claims when the DMD is deleted: Delete "
        "(owned by the DMD, garbage-collected with it) or Retain (kept, and adopted again by "
        "a DMD of the same name and revision).",
    )
    previous_revision_grace_seconds: int = Field(
        default=3600,
        description="How long the cache of a replaced revision is kept after the new one "
        "is complete (a rollback within it starts from the cache). Kubernetes keeps a claim "
        "that a running pod still mounts until that pod is gone.",
        ge=0,
        le=30 * 24 * 3600,
    )


class ModelSpec(_Model):
    """Which model to serve and where its weights come from."""

    name: str = Field(
        description="Catalog key or any Hugging Face style id, e.g. "
        "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B. Models outside the catalog need "
        "`architecture`.",
        min_length=1,
        max_length=253,
        pattern=r"^[A-Za-z0-9][-._/A-Za-z0-9]*$",
    )
    uri: str | None = Field(
        default=None,
        description="Where the weights are: hf://org/name, "
        "pvc://claim/path, s3://bucket/path, gs://bucket/path or oci://registry/repo:tag. "
        "Defaults to hf://<name>.",
        max_length=1024,
        pattern=MODEL_URI,
    )
    revision: str = Field(
        default="main",
        description="Model revision (branch, tag or commit). Changing it "
        "rolls the serving pods out.",
        min_length=1,
        max_length=128,
        pattern=r"^[-._/A-Za-z0-9]+$",
    )
    teacher: str | None = Field(
        default=None,
        description="Model this one was distilled from (informational).",
        max_length=253,
    )
    architecture: ModelArchitecture | None = Field(
        default=None,
        description="Architecture for models not in the catalog; overrides "
        "the catalog entry when set.",
    )
    quantization: Quantization = Field(
        default="auto",
        description="Weight quantization. auto lets the planner pick "
        "bf16 or fp8 (online, where the GPU supports it) by cost; int8, awq and gptq "
        "expect a checkpoint quantized that way.",
    )
    credentials_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="Secret holding the token for the model source "
        "(HF_TOKEN for hf://). Never copied: passed to the pod by secretKeyRef.",
    )
    cache: ModelCacheSpec = Field(
        default_factory=ModelCacheSpec,
        description="Weight cache: fill a volume once per revision instead of downloading "
        "in every pod.",
    )

    RULES = (
        CrossFieldRule(
            cel="!has(self.cache) || !has(self.cache.mode) || self.cache.mode == 'None' || "
            "!has(self.uri) || !self.uri.startsWith('pvc://')",
            message="cache.mode Shared or NodeLocal needs a source to download from: a "
            "pvc:// model is already on a volume (set cache.mode: None)",
            holds=lambda m: m.cache.mode == "None" or not (m.uri or "").startswith("pvc://"),
            field_path=".cache.mode",
        ),
    )
    model_config = ConfigDict(json_schema_extra=_rules(*RULES))


class EnvVarSource(_Model):
    """Source of an environment variable's value: a key of a Secret or ConfigMap."""

    secret_key_ref: SecretKeyRef | None = Field(default=None, description="A Secret key.")
    config_map_key_ref: ConfigMapKeyRef | None = Field(default=None, description="A ConfigMap key.")

    RULES = (
        CrossFieldRule(
            cel="has(self.secretKeyRef) != has(self.configMapKeyRef)",
            message="valueFrom needs exactly one of secretKeyRef or configMapKeyRef",
            holds=lambda m: (m.secret_key_ref is None) != (m.config_map_key_ref is None),
        ),
    )
    model_config = ConfigDict(json_schema_extra=_rules(*RULES))


class EnvVar(_Model):
    """An environment variable for the serving container."""

    name: str = Field(description="Variable name.", min_length=1, max_length=128, pattern=ENV_NAME)
    value: str | None = Field(default=None, description="Literal value.", max_length=4096)
    value_from: EnvVarSource | None = Field(
        default=None, description="Value from a Secret or ConfigMap key."
    )

    RULES = (
        CrossFieldRule(
            cel="!(has(self.value) && has(self.valueFrom))",
            message="set value or valueFrom, not both",
            holds=lambda m: m.value is None or m.value_from is None,
        ),
    )
    model_config = ConfigDict(json_schema_extra=_rules(*RULES))


class TemplateRef(_Model):
    """A ConfigMap holding a user pod template (sandboxed Jinja2)."""

    name: str = Field(
        description="ConfigMap name.",
        min_length=1,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
    )
    key: str = Field(
        default="pod.yaml.j2",
        description="Key in the ConfigMap.",
        min_length=1,
        max_length=253,
        pattern=r"^[-._a-zA-Z0-9]+$",
    )


# Not a schema default: the API server would write it into every object, and the planner
# must tell a written maxConcurrency (a requirement) from an unset one.
DEFAULT_MAX_CONCURRENCY = 64


class ServingSpec(_Model):
    """How the model is served."""

    engine: Engine = Field(default="vllm", description="Serving engine.")
    image: str | None = Field(
        default=None,
        description="Container image; the operator's per-engine default when unset.",
        max_length=512,
        pattern=r"^[^\s]+$",
    )
    max_model_len: int = Field(
        default=32768,
        description="Context budget per sequence (prompt + output tokens).",
        ge=256,
        le=10_000_000,
    )
    max_concurrency: int | None = Field(
        default=None,
        description="Sequences per replica the KV cache must hold at typicalSequenceTokens, "
        "and the engine's batch limit. Unset: the planner only needs one maxModelLen "
        "sequence to fit, and the engine batches up to 64.",
        ge=1,
        le=4096,
    )
    typical_sequence_tokens: int | None = Field(
        default=None,
        description="Typical tokens per sequence (prompt + output) used to "
        "size the KV cache for maxConcurrency. Default: min(maxModelLen, 4096).",
        ge=16,
        le=10_000_000,
    )
    kv_cache_dtype: Literal["auto", "fp8"] = Field(
        default="auto",
        description="KV-cache dtype: auto (the model's dtype) or fp8 (half the memory per token).",
    )
    extra_args: list[Annotated[str, Field(max_length=1024)]] = Field(
        default_factory=list,
        description="Extra engine arguments, appended verbatim.",
        max_length=64,
    )
    env: list[EnvVar] = Field(
        default_factory=list,
        description="Extra environment variables for the serving container.",
        max_length=64,
    )
    template_ref: TemplateRef | None = Field(
        default=None, description="ConfigMap with a user pod template override."
    )

    @property
    def concurrency(self) -> int:
        """maxConcurrency, or the engine batch limit used when it is not written."""
        return self.max_concurrency or DEFAULT_MAX_CONCURRENCY


class Toleration(_Model):
    """A pod toleration (as in core/v1)."""

    key: str | None = Field(default=None, max_length=316)
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = Field(default=None, max_length=63)
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = Field(default=None, ge=0)


class PlacementSpec(_Model):
    """Where replicas may run. The planner picks the cheapest allowed option that fits."""

    gpu_types: list[Annotated[str, Field(max_length=63, pattern=GPU_TYPE_NAME)]] = Field(
        default_factory=lambda: ["auto"],
        description="Allowed GPU types (catalog names such as nvidia-l40s, "
        "nvidia-h100-80gb), or [auto] for every catalog type. The planner picks the lowest "
        "cost per output token among them; on a tie the one listed first wins.",
        min_length=1,
        max_length=16,
    )
    gpus_per_replica: IntOrAuto = Field(
        default="auto",
        description="GPUs per replica, or auto for the smallest that fits. More than one "
        "node offers makes a replica span whole nodes (a LeaderWorkerSet group; vLLM and "
        "SGLang only).",
    )
    gpu_memory_utilization: float = Field(
        default=0.90, description="Fraction of GPU memory the engine may use.", ge=0.5, le=0.98
    )
    node_selector: dict[str, Annotated[str, Field(max_length=63)]] = Field(
        default_factory=dict, description="Extra node labels the pods require.", max_length=32
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, description="Extra pod tolerations.", max_length=32
    )
    spot: bool = Field(default=False, description="Allow spot/preemptible GPU nodes.")
    max_nodes_per_replica: int = Field(
        default=4,
        description="Most nodes one replica may span when no allowed node holds the model "
        "(whole 8-GPU nodes, a LeaderWorkerSet group, vLLM and SGLang only). 1 keeps every "
        "replica on one node.",
        ge=1,
        le=4,
    )
    expert_parallel: bool = Field(
        default=False,
        description="Mixture-of-experts models: shard the experts across the replica's GPUs "
        "(expert parallelism: vLLM --enable-expert-parallel, SGLang --ep-size) instead of "
        "splitting every expert. Memory is the same; it trades all-reduce for all-to-all "
        "traffic.",
    )

    RULES = (
        CrossFieldRule(
            cel="!('auto' in self.gpuTypes) || size(self.gpuTypes) == 1",
            message="gpuTypes: auto cannot be combined with named GPU types",
            holds=lambda m: "auto" not in m.gpu_types or len(m.gpu_types) == 1,
            field_path=".gpuTypes",
        ),
        CrossFieldRule(
            cel="type(self.gpusPerReplica) == int ? (self.gpusPerReplica >= 1 && "
            "self.gpusPerReplica <= 64) : self.gpusPerReplica == 'auto'",
            message="gpusPerReplica must be auto or an integer from 1 to 64",
            holds=lambda m: (
                not isinstance(m.gpus_per_replica, int) or 1 <= m.gpus_per_replica <= 64
            ),
            field_path=".gpusPerReplica",
        ),
    )
    model_config = ConfigDict(json_schema_extra=_rules(*RULES))


class SLO(_Model):
    """The latency objective the autoscaler holds."""

    ttft_seconds: float = Field(
        default=2.0, description="Time to first token, seconds.", gt=0, le=600
    )
    percentile: float = Field(
        default=95, description="Percentile of requests that must meet ttftSeconds.", ge=50, le=99.9
    )


class ScalingTargets(_Model):
    """Optional per-replica targets that override the ones derived from the model and GPU."""

    queue_per_replica: float | None = Field(
        default=None, description="Waiting requests per replica.", ge=0, le=10000
    )
    running_per_replica: float | None = Field(
        default=None, description="Running requests per replica.", gt=0, le=10000
    )
    kv_cache_utilization: float | None = Field(
        default=None, description="KV-cache use (0-1).", gt=0, le=1
    )


class ScaleUpPolicy(_Model):
    """Damping for scaling up."""

    stabilization_seconds: int = Field(
        default=0,
        description="Window over which the recommendation must hold before acting.",
        ge=0,
        le=86400,
    )
    max_step: int | None = Field(
        default=None,
        description="Most replicas added per decision (unset: no limit).",
        ge=1,
        le=1000,
    )


class ScaleDownPolicy(_Model):
    """Damping for scaling down."""

    stabilization_seconds: int = Field(
        default=300,
        description="Window over which the lower recommendation must hold before acting.",
        ge=0,
        le=86400,
    )
    max_step: int | None = Field(
        default=None,
        description="Most replicas removed per decision (unset: no limit).",
        ge=1,
        le=1000,
    )


class ScalingSpec(_Model):
    """Autoscaling bounds, objective and damping."""

    min_replicas: int = Field(
        default=1,
        description="Fewest replicas. At 0, demand at the router wakes it: demandQuery, "
        "or the endpoint picker's queue of a ReasoningRoute it is a tier of.",
        ge=0,
        le=1000,
    )
    max_replicas: int = Field(default=8, description="Most replicas.", ge=1, le=1000)
    objective: Objective = Field(
        default="balanced",
        description="latency: headroom first; cost: fewest GPUs that hold the SLO; balanced.",
    )
    slo: SLO = Field(default_factory=SLO, description="Latency objective.")
    targets: ScalingTargets = Field(
        default_factory=ScalingTargets, description="Per-replica target overrides."
    )
    max_cost_per_hour: float | None = Field(
        default=None,
        description="Budget for all replicas, per hour, in the catalog currency.",
        gt=0,
        le=1e7,
    )
    scale_up: ScaleUpPolicy = Field(default_factory=ScaleUpPolicy, description="Scale-up damping.")
    scale_down: ScaleDownPolicy = Field(
        default_factory=ScaleDownPolicy, description="Scale-down damping."
    )
    startup_seconds: int | None = Field(
        default=None,
        description="Expected seconds from a new replica's start to serving "
        "(weights load + engine start). Default: estimated from the weights' size and the "
        "model source. The autoscaler holds headroom for the rise it has seen within this "
        "long, and waits two of them before a scale-down.",
        ge=1,
        le=7200,
    )
    mode: ScalingMode = Field(
        default="operator",
        description="operator: distillery "
        "scales; external: leave spec.replicas to HPA/KEDA via /scale.",
    )
    demand_query: str | None = Field(
        default=None,
        description="PromQL for demand that "
        "exists while no replica runs (a gateway metric): what wakes a DMD at zero. "
        "Default for a tier of a ReasoningRoute on the Inference Extension: its endpoint "
        "picker's flow-control queue.",
        max_length=4096,
    )

    RULES = (
        CrossFieldRule(
            cel="self.minReplicas <= self.maxReplicas",
            message="minReplicas must be less than or equal to maxReplicas",
            holds=lambda m: m.min_replicas <= m.max_replicas,
            field_path=".minReplicas",
        ),
    )
    model_config = ConfigDict(json_schema_extra=_rules(*RULES))


class CanaryStep(_Model):
    """One canary step: send `weight` percent of traffic, then wait."""

    weight: int = Field(description="Percent of traffic to the canary.", ge=1, le=100)
    pause_seconds: int = Field(
        default=300, description="Time at this weight before analysis decides.", ge=0, le=86400
    )


class CanaryAnalysis(_Model):
    """What a canary must show to go on."""

    max_ttft_ratio: float = Field(
        default=1.2,
        alias="maxTTFTRatio",
        description="Canary TTFT percentile over the stable one, at most.",
        gt=0,
        le=100,
    )
    max_error_rate: float = Field(
        default=0.01, description="Failed request fraction, at most.", ge=0, le=1
    )
    min_requests: int = Field(
        default=20,
        description="Requests the canary must finish in a step before analysis can pass "
        "or fail it; fewer holds the step (annotate distillery.dev/rollout=promote to go on).",
        ge=0,
        le=1_000_000,
    )


class ParentRef(_Model):
    """A Gateway (or listener of one) the route attaches to."""

    name: str = Field(min_length=1, max_length=253, description="Gateway name.")
    namespace: str | None = Field(
        default=None, max_length=63, description="Gateway namespace (default: the DMD's)."
    )
    section_name: str | None = Field(
        default=None, max_length=253, description="Listener name on the Gateway."
    )


class HTTPRouteSpec(_Model):
    """Exact canary weights through a Gateway API HTTPRoute that distillery owns."""

    parent_refs: list[ParentRef] = Field(
        min_length=1, max_length=32, description="Gateways the route attaches to."
    )
    hostnames: list[str] = Field(
        default_factory=list, max_length=16, description="Hostnames the route serves."
    )


class CanarySpec(_Model):
    """Canary rollout steps and analysis."""

    steps: list[CanaryStep] = Field(
        default_factory=lambda: [CanaryStep(weight=10), CanaryStep(weight=50)],
        description="Steps in order; promotion follows the last.",
        min_length=1,
        max_length=20,
    )
    analysis: CanaryAnalysis = Field(default_factory=CanaryAnalysis, description="Pass criteria.")
    http_route: HTTPRouteSpec | None = Field(
        default=None,
        alias="httpRoute",
        description="When the Gateway API is installed: an HTTPRoute named like the DMD "
        "that sends each step's exact weight to the canary. Without it (or without the "
        "API) traffic follows the replica ratio behind the DMD's Service.",
    )


class RolloutSpec(_Model):
    """How a change of model revision, quantization, engine or image rolls out."""

    strategy: RolloutStrategy = Field(default="RollingUpdate", description="Rollout strategy.")
    max_surge_gpus: int | None = Field(
        default=None,
        alias="maxSurgeGPUs",
        description="GPUs a rollout may use above the running replicas' (whole replicas: "
        "8 with 2 GPUs per replica surges 4 replicas). Default: one replica's GPUs. Fewer "
        "than one replica needs replaces one replica at a time, as the operator also does "
        "when a surge pod cannot be scheduled.",
        ge=0,
        le=4096,
    )
    canary: CanarySpec | None = Field(default=None, description="Canary settings.")

    RULES = (
        CrossFieldRule(
            cel="self.strategy != 'Canary' || has(self.canary)",
            message="strategy Canary needs rollout.canary with its steps",
            holds=lambda m: m.strategy != "Canary" or m.canary is not None,
            field_path=".canary",
        ),
    )
    model_config = ConfigDict(json_schema_extra=_rules(*RULES))


class DistilledModelDeploymentSpec(_Model):
    """Desired state of a DistilledModelDeployment."""

    replicas: int | None = Field(
        default=None,
        description="Desired replicas, written "
        "through /scale by the autoscaler, kubectl scale or "
        "HPA/KEDA. Leave it out of Git.",
        ge=0,
        le=1000,
    )
    model: ModelSpec = Field(description="The model to serve.")
    serving: ServingSpec = Field(default_factory=ServingSpec, description="Engine and its limits.")
    placement: PlacementSpec = Field(default_factory=PlacementSpec, description="GPU placement.")
    scaling: ScalingSpec = Field(default_factory=ScalingSpec, description="Autoscaling.")
    rollout: RolloutSpec = Field(default_factory=RolloutSpec, description="Rollout strategy.")

    RULES = (
        CrossFieldRule(
            cel="self.serving.maxModelLen <= 10000000",
            message="serving.maxModelLen is too large",
            holds=lambda m: m.serving.max_model_len <= 10_000_000,
        ),
    )
    model_config = ConfigDict(json_schema_extra=_rules(*RULES))


# ---- status ---------------------------------------------------------------------------

ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(_Model):
    """A standard Kubernetes condition (metav1.Condition)."""

    type: str = Field(max_length=316)
    status: ConditionStatus
    reason: str = Field(max_length=STATUS_MESSAGE_LIMIT)
    message: str = Field(default="", max_length=32768)
    observed_generation: int | None = Field(default=None, ge=0)
    last_transition_time: str = Field(description="RFC 3339 time.")


class MemoryBreakdown(_Model):
    """Per-replica memory, GiB."""

    weights_gi_b: float = Field(alias="weightsGiB")
    kv_cache_gi_b: float = Field(alias="kvCacheGiB")
    overhead_gi_b: float = Field(alias="overheadGiB")
    free_gi_b: float = Field(alias="freeGiB")
    budget_gi_b: float = Field(alias="budgetGiB")


class PlacementStatus(_Model):
    """The placement the planner chose."""

    gpu_type: str
    gpu_product: str
    gpu_count: int = Field(description="GPUs per replica, over all its nodes.")
    tensor_parallel: int
    pipeline_parallel: int = 1
    nodes: int = Field(
        default=1, description="Nodes a replica spans (more than 1: a LeaderWorkerSet group)."
    )
    expert_parallel: bool = False
    quantization: str
    summary: str = Field(description="GPU type x count, for kubectl get.")
    memory: MemoryBreakdown
    kv_cache_tokens: int
    max_concurrency: int


class CostStatus(_Model):
    """What the deployment costs."""

    currency: str
    per_replica_hour: float
    current_per_hour: float
    per_million_tokens: float | None = None


class ScalingDecision(_Model):
    """One autoscaler decision and the numbers behind it."""

    time: str
    from_: int = Field(alias="from")
    to: int
    reason: str = Field(max_length=STATUS_MESSAGE_LIMIT)
    inputs: dict[str, float] = Field(default_factory=dict)


class AutoscalingStatus(_Model):
    """The autoscaler's view: whether it can see metrics, what bounds it, what it did."""

    desired_replicas: int | None = None
    metrics_available: bool | None = None
    metrics_message: str | None = Field(default=None, max_length=STATUS_MESSAGE_LIMIT)
    limited_by: str | None = Field(
        default=None,
        max_length=STATUS_MESSAGE_LIMIT,
        description="What holds the replicas below the load.",
    )
    limited_reason: LimitReason | None = Field(
        default=None, description="limitedBy's kind: ScalingLimited's reason."
    )
    headroom_replicas: float | None = Field(
        default=None,
        description="Replicas of demand held above the current level: how far this DMD's "
        "demand rose within one cold start in its history (a high quantile). Empty "
        "before 20 minutes of history, while the objective's prior share is held "
        "(40% / 20% / 10% for latency / balanced / cost).",
    )
    headroom_learned: bool | None = Field(
        default=None, description="True once the headroom comes from this DMD's history."
    )
    utilization_scale: float | None = Field(
        default=None,
        description="What the DMD's own TTFT record does to the utilization target: 1 as "
        "planned; lower after proven SLO breaches, relaxing back while the SLO holds.",
    )
    last_decisions: list[ScalingDecision] = Field(default_factory=list, max_length=20)


class CanaryAnalysisStatus(_Model):
    """The numbers behind the last canary analysis."""

    time: str
    step: int
    result: Literal["Pass", "Fail", "Inconclusive"]
    message: str = Field(default="", max_length=STATUS_MESSAGE_LIMIT)
    window_seconds: float | None = None
    canary_requests: float | None = None
    stable_requests: float | None = None
    canary_ttft_seconds: float | None = Field(default=None, alias="canaryTTFTSeconds")
    stable_ttft_seconds: float | None = Field(default=None, alias="stableTTFTSeconds")
    canary_error_rate: float | None = None
    stable_error_rate: float | None = None
    canary_above_slo: float | None = Field(
        default=None,
        alias="canaryAboveSLO",
        description="Share of canary requests surely above the TTFT SLO (0-1).",
    )
    stable_above_slo: float | None = Field(
        default=None,
        alias="stableAboveSLO",
        description="Share of stable requests surely above the TTFT SLO (0-1).",
    )


class RolloutStatus(_Model):
    """Progress of a rollout: enough to resume at the same step after a restart."""

    strategy: RolloutStrategy | None = None
    phase: Literal["Stable", "Progressing", "Promoting", "RolledBack"] | None = None
    stable_revision: str | None = None
    canary_revision: str | None = None
    step: int | None = Field(default=None, description="Current canary step, from 1.")
    steps: int | None = None
    weight: int | None = Field(
        default=None, description="Percent of replicas (so of traffic) on the canary."
    )
    stable_replicas: int | None = None
    canary_replicas: int | None = None
    step_started_at: str | None = Field(
        default=None, description="When the canary of this step became ready (RFC 3339)."
    )
    traffic: str | None = Field(
        default=None, description="How traffic is split: replica ratio or HTTPRoute weights."
    )
    verdict: str | None = Field(default=None, description="Result of the last analysis.")
    message: str | None = Field(default=None, max_length=STATUS_MESSAGE_LIMIT)
    last_analysis: CanaryAnalysisStatus | None = None


class RetiredCache(_Model):
    """A replaced revision's cache, kept for the grace period."""

    claim: str
    since: str = Field(description="When it was replaced (RFC 3339).")


class CacheStatus(_Model):
    """The weight cache of the revision the DMD asks for."""

    claim: str = Field(description="The PersistentVolumeClaim holding this revision's weights.")
    source: str = Field(description="What it is filled from (URI and revision).")
    phase: Literal["Filling", "Distributing", "Ready", "Failed"]
    expected_bytes: int | None = Field(
        default=None, description="The checkpoint's size from the catalog."
    )
    bytes: int | None = Field(default=None, description="Bytes the fill wrote, once complete.")
    filled_bytes: int | None = Field(
        default=None,
        description="While it fills: the bytes on the claim so far, from the fill's "
        "progress line (every 30 s), read at each reconcile.",
    )
    started_at: str | None = Field(default=None, description="When the fill started (RFC 3339).")
    completed_at: str | None = Field(default=None, description="When it completed (RFC 3339).")
    estimated_fill_seconds: float | None = Field(
        default=None, description="Expected fill time at the source's bandwidth."
    )
    nodes: int | None = Field(
        default=None,
        description="NodeLocal: the nodes the copy runs on (the pre-pull DaemonSet's).",
    )
    nodes_ready: int | None = Field(
        default=None, description="NodeLocal: the nodes whose copy is complete."
    )
    message: str | None = Field(default=None, max_length=STATUS_MESSAGE_LIMIT)
    retired: list[RetiredCache] = Field(
        default_factory=list,
        max_length=16,
        description="Caches of replaced revisions, deleted after the grace period.",
    )


class StartupStatus(_Model):
    """How long a new replica takes to serve: the estimate the autoscaler and the probes
    use, beside what the last pods measured."""

    estimated_seconds: float
    weights_from: str = Field(
        description="Where a new replica reads weights: hf, s3, gs, oci, pvc, cache (a "
        "Shared cache) or local (a NodeLocal copy)."
    )
    measured_seconds: float | None = Field(
        default=None,
        description="Median start-to-ready time of the newest ready pods (pod conditions).",
    )
    measured_pods: int | None = None


class DistilledModelDeploymentStatus(_Model):
    """Observed state of a DistilledModelDeployment."""

    model_config = ConfigDict(frozen=False)

    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list, max_length=32)
    replicas: int | None = None
    ready_replicas: int | None = None
    selector: str | None = None
    placement: PlacementStatus | None = None
    cost: CostStatus | None = None
    autoscaling: AutoscalingStatus | None = None
    rollout: RolloutStatus | None = None
    endpoint: str | None = None
    cache: CacheStatus | None = None
    startup: StartupStatus | None = None
    revision: str | None = Field(
        default=None, description="Hash of the rendered pod template the children run."
    )


def object_key(body: Mapping[str, Any]) -> tuple[str, str]:
    """(namespace, name) of an object's body, as the operator's indices key it."""
    meta = body.get("metadata") or {}
    return (str(meta.get("namespace")), str(meta.get("name")))


class _Object(_Model):
    """A namespaced object of the API group: its metadata, name and namespace."""

    api_version: Literal["distillery.dev/v1alpha1"] = Field(
        default="distillery.dev/v1alpha1", alias="apiVersion"
    )
    metadata: dict[str, Any] = Field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.metadata.get("name", ""))

    @property
    def namespace(self) -> str:
        return str(self.metadata.get("namespace") or "default")


class DistilledModelDeployment(_Object):
    """A distilled reasoning model served on GPUs, sized, rendered and autoscaled."""

    kind: Literal["DistilledModelDeployment"] = "DistilledModelDeployment"
    spec: DistilledModelDeploymentSpec
    status: DistilledModelDeploymentStatus | None = None
