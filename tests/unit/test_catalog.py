"""Catalog loading and run-time extension."""

from __future__ import annotations

import pytest

from distillery.catalog import CatalogError, load_catalog


def test_builtin_catalog_has_the_design_facts() -> None:
    cat = load_catalog()
    facts = {  # name: (params B, layers, kv heads), from each model's published config.json
        "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B": (1.78, 28, 2),
        "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B": (7.62, 28, 4),
        "deepseek-ai/DeepSeek-R1-Distill-Qwen-14B": (14.77, 48, 8),
        "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B": (32.76, 64, 8),
        "deepseek-ai/DeepSeek-R1-Distill-Llama-8B": (8.03, 32, 8),
        "deepseek-ai/DeepSeek-R1-Distill-Llama-70B": (70.55, 80, 8),
    }
    for name, (params, layers, kv) in facts.items():
        m = cat.models[name]
        assert (m.params_billions, m.layers, m.kv_heads) == (params, layers, kv)
        assert m.resolved_head_dim == 128 and m.max_positions == 131072
    products = {g.name: g.product for g in cat.gpus.values() if not g.cpu_only}
    assert products == {
        "nvidia-h200": "NVIDIA-H200",
        "nvidia-h100-80gb": "NVIDIA-H100-80GB-HBM3",
        "nvidia-a100-80gb": "NVIDIA-A100-SXM4-80GB",
        "nvidia-a100-40gb": "NVIDIA-A100-SXM4-40GB",
        "nvidia-l40s": "NVIDIA-L40S",
        "nvidia-l4": "NVIDIA-L4",
        "nvidia-a10g": "NVIDIA-A10G",
        "nvidia-t4": "Tesla-T4",
    }
    assert all(g.price_per_gpu_hour > 0 and g.price_source for g in cat.gpus.values())
    assert cat.model("DEEPSEEK-AI/DeepSeek-R1-Distill-Qwen-7B") is not None
    assert cat.gpu_by_product("NVIDIA-L40S") is cat.gpus["nvidia-l40s"]


def test_user_overrides_merge_by_name() -> None:
    cat = load_catalog(
        [
            (
                "prices.yaml",
                "gpus:\n"
                "  - {name: nvidia-l4, pricePerGpuHour: 0.5}\n"
                "  - {name: acme-x1, product: ACME-X1, memoryGiB: 96, bandwidthGBs: 4000,"
                " bf16Tflops: 900, computeCapability: '9.0', pricePerGpuHour: 3}\n",
            )
        ]
    )
    assert cat.currency == "USD"
    assert cat.gpus["nvidia-l4"].price_per_gpu_hour == 0.5
    assert cat.gpus["nvidia-l4"].memory_gi_b == 22.5  # untouched fields kept
    assert cat.gpus["acme-x1"].memory_gi_b == 96


@pytest.mark.parametrize(
    "text,match",
    [
        ("gpus: [{product: X}]", "needs a 'name'"),
        ("- just a list", "expected a mapping"),
        ("gpus: [{name: nvidia-l4, pricePerGpuHour: -1}]", "invalid"),
        ("gpus: [{name: [unclosed", "not valid YAML"),
    ],
)
def test_bad_catalog_files(text: str, match: str) -> None:
    with pytest.raises(CatalogError, match=match):
        load_catalog([("bad.yaml", text)])


def test_a_new_currency_must_price_every_gpu() -> None:
    names = sorted(load_catalog().gpus)
    eur = "currency: EUR\ngpus:\n" + "".join(
        f"  - {{name: {n}, pricePerGpuHour: 1}}\n" for n in names[1:]
    )
    with pytest.raises(CatalogError) as err:
        load_catalog([("eur.yaml", eur)])
    assert f"eur.yaml: sets currency EUR, but these GPUs have no price in EUR: {names[0]}." in str(
        err.value
    )
    # Prices in a later file without a currency line are in the currency in force.
    cat = load_catalog(
        [("eur.yaml", eur), ("more.yaml", f"gpus: [{{name: {names[0]}, pricePerGpuHour: 2}}]")]
    )
    assert cat.currency == "EUR" and cat.gpus[names[0]].price_per_gpu_hour == 2
    # Back to the built-in currency: the built-in prices count again only if re-given.
    with pytest.raises(CatalogError, match="sets currency USD"):
        load_catalog(
            [
                ("eur.yaml", eur + f"  - {{name: {names[0]}, pricePerGpuHour: 1}}\n"),
                ("usd.yaml", "currency: USD"),
            ]
        )
