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

Speculative decoding, at batch 1 (``--draft MODEL``: transformers' assisted generation with a small model of the
same tokenizer; ``--prompt-lookup N``: up to N tokens proposed from the prompt itself): a second table times plain
greedy decoding, drafted decoding and prompt lookup on the same real prompts (the first ``--prompt-len`` tokens of
documents of the embedded demo corpus, prose and code, tokenized by the model's tokenizer), in one run, and gives
the speed-up over plain decoding, the tokens produced per forward pass of the model, the draft's acceptance rate
(accepted / proposed tokens) and whether every output equals plain greedy's token for token. Speed and acceptance
need trained weights: give model folders or Hub ids (random weights accept almost nothing).

    python scripts/benchmark_inference.py --model outputs/demo-target/export/final \
        --draft outputs/demo/export/final --prompt-lookup 10 --batch-sizes 1
    python scripts/benchmark_inference.py --model meta-llama/Llama-2-7b-chat-hf \
        --draft TinyLlama/TinyLlama-1.1B-Chat-v1.0 --batch-sizes 1 --new-tokens 256    # GPU
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch


def is_trained(model_name: str) -> bool:
    """A model folder or a Hub id (owner/name), as opposed to a config name in configs/model (random weights)."""
    return Path(model_name).is_dir() or "/" in model_name


def load(model_name: str, dtype: torch.dtype, device: str):
    from tinyllama.model import build_model

    if is_trained(model_name):
        return build_model(init_from=model_name, attn_implementation="sdpa", dtype=dtype).to(device).eval()
    return build_model(model_name, attn_implementation="sdpa", dtype=dtype, seed=0).to(device).eval()


def load_tokenizer(model_name: str):
    """The model's tokenizer; the demo tokenizer for a config name (its vocabulary fits every config)."""
    from transformers import AutoTokenizer

    if is_trained(model_name):
        return AutoTokenizer.from_pretrained(model_name)
    from tinyllama.demo_corpus import build_demo

    return AutoTokenizer.from_pretrained(str(build_demo()["tokenizer"]))


def demo_prompts(tokenizer, n: int, prompt_len: int) -> list[list[int]]:
    """``n`` prompts of ``prompt_len`` tokens: the beginnings of demo-corpus documents, half prose, half code."""
    from tinyllama.demo_corpus import build_demo, corpus_texts

    paths = build_demo()
    prose, code = list(corpus_texts(paths, ["slimpajama"])), list(corpus_texts(paths, ["starcoderdata"]))
    texts = [t for pair in zip(prose[::20], code[::20]) for t in pair]
    prompts = [ids[:prompt_len] for ids in (tokenizer(t)["input_ids"] for t in texts) if len(ids) >= prompt_len]
    if len(prompts) < n:
        raise ValueError(f"only {len(prompts)} demo documents have {prompt_len} tokens; lower --prompt-len")
    return prompts[:n]


def measure_speculative(model, prompts: list[list[int]], new_tokens: int, device: str, repeats: int,
                        draft=None, lookup: int | None = None) -> dict:
    """Greedy decoding of ``new_tokens`` per prompt at batch 1: seconds (best of ``repeats``), outputs, forward
    passes of the model and of the draft."""
    from tinyllama.chat import ForwardCounter

    kwargs = dict(do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0,
                  disable_compile=True)
    if draft is not None:
        kwargs["assistant_model"] = draft
    if lookup:
        kwargs["prompt_lookup_num_tokens"] = lookup
    best, outputs, calls = float("inf"), [], (0, 0)
    for _ in range(repeats):
        counters = [ForwardCounter(model)] + ([ForwardCounter(draft)] if draft is not None else [])
        outputs = []
        sync(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            for ids in prompts:
                out = model.generate(torch.tensor([ids], device=device), **kwargs)
                outputs.append(out[0, len(ids):].tolist())
        sync(device)
        best = min(best, time.perf_counter() - t0)
        calls = tuple(c.calls for c in counters) + ((0,) if draft is None else ())
        for c in counters:
            c.remove()
    return {"seconds": best, "outputs": outputs, "model_calls": calls[0], "draft_calls": calls[1]}


def speculative_table(a, model, dtype, device) -> list[str]:
    tokenizer = load_tokenizer(a.model)
    prompts = demo_prompts(tokenizer, a.prompts, a.prompt_len)
    model(torch.tensor([prompts[0]], device=device))  # warm-up
    rows = [("plain greedy", "-", measure_speculative(model, prompts, a.new_tokens, device, a.repeats))]
    if a.draft:
        draft = load(a.draft, dtype, device)
        rows.append((f"assisted: draft {a.draft}", a.draft,
                     measure_speculative(model, prompts, a.new_tokens, device, a.repeats, draft=draft)))
    if a.prompt_lookup:
        rows.append((f"prompt lookup, {a.prompt_lookup} tokens", "-",
                     measure_speculative(model, prompts, a.new_tokens, device, a.repeats, lookup=a.prompt_lookup)))
    plain = rows[0][2]
    n_new = a.new_tokens * len(prompts)
    lines = [f"\nspeculative decoding, batch 1: {len(prompts)} demo-corpus prompts of {a.prompt_len} tokens, "
             f"{a.new_tokens} new tokens each, greedy",
             "| decoding | tokens/s | speed-up | tokens per forward of the model | draft acceptance | "
             "equal to plain greedy |", "|---|---|---|---|---|---|"]
    for name, _, r in rows:
        accepted = n_new - r["model_calls"]  # each forward of the model adds one token beyond the accepted ones
        acceptance = f"{accepted / r['draft_calls']:.1%}" if r["draft_calls"] else "-"
        equal = sum(o == p for o, p in zip(r["outputs"], plain["outputs"]))
        lines.append(f"| {name} | {n_new / r['seconds']:,.1f} | {plain['seconds'] / r['seconds']:.2f}x | "
                     f"{n_new / r['model_calls']:.2f} | {acceptance} | {equal}/{len(prompts)} |")
    return lines


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
    p.add_argument("--draft", help="speculative decoding: a draft model (folder, Hub id or config) of the same "
                                   "tokenizer; adds the batch-1 speculative table")
    p.add_argument("--prompt-lookup", type=int, default=None, metavar="N",
                   help="prompt-lookup decoding with N tokens in the speculative table")
    p.add_argument("--prompts", type=int, default=8, help="prompts in the speculative table (default 8)")
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
    if a.draft or a.prompt_lookup:
        print("\n".join(speculative_table(a, model, dtype, device)))


if __name__ == "__main__":
    main()
