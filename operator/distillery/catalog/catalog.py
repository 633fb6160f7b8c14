"""Catalogs of model architectures and GPU types, with default prices.

Data lives in YAML files shipped with the package (``catalog/data``) so that prices and
models can change without touching code, and so operators can extend them at run time:
:func:`load_catalog` merges user files over the built-in ones, entry by entry (same
``name`` replaces, new names add). Loading is pure: the caller hands in the text of any
extra files; nothing here reads the environment.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from distillery.api.types import ModelArchitecture


def unread_expert_fraction(experts: int, per_token: int, tokens: float) -> float:
    """The share of routed experts a step over ``tokens`` tokens leaves unread, when each
    token picks ``per_token`` of ``experts`` uniformly (routers are trained to balance):
    one token reads only its own; a batch of a few dozen reads nearly all of them."""
    return math.pow(1.0 - per_token / experts, max(1.0, tokens))


class _Entry(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class ModelEntry(_Entry):
    """A model's architecture, from its config.json."""

    name: str
    family: str = "unknown"
    teacher: str | None = None
    params_billions: float = Field(gt=0)
    layers: int = Field(ge=1)
    hidden_size: int = Field(ge=1)
    intermediate_size: int | None = None
    attention_heads: int = Field(ge=1)
    kv_heads: int = Field(ge=1)
    head_dim: int | None = None
    vocab_size: int = 128256
    tied_embeddings: bool = False
    max_positions: int = 131072
    # The weights' format as released: bfloat16, or float8 for checkpoints published in
    # FP8 (DeepSeek-R1/V3), which serve at one byte per weight with no bf16 to fall back to.
    dtype: str = "bfloat16"
    # Mixture of experts (all None for a dense model): routed experts per MoE layer, how
    # many each token uses, each expert's FFN width, and how many layers are MoE (the
    # rest are dense FFN layers). Memory counts every expert; compute counts the active.
    experts: int | None = Field(default=None, ge=2)
    experts_per_token: int | None = Field(default=None, ge=1)
    moe_intermediate_size: int | None = Field(default=None, ge=1)
    moe_layers: int | None = Field(default=None, ge=1)
    # Multi-head latent attention (DeepSeek-V2/V3/R1): the KV cache holds one compressed
    # latent of kv_lora_rank plus the rope key of qk_rope_head_dim per token and layer,
    # not K and V per head.
    kv_lora_rank: int | None = Field(default=None, ge=1)
    qk_rope_head_dim: int | None = Field(default=None, ge=0)

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim or self.hidden_size // self.attention_heads

    @property
    def is_moe(self) -> bool:
        return bool(self.experts and self.experts_per_token and self.moe_intermediate_size)

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank is not None

    @property
    def released_fp8(self) -> bool:
        return self.dtype.startswith("float8")

    def _expert_params(self, experts: int) -> float:
        """Parameters of ``experts`` routed experts in every MoE layer (gate, up and
        down projections: 3 x hidden x moe_intermediate each)."""
        if not self.is_moe:
            return 0.0
        width = self.moe_intermediate_size or 0
        layers = self.moe_layers or self.layers
        return float(layers * experts * 3 * self.hidden_size * width)

    @property
    def routed_expert_params(self) -> float:
        """Parameters in routed experts: all of them live in memory, few are used."""
        return self._expert_params(self.experts or 0)

    def unread_expert_fraction(self, tokens: float) -> float:
        """The share of routed experts a step over ``tokens`` tokens leaves unread
        (:func:`unread_expert_fraction`); 0 for a dense model."""
        if not self.is_moe:
            return 0.0
        return unread_expert_fraction(self.experts or 0, self.experts_per_token or 0, tokens)

    @property
    def active_params(self) -> float:
        """Parameters one token computes with: everything but the unused experts."""
        total = self.params_billions * 1e9
        if not self.is_moe:
            return total
        return total - self.routed_expert_params + self._expert_params(self.experts_per_token or 0)

    @property
    def resolved_intermediate_size(self) -> int:
        return self.intermediate_size or 4 * self.hidden_size

    @classmethod
    def from_architecture(cls, name: str, arch: ModelArchitecture) -> ModelEntry:
        return cls(name=name, **arch.model_dump())


class GpuType(_Entry):
    """A GPU type: its memory, speed, what it supports and what it costs."""

    name: str
    product: str = Field(description="GPU Feature Discovery nvidia.com/gpu.product value")
    memory_gi_b: float = Field(alias="memoryGiB", gt=0)
    bandwidth_g_bs: float = Field(alias="bandwidthGBs", gt=0)
    bf16_tflops: float = Field(gt=0)
    compute_capability: str
    quantizations: tuple[str, ...] = ()
    max_per_node: int = Field(default=8, ge=1)
    cpu_only: bool = Field(default=False, description="no GPU: CPU-only nodes (llama.cpp)")
    price_per_gpu_hour: float = Field(ge=0)
    price_source: str = ""
    nodes_observed: bool = Field(
        default=False, description="max_per_node was read from the cluster's nodes"
    )


@dataclass(frozen=True)
class Catalog:
    """Models and GPU types the planner knows, and the currency prices are in."""

    models: dict[str, ModelEntry]
    gpus: dict[str, GpuType]
    currency: str = "USD"
    price_date: str = ""
    sources: tuple[str, ...] = field(default=())

    def model(self, name: str) -> ModelEntry | None:
        if name in self.models:
            return self.models[name]
        lowered = {k.lower(): v for k, v in self.models.items()}
        return lowered.get(name.lower())

    def gpu(self, name: str) -> GpuType | None:
        return self.gpus.get(name)

    def gpu_by_product(self, product: str) -> GpuType | None:
        return next((g for g in self.gpus.values() if g.product == product), None)

    def with_node_gpus(self, per_node: Mapping[str, int]) -> Catalog:
        """The catalog with ``max_per_node`` set from the cluster: ``per_node`` maps a
        ``nvidia.com/gpu.product`` label to the most GPUs any one node of it offers.

        A replica needs all its GPUs on one node, so a plan asking more than any node
        has would stay Pending forever. Types with no node in the cluster keep the
        catalog's figure: a cluster autoscaler may still bring one.
        """
        gpus = dict(self.gpus)
        for name, gpu in self.gpus.items():
            count = per_node.get(gpu.product)
            if count and not gpu.cpu_only:
                gpus[name] = gpu.model_copy(update={"max_per_node": count, "nodes_observed": True})
        return replace(self, gpus=gpus)


class CatalogError(ValueError):
    """A catalog file is malformed; the message names the file and the entry."""


def _builtin(name: str) -> str:
    return resources.files("distillery.catalog").joinpath("data", name).read_text("utf-8")


def _parse(text: str, source: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise CatalogError(f"{source}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise CatalogError(f"{source}: expected a mapping with 'models' and/or 'gpus'")
    return data


def load_catalog(extra: Iterable[tuple[str, str]] = ()) -> Catalog:
    """The built-in catalog, with each ``(source, yaml_text)`` in ``extra`` merged over it.

    An extra file may carry ``models:``, ``gpus:`` (full entries, or partial ones that
    override fields of a built-in entry of the same name, such as ``pricePerGpuHour``),
    ``currency`` and ``priceDate``.
    """
    docs = [
        ("builtin:models.yaml", _parse(_builtin("models.yaml"), "models.yaml")),
        ("builtin:gpus.yaml", _parse(_builtin("gpus.yaml"), "gpus.yaml")),
    ]
    docs += [(src, _parse(text, src)) for src, text in extra]
    raw_models: dict[str, dict[str, Any]] = {}
    raw_gpus: dict[str, dict[str, Any]] = {}
    currency, price_date = "USD", ""
    currency_source = "builtin:gpus.yaml"
    # The currency each GPU's price was written in: a file's prices are in the currency
    # it states, else in the one in force when it is read.
    priced_in: dict[str, str] = {}
    for source, doc in docs:
        if "currency" in doc and str(doc["currency"]) != currency:
            currency, currency_source = str(doc["currency"]), source
        for key, target in (("models", raw_models), ("gpus", raw_gpus)):
            for i, entry in enumerate(doc.get(key) or []):
                if not isinstance(entry, dict) or "name" not in entry:
                    raise CatalogError(f"{source}: {key}[{i}] needs a 'name'")
                target[entry["name"]] = {**target.get(entry["name"], {}), **entry}
                if key == "gpus" and "pricePerGpuHour" in entry:
                    priced_in[entry["name"]] = currency
        price_date = str(doc.get("priceDate", price_date))
    stale = sorted(n for n in raw_gpus if priced_in.get(n) != currency)
    if stale:
        # Relabelling USD prices as EUR would compare 6.88 "EUR" with 1.20 EUR and
        # enforce maxCostPerHour on a mix: refuse rather than mix currencies.
        raise CatalogError(
            f"{currency_source}: sets currency {currency}, but these GPUs have no price in "
            f"{currency}: {', '.join(stale)}. Give each a pricePerGpuHour in {currency} "
            f"in that file (a partial entry is enough: {{name: {stale[0]}, "
            f"pricePerGpuHour: ...}})"
        )
    try:
        models = {n: ModelEntry.model_validate(v) for n, v in raw_models.items()}
        gpus = {n: GpuType.model_validate(v) for n, v in raw_gpus.items()}
    except ValueError as exc:
        raise CatalogError(f"catalog entry is invalid: {exc}") from exc
    return Catalog(models, gpus, currency, price_date, tuple(s for s, _ in docs))
