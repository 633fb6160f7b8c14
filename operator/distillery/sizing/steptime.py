"""How long one engine step takes (pure arithmetic): the fleet model's clock.

A vLLM-style engine runs in steps. Each step is one forward pass over a batch that holds
one new token for every running sequence (decode) plus up to the rest of the step's
token budget (``max_num_batched_tokens``) of prompt tokens (chunked prefill; decodes are
scheduled first). The time of a step is modelled as

    t = c_step                                   scheduler, launch, sampling: per step
        + c_seq x sequences in the step          per-sequence bookkeeping, detokenizing
        + c_ar x layers x (tp - 1)               tensor-parallel all-reduces
        + max(memory, compute)                   the roofline
    memory  = weights / (bandwidth x eta_weights) + KV read / (bandwidth x eta_kv)
    compute = (2 x active params x tokens + attention FLOPs) / (FLOPS x eta_compute)

and every request pays a fixed ``api`` overhead (HTTP, tokenization) on its first token.
Weights count every expert of a mixture-of-experts model (a batch touches nearly all of
them); compute counts the active parameters only.

The seven constants are fitted once, by ``benchmarks/fit_step_model.py``, to real vLLM runs
on H100 (inference-sim/training: Llama-2-7B TP1, Llama-2-70B TP4, CodeLlama-34B TP2,
Mixtral-8x7B TP2, measured with inference-perf) by replaying those runs' load through the
fleet model; ``benchmarks/fidelity.py`` reports the error on runs held out of the fit.
They describe the engine, not a trace: nothing here is tuned to the workloads the
autoscaler is benchmarked on.
"""

from __future__ import annotations

from dataclasses import dataclass

from distillery.catalog import GpuType, ModelEntry, unread_expert_fraction
from distillery.sizing import memory as mem


@dataclass(frozen=True)
class StepConstants:
    """The fitted constants of the step model (see the module docstring)."""

    # Fitted values (benchmarks/fit_step_model.py, 2026-11-30; the search started from
    # hand estimates 2.2 ms, 10 us, 15 us, 0.88, 0.71, 0.60, 11 ms).
    step_seconds: float = 1.935e-3
    seq_seconds: float = 6.421e-6
    allreduce_layer_seconds: float = 1.854e-5
    eta_weights: float = 0.8885
    eta_kv: float = 0.6778
    # Held, not fitted: the runs' prompts are prefix-cache hits and do not constrain it;
    # 0.60 is the prefill efficiency calibrated against BLIS's per-token prefill fits.
    eta_compute: float = 0.60
    api_seconds: float = 0.02374

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.__dict__.items()}


# Fitted by benchmarks/fit_step_model.py on the "general" runs (8 stages, 4 models);
# benchmarks/fidelity.py reports the error on every run, the held-out ones apart.
FITTED = StepConstants()


@dataclass(frozen=True)
class StepModel:
    """One replica's step time as a function of what the step holds."""

    weights_bytes: float  # all GPUs of the replica
    kv_bytes_per_token: float  # all GPUs
    active_params: float
    layers: int
    hidden_size: int
    gpus: int  # tensor-parallel size
    bandwidth: float  # bytes/s, all GPUs
    flops: float  # dense bf16 FLOP/s, all GPUs
    constants: StepConstants = FITTED
    # A mixture of experts reads only the experts its tokens route to: the routed
    # experts' bytes (inside weights_bytes), how many there are and how many a token uses.
    expert_bytes: float = 0.0
    experts: int = 0
    experts_per_token: int = 0

    def weights_read(self, tokens: float) -> float:
        """As :func:`memory.weight_bytes_read`: what a step over ``tokens`` reads."""
        if not self.experts:
            return self.weights_bytes
        unread = unread_expert_fraction(self.experts, self.experts_per_token, tokens)
        return self.weights_bytes - self.expert_bytes * unread

    def seconds(
        self,
        sequences: int,
        prefill_tokens: float,
        kv_tokens: float,
        prefill_context: float = 0.0,
    ) -> float:
        """Time of one step with ``sequences`` decoding, ``prefill_tokens`` prompt tokens
        computed, ``kv_tokens`` cached tokens read by attention, and the prompt tokens
        ``prefill_context`` deep on average (attention of a chunk over its prefix)."""
        c = self.constants
        tokens = sequences + prefill_tokens
        memory = self.weights_read(tokens) / (self.bandwidth * c.eta_weights) + (
            kv_tokens * self.kv_bytes_per_token
        ) / (self.bandwidth * c.eta_kv)
        attention = 4.0 * self.layers * self.hidden_size * prefill_tokens * prefill_context
        compute = (2.0 * self.active_params * tokens + attention) / (self.flops * c.eta_compute)
        fixed = c.step_seconds + c.allreduce_layer_seconds * self.layers * (self.gpus - 1)
        in_step = sequences + (1 if prefill_tokens > 0 else 0)
        return fixed + c.seq_seconds * in_step + max(memory, compute)

    def idle_first_token(self, prompt_tokens: int, budget: int) -> float:
        """Time to first token of a request alone on an idle replica: its prompt in
        chunks of ``budget`` tokens, the first token sampled at the end of the last."""
        left, t, done = float(prompt_tokens), self.constants.api_seconds, 0.0
        while left > 0:
            chunk = min(left, float(budget))
            t += self.seconds(0, chunk, done, done + chunk / 2)
            done += chunk
            left -= chunk
        return t


def step_model(
    model: ModelEntry,
    gpu: GpuType,
    gpus: int,
    quantization: str,
    constants: StepConstants = FITTED,
    active_params_billions: float | None = None,
    tensor_parallel: int | None = None,
) -> StepModel:
    """The step model of ``model`` on ``gpus`` GPUs of ``gpu``, ``tensor_parallel`` of
    them per pipeline stage (default: all)."""
    n = max(1, gpus)
    return StepModel(
        weights_bytes=mem.weight_bytes(model, quantization),
        kv_bytes_per_token=mem.kv_bytes_per_token(model, "auto", tensor_parallel or n),
        active_params=(
            active_params_billions * 1e9 if active_params_billions else model.active_params
        ),
        expert_bytes=mem.expert_bytes(model, quantization),
        experts=(model.experts or 0) if model.is_moe else 0,
        experts_per_token=(model.experts_per_token or 0) if model.is_moe else 0,
        layers=model.layers,
        hidden_size=model.hidden_size,
        gpus=n,
        bandwidth=gpu.bandwidth_g_bs * 1e9 * n,
        flops=gpu.bf16_tflops * 1e12 * n,
        constants=constants,
    )
