"""The TinyLlama-1.1B architecture on this machine's CPU: time to first token and decode tokens/s at batch 1, in
llama.cpp (f16, q8_0, q6_k, q4_k_m, q4_0) and in transformers (fp32, bf16; dynamic and static cache), each against
the machine's own limit measured in the same run.

    python scripts/benchmark_cpu_inference.py                        # the table of docs/benchmarks.md
    python scripts/benchmark_cpu_inference.py --types f16,q4_k_m --no-transformers

The limit: decoding one token at batch 1 reads every weight once (the input embedding excepted: one row), so no
runtime can decode faster than memory bandwidth / bytes of weights. The bandwidth is measured here, at the start
and at the end of the run (``torch.sum`` over a 1 GiB float32 tensor on all cores, best of 5: a read-only stream;
the higher of the two counts); the bytes per token are the weights' own (transformers: parameters x element size;
llama.cpp: the GGUF file's tensor sizes, read from its header). The KV cache adds less than 1% at these lengths.

Weights are random (TinyLlama's architecture, configs/model/tinyllama-1.1b.json, transformers' initialisation, seed
0): speed does not depend on them. Prompts are random token ids; greedy decoding of a fixed number of tokens. The
GGUF files are made once by llama.cpp's own converter and quantiser (tinyllama/gguf_export.py; needs
``bash scripts/llama_cpp.sh``) from a model folder saved in float16 with the demo tokenizer (the tokenizer does not
change the speed; llama.cpp pads its vocabulary to the model's 32,000 rows), and kept in ``--work-dir``.
transformers' rows reuse scripts/benchmark_inference.py's measurement (``generate``, compile off). Run it alone on
the machine: every thread of the CPU is in use.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_inference import measure  # noqa: E402  (the transformers measurement, one definition)

LLAMA_CPP_TYPES = ("f16", "q8_0", "q6_k", "q4_k_m", "q4_0")


def read_bandwidth(gib: float = 1.0, repeats: int = 5) -> float:
    """GB/s of a read-only stream over ``gib`` GiB (far beyond any cache), all intra-op threads, best of repeats."""
    x = torch.ones(int(gib * 2**30) // 4, dtype=torch.float32)
    x.sum()  # (pages touched)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t0)
    return x.numel() * 4 / best / 1e9


def model_folder(model: str, work: Path) -> Path:
    """The architecture with random weights, saved in float16 with the demo tokenizer (for llama.cpp's converter)."""
    import shutil

    from tinyllama.demo_corpus import build_demo
    from tinyllama.model import build_model

    folder = work / f"{model}-random-f16"
    if (folder / "model.safetensors").is_file():
        return folder
    m = build_model(model, attn_implementation="sdpa", dtype=torch.float16, seed=0)
    tmp = work / f".{folder.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    m.save_pretrained(tmp)
    for f in Path(build_demo()["tokenizer"]).iterdir():
        if f.is_file():
            shutil.copy(f, tmp / f.name)
    os.replace(tmp, folder)
    return folder


def gguf_files(model: str, types: list[str], work: Path) -> dict[str, Path]:
    """llama.cpp's converter (f16) and quantiser (the rest, from the f16 file), each file made once."""
    from tinyllama.gguf_export import convert, quantize

    f16 = work / f"{model}-f16.gguf"
    if not f16.is_file():
        tmp = work / f".{f16.name}.tmp"
        convert(model_folder(model, work), tmp, "f16")
        os.replace(tmp, f16)
    out = {}
    for t in types:
        path = work / f"{model}-{t}.gguf"
        if t != "f16" and not path.is_file():
            tmp = work / f".{path.name}.tmp"
            quantize(f16, tmp, t)
            os.replace(tmp, path)
        out[t] = f16 if t == "f16" else path
    return out


def gguf_bytes_per_token(path: Path) -> int:
    """Bytes of every tensor in the file except the token embedding (a lookup reads one row of it)."""
    from tinyllama.gguf_export import llama_cpp_source

    sys.path.insert(0, str(llama_cpp_source() / "gguf-py"))
    try:
        import gguf
    finally:
        sys.path.pop(0)
    reader = gguf.GGUFReader(path)
    return sum(int(t.n_bytes) for t in reader.tensors if t.name != "token_embd.weight")


def measure_llama_cpp(path: Path, prompt: list[int], new_tokens: int, repeats: int, threads: int) -> dict:
    """Greedy decoding in llama.cpp through llama-cpp-python's low-level ``eval``: time to first token (the prompt's
    evaluation and the first token's choice) and decode tokens/s over the following ``new_tokens - 1`` tokens."""
    import numpy as np

    from tinyllama.gguf_export import import_llama_cpp

    llama_cpp = import_llama_cpp()
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=len(prompt) + new_tokens + 8, n_batch=len(prompt),
                          n_threads=threads, n_threads_batch=threads, seed=0, verbose=False)

    n_vocab = llm.n_vocab()

    def greedy() -> int:  # the last evaluated token's logits, read where llama.cpp wrote them
        return int(np.argmax(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,))))

    def run(n: int) -> tuple[float, float]:
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(prompt)
        token = greedy()
        t1 = time.perf_counter()
        for _ in range(n - 1):
            llm.eval([token])
            token = greedy()
        return t1 - t0, time.perf_counter() - t1

    run(2)  # warm-up: the file's pages in memory
    ttft = min(run(1)[0] for _ in range(repeats))
    decode = min(run(new_tokens)[1] for _ in range(repeats))
    return {"ttft_s": ttft, "decode_tok_s": (new_tokens - 1) / decode}


def transformers_rows(model: str, dtypes: list[str], caches: list[str], prompt_len: int, new_tokens: int,
                      repeats: int) -> list[dict]:
    from tinyllama.model import build_model, count_parameters

    rows = []
    for name in dtypes:
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[name]
        m = build_model(model, attn_implementation="sdpa", dtype=dtype, seed=0).eval()
        weights = count_parameters(m, exclude_input_embedding=True) * dtype.itemsize
        size = count_parameters(m) * dtype.itemsize
        for cache in caches:
            r = measure(m, 1, prompt_len, new_tokens, cache, False, "cpu", repeats)
            rows.append({"runtime": f"transformers {name}, {cache} cache", "bytes": weights, "size": size,
                         "ttft_s": r["ttft_ms"] / 1000, "decode_tok_s": r["decode_tok_s"]})
        del m
    return rows


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tinyllama-1.1b", help="a config name in configs/model (random weights)")
    p.add_argument("--types", default=",".join(LLAMA_CPP_TYPES), help="llama.cpp types ('' for none)")
    p.add_argument("--no-transformers", action="store_true")
    p.add_argument("--dtypes", default="fp32,bf16", help="transformers dtypes")
    p.add_argument("--caches", default="dynamic,static", help="transformers caches")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--bandwidth-gib", type=float, default=1.0)
    p.add_argument("--work-dir", default="outputs/benchmarks/cpu-inference",
                   help="model folder and GGUF files, made once (default outputs/benchmarks/cpu-inference)")
    p.add_argument("--out", default=None, help="also write the table here (markdown)")
    a = p.parse_args(argv)
    threads = torch.get_num_threads()
    work = Path(a.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    types = [t for t in a.types.split(",") if t]
    files = gguf_files(a.model, types, work) if types else {}  # (made before any timing)

    bandwidth = [read_bandwidth(a.bandwidth_gib)]
    rows = []
    vocab = json.loads((Path(__file__).resolve().parent.parent / "configs" / "model" /
                        f"{a.model}.json").read_text())["vocab_size"]
    prompt = torch.randint(3, vocab, (a.prompt_len,), generator=torch.Generator().manual_seed(0)).tolist()
    for t, path in files.items():
        r = measure_llama_cpp(path, prompt, a.new_tokens, a.repeats, threads)
        rows.append({"runtime": f"llama.cpp {t}", "bytes": gguf_bytes_per_token(path), "size": path.stat().st_size,
                     **r})
    if not a.no_transformers:
        rows += transformers_rows(a.model, a.dtypes.split(","), a.caches.split(","), a.prompt_len, a.new_tokens,
                                  a.repeats)
    bandwidth.append(read_bandwidth(a.bandwidth_gib))
    limit_bw = max(bandwidth)

    lines = [f"{a.model} (random weights), batch 1, prompt {a.prompt_len} tokens, {a.new_tokens} new tokens, greedy; "
             f"{platform.processor() or platform.machine()}, {threads} threads; torch {torch.__version__}",
             f"memory read bandwidth: {bandwidth[0]:.1f} GB/s at the start, {bandwidth[1]:.1f} GB/s at the end "
             f"(the limit below uses {limit_bw:.1f})",
             "| runtime / weights | weights (MB) | read per token (MB) | limit: bandwidth / bytes (tokens/s) | "
             "decode tokens/s | of the limit | time to first token (s) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        limit = limit_bw * 1e9 / r["bytes"]
        r.update(limit_tok_s=limit, fraction=r["decode_tok_s"] / limit)
        lines.append(f"| {r['runtime']} | {r['size'] / 1e6:,.0f} | {r['bytes'] / 1e6:,.0f} | {limit:.1f} | "
                     f"{r['decode_tok_s']:.2f} | "
                     f"{r['fraction']:.0%} | {r['ttft_s']:.2f} |")
    text = "\n".join(lines)
    print("\n" + text)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text + "\n")
    return rows


if __name__ == "__main__":
    main()
