"""Representative DMDs for the render golden files and the server dry-run test."""

from __future__ import annotations

from typing import Any

from tests.support.dmds import dmd as support_dmd


def dmd(name: str, spec: dict[str, Any], namespace: str = "models") -> dict[str, Any]:
    return support_dmd(name, spec, namespace=namespace)


CASES: dict[str, dict[str, Any]] = {
    "vllm-1xl4": dmd(
        "qwen-1-5b",
        {
            "model": {"name": "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"},
            "placement": {"gpuTypes": ["nvidia-l4"]},
            "scaling": {"minReplicas": 2, "maxReplicas": 4},
        },
    ),
    "vllm-1xh100": dmd(
        "llama-8b",
        {
            "model": {
                "name": "deepseek-ai/DeepSeek-R1-Distill-Llama-8B",
                "credentialsSecretRef": {"name": "hf-token"},
            },
            "serving": {
                "maxModelLen": 65536,
                "env": [
                    {"name": "VLLM_LOGGING_LEVEL", "value": "INFO"},
                    {
                        "name": "API_KEY",
                        "valueFrom": {"secretKeyRef": {"name": "api", "key": "key"}},
                    },
                ],
            },
            "placement": {"gpuTypes": ["nvidia-h100-80gb"], "nodeSelector": {"pool": "inference"}},
        },
    ),
    "vllm-4xh100-tp": dmd(
        "llama-70b",
        {
            "model": {
                "name": "deepseek-ai/DeepSeek-R1-Distill-Llama-70B",
                "quantization": "none",
                "credentialsSecretRef": {"name": "hf-token", "key": "token"},
            },
            "serving": {"maxConcurrency": 32, "extraArgs": ["--enable-prefix-caching"]},
            "placement": {"gpuTypes": ["nvidia-h100-80gb"], "spot": True},
        },
    ),
    "sglang-1xh100": dmd(
        "qwen-14b",
        {
            "model": {
                "name": "deepseek-ai/DeepSeek-R1-Distill-Qwen-14B",
                "uri": "pvc://model-store/deepseek/qwen-14b",
            },
            "serving": {"engine": "sglang", "kvCacheDtype": "fp8"},
            "placement": {"gpuTypes": ["nvidia-h100-80gb"]},
        },
    ),
    "tgi-2xl40s-fp8": dmd(
        "qwen-32b",
        {
            "model": {
                "name": "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B",
                "quantization": "fp8",
                "uri": "s3://models/deepseek/qwen-32b",
                "credentialsSecretRef": {"name": "s3-creds"},
            },
            "serving": {"engine": "tgi", "maxConcurrency": 32},
            "placement": {"gpuTypes": ["nvidia-l40s"]},
        },
    ),
    # The teacher across two 8-GPU H100 nodes: one LeaderWorkerSet group per replica.
    "vllm-r1-2x8xh100": dmd(
        "r1",
        {
            "model": {
                "name": "deepseek-ai/DeepSeek-R1",
                "credentialsSecretRef": {"name": "hf-token"},
            },
            "serving": {"maxModelLen": 32768, "maxConcurrency": 64},
            "placement": {"gpuTypes": ["nvidia-h100-80gb"]},
            "scaling": {"minReplicas": 1, "maxReplicas": 2},
        },
    ),
    "sglang-r1-2x8xh100-ep": dmd(
        "r1-sglang",
        {
            "model": {"name": "deepseek-ai/DeepSeek-R1"},
            "serving": {"engine": "sglang", "maxModelLen": 32768},
            "placement": {"gpuTypes": ["nvidia-h100-80gb"], "expertParallel": True},
        },
    ),
    "llamacpp-cpu": dmd(
        "qwen-1-5b-edge",
        {
            "model": {
                "name": "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
                "quantization": "int8",
                "uri": "pvc://gguf/DeepSeek-R1-Distill-Qwen-1.5B-Q8_0.gguf",
            },
            "serving": {"engine": "llamacpp", "maxModelLen": 8192, "maxConcurrency": 4},
            "placement": {"gpuTypes": ["cpu"]},
        },
    ),
    "vllm-oci-l40s": dmd(
        "qwen-7b",
        {
            "model": {
                "name": "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
                "uri": "oci://registry.example/models/qwen-7b:v1",
            },
            "placement": {"gpuTypes": ["nvidia-l40s"]},
        },
    ),
    "vllm-cached-l40s": dmd(
        "qwen-14b",
        {
            "model": {
                "name": "deepseek-ai/DeepSeek-R1-Distill-Qwen-14B",
                "revision": "v1",
                "credentialsSecretRef": {"name": "hf-token"},
                "cache": {"mode": "Shared", "storageClassName": "filestore-rwx"},
            },
            "placement": {"gpuTypes": ["nvidia-l40s"]},
        },
    ),
    "vllm-nodelocal-h100": dmd(
        "r1-8b",
        {
            "model": {
                "name": "deepseek-ai/DeepSeek-R1-Distill-Llama-8B",
                "cache": {"mode": "NodeLocal", "nodePath": "/mnt/nvme/distillery"},
            },
            "placement": {"gpuTypes": ["nvidia-h100-80gb"], "spot": True},
        },
    ),
}
