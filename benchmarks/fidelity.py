"""Fidelity of the fleet model against BLIS's vLLM fits.

BLIS (inference-sim/inference-sim, defaults.yaml at commit 1a6eb353) fits vLLM v0.8.4's
step time as ``beta0 + beta1 * prefill_tokens + beta2 * decode_tokens`` microseconds,
from profiling real runs. The DeepSeek-R1 Llama distills share their teachers'
architecture (Llama-3.1-8B, Llama-3.3-70B), so those fits apply to them. For each point
this prints the fleet model's prefill time (TTFT of one request alone) and decode
throughput at a full batch, BLIS's, and the error; the JSON goes to
reports/bench-fidelity.json.

Run: ``.venv/bin/python benchmarks/fidelity.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

from distillery.catalog import load_catalog
from distillery.sizing import memory as mem

ROOT = Path(__file__).resolve().parents[1]
# (model in our catalog, GPU, TP, BLIS beta0/1/2 in microseconds, BLIS entry)
POINTS = [
    (
        "deepseek-ai/DeepSeek-R1-Distill-Llama-8B",
        "nvidia-h100-80gb",
        1,
        (5752.705191348184, 17.25086436834028, 5.999143920128404),
        "meta-llama/llama-3.1-8b-instruct H100 tp1",
    ),
    (
        "deepseek-ai/DeepSeek-R1-Distill-Llama-8B",
        "nvidia-a100-80gb",
        1,
        (16441.531547147923, 47.837412108198656, 18.20560632171683),
        "meta-llama/llama-3.1-8b-instruct A100-80 tp1",
    ),
    (
        "deepseek-ai/DeepSeek-R1-Distill-Llama-8B",
        "nvidia-h100-80gb",
        2,
        (6910.420479880494, 17.67057489844186, 2.8377471109943855),
        "meta-llama/llama-3.1-8b-instruct H100 tp2",
    ),
    (
        "deepseek-ai/DeepSeek-R1-Distill-Llama-70B",
        "nvidia-h100-80gb",
        4,
        (12601.271149123822, 76.42284100369776, 66.84396200500741),
        "meta-llama/llama-3.3-70b-instruct H100 tp4",
    ),
]
PROMPT = 2048
BATCH = 64
CONTEXT = 2048


def main() -> int:
    catalog = load_catalog()
    rows = []
    for model_name, gpu_name, tp, (b0, b1, b2), source in POINTS:
        m, g = catalog.models[model_name], catalog.gpus[gpu_name]
        weights = mem.weight_bytes(m, "none")
        ours_prefill = mem.prefill_seconds(m, g, tp, PROMPT) + mem.decode_step_seconds(
            weights, PROMPT * mem.kv_bytes_per_token(m), g, tp
        )
        blis_prefill = (b0 + b1 * PROMPT) / 1e6 + (b0 + b2) / 1e6
        ours_tps = mem.decode_tokens_per_second(m, g, tp, "none", BATCH, CONTEXT)
        blis_tps = BATCH / ((b0 + b2 * BATCH) / 1e6)
        rows.append(
            {
                "point": f"{model_name.split('/')[-1]} {gpu_name} tp{tp}",
                "blis": source,
                "ttftPrompt2048": {
                    "ours": round(ours_prefill, 4),
                    "blis": round(blis_prefill, 4),
                    "error": round(ours_prefill / blis_prefill - 1, 3),
                },
                "decodeTokPerSecBatch64": {
                    "ours": round(ours_tps, 1),
                    "blis": round(blis_tps, 1),
                    "error": round(ours_tps / blis_tps - 1, 3),
                },
            }
        )
    for r in rows:
        t, d = r["ttftPrompt2048"], r["decodeTokPerSecBatch64"]
        print(
            f"{r['point']:45} TTFT(2048) ours {t['ours']:.3f}s BLIS {t['blis']:.3f}s "
            f"({100 * t['error']:+.0f}%) | decode@64 ours {d['ours']:.0f} BLIS {d['blis']:.0f} "
            f"tok/s ({100 * d['error']:+.0f}%)"
        )
    out = ROOT / "reports" / "bench-fidelity.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "constants": {"MFU": mem.MFU, "MBU": mem.MBU, "stepOverheadS": mem.STEP_OVERHEAD_S},
                "points": rows,
            },
            indent=1,
        )
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
