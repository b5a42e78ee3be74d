"""Inference speed of a TinyLlama-shaped model: time to first token and decode tokens/s with ``generate``.

    python scripts/benchmark_inference.py --model tinyllama-1.1b --batch-sizes 1,64 --new-tokens 256
    python scripts/benchmark_inference.py --model outputs/demo/export/final           # a trained folder

For each batch size it measures, in one run: the dynamic cache (transformers' default), the static cache, and the
static cache with ``generate``'s own ``torch.compile`` of the forward (``CompileConfig``, mode reduce-overhead; only
where a GPU is present unless ``--compile-on-cpu``); the first two with compilation off (``disable_compile``: on a
GPU transformers would otherwise compile a static-cache ``generate`` by itself). Time to first token (prefill of the
prompt + one token) and decode throughput (new tokens x batch / decode time), with greedy decoding of a fixed number
of tokens (``min_new_tokens`` = ``max_new_tokens``, so every variant does the same work).
Weights are random when ``--model`` names a config (speed does not depend on them).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch


def load(model_name: str, dtype: torch.dtype, device: str):
    from tinyllama.model import build_model

    if Path(model_name).is_dir():
        return build_model(init_from=model_name, attn_implementation="sdpa", dtype=dtype).to(device).eval()
    return build_model(model_name, attn_implementation="sdpa", dtype=dtype, seed=0).to(device).eval()


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure(model, batch: int, prompt_len: int, new_tokens: int, cache: str, compiled: bool, device: str,
            repeats: int) -> dict:
    from transformers import CompileConfig

    vocab = model.config.vocab_size
    ids = torch.randint(3, vocab, (batch, prompt_len), generator=torch.Generator().manual_seed(0)).to(device)
    kwargs = dict(do_sample=False, pad_token_id=0, eos_token_id=None)
    if cache == "static":
        kwargs["cache_implementation"] = "static"
    if compiled:
        config = CompileConfig()  # transformers' defaults for generate: mode reduce-overhead (CUDA graphs)
        config._compile_all_devices = device != "cuda"  # (its switch for compiling on CPU: --compile-on-cpu)
        kwargs["compile_config"] = config
    else:
        kwargs["disable_compile"] = True

    def run(n: int) -> float:
        sync(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            model.generate(ids, max_new_tokens=n, min_new_tokens=n, **kwargs)
        sync(device)
        return time.perf_counter() - t0

    run(2)  # warm-up (and compilation)
    ttft = min(run(1) for _ in range(repeats))
    total = min(run(new_tokens) for _ in range(repeats))
    decode = max(total - ttft, 1e-9)
    return {"ttft_ms": 1000 * ttft, "decode_tok_s": batch * (new_tokens - 1) / decode}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="demo", help="a config name in configs/model, or a model folder")
    p.add_argument("--batch-sizes", default="1,8")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--compile-on-cpu", action="store_true")
    a = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = load(a.model, dtype, device)
    variants = [("dynamic", False), ("static", False)]
    if device == "cuda" or a.compile_on_cpu:
        variants.append(("static", True))
    rows = []
    for batch in [int(b) for b in a.batch_sizes.split(",")]:
        base = None
        for cache, compiled in variants:
            r = measure(model, batch, a.prompt_len, a.new_tokens, cache, compiled, device, a.repeats)
            base = base or r["decode_tok_s"]
            rows.append((batch, cache + (" + compile" if compiled else ""), r, r["decode_tok_s"] / base))
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(f"\n{a.model}, {dtype}, {name}; prompt {a.prompt_len} tokens, {a.new_tokens} new tokens, greedy")
    print("| batch | cache | time to first token (ms) | decode tokens/s | vs dynamic |")
    print("|---|---|---|---|---|")
    for batch, variant, r, ratio in rows:
        print(f"| {batch} | {variant} | {r['ttft_ms']:.1f} | {r['decode_tok_s']:,.0f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
