#!/usr/bin/env bash
# The GPU benchmarks of docs/benchmarks.md in one command, for a bare GPU machine with no network:
#
#   bash scripts/gpu/benchmark.sh [pretrain|inference|batched|draft|all]       # default: all
#
# 1. installs the wheel set in .whl/ (scripts/gpu/wheels.py) into an empty folder, if there is one and PYTHONPATH
#    does not already name it (scripts/gpu/tier.sh installs it first; not with TOY=1);
# 2. prints the card and the software versions;
# 3. runs scripts/benchmark_pretrain.py over the throughput variants (the 1.1B model, seq_len 2048,
#    bf16, STEPS timed steps, default 10): the attention kernel (flash_attention_2 where flash-attn imports, else
#    sdpa), Liger kernels, torch.compile, activation checkpointing with a larger micro batch, document masking under
#    every kernel (flash_attention_2, torch_varlen, flex_attention, sdpa's block-diagonal mask) and DeepSpeed ZeRO-2
#    on one GPU; rows whose package is missing are left out, with a line saying so;
# 4. runs scripts/benchmark_inference.py at batch 1 and 64 (dynamic cache, static cache, static + torch.compile);
# 4b. batched decoding: the article's "7,000 tokens per second on a single high-end GPU" (docs/reference.md, "Speed":
#    vLLM on one A40, batch 100, n=10, 7,094.5 tokens/s) as a row: decode tokens/s of the 1.1B model at batch 100
#    with transformers' generate (dynamic cache, static cache, static + torch.compile), bf16;
# 5. speculative decoding at batch 1 (scripts/benchmark_inference.py --draft, --prompt-lookup): TinyLlama-Chat
#    drafting for Llama-2-7B-chat, and TinyLlama python-v0.1 drafting for CodeLlama-7B (its purpose), in bf16.
#    The machine has no network: the four models must be in the Hugging Face cache (HF_HOME) or given as local
#    folders in DRAFT_PAIRS ("TARGET DRAFT;TARGET DRAFT"); a pair whose weights are absent is reported, not run.
#
# Every table also lands in $OUT (the device tool's folder) or outputs/benchmarks/. Sized to fit in about 5 minutes
# per part on an H100; run the parts as separate calls where one call's time is short. TOY=1 runs the same steps on
# the tiny model on CPU in about two minutes, in the environment as it is (tests/test_benchmarks.py does), so this
# script does not rot between GPU sessions.
set -euo pipefail
cd "$(dirname "$0")/../.."
what=${1:-all}
out=${OUT:-outputs/benchmarks}
mkdir -p "$out"
PYTHON=${PYTHON:-python3}
site=${TINYLLAMA_GPU_SITE:-/tmp/tinyllama-site}
if [[ ${TOY:-0} != 1 && -f .whl/MANIFEST.txt && ":${PYTHONPATH:-}:" != *":$site:"* ]]; then
    "$PYTHON" scripts/gpu/wheels.py install --wheels .whl --target "$site"
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

if [[ ${TOY:-0} == 1 ]]; then
    model=tiny; train=(--seq-len 32 --micro-batch 2 --steps 1 --warmup 1); mb_big=mb4
    infer=(--batch-sizes 1,2 --prompt-len 8 --new-tokens 4 --repeats 1 --compile-on-cpu)
    batched=(--batch-sizes 3 --prompt-len 8 --new-tokens 4 --repeats 1)
    pairs=${DRAFT_PAIRS:-"tiny tiny"}; draft=(--prompt-len 16 --new-tokens 8 --prompts 2 --repeats 1)
else
    model=tinyllama-1.1b; train=(--seq-len 2048 --micro-batch 8 --steps "${STEPS:-10}" --warmup 3); mb_big=mb16
    infer=(--batch-sizes 1,64 --prompt-len 128 --new-tokens 256 --repeats 2)
    batched=(--batch-sizes 100 --prompt-len 128 --new-tokens 256 --repeats 1)
    pairs=${DRAFT_PAIRS:-"meta-llama/Llama-2-7b-chat-hf TinyLlama/TinyLlama-1.1B-Chat-v1.0;codellama/CodeLlama-7b-hf TinyLlama/TinyLlama-1.1B-python-v0.1"}
    draft=(--prompt-len 128 --new-tokens 128 --prompts 8 --repeats 1)
fi

"$PYTHON" - <<'PY' | tee "$out/versions.txt"
import importlib.metadata as md, platform, torch
card = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
print(f"card: {card}; python {platform.python_version()}; torch {torch.__version__} (CUDA {torch.version.cuda})")
for name in ("transformers", "accelerate", "deepspeed", "liger-kernel", "flash-attn", "triton"):
    try:
        print(f"{name} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"{name}: not installed")
PY

if [[ $what == pretrain || $what == all ]]; then
    # The rows: the attention kernel without document masking (flash_attention_2 where flash-attn imports, else sdpa:
    # torch's own FlashAttention), Liger, compile, activation checkpointing with a larger micro batch, ZeRO-2; then
    # document masking under every kernel that can run here (flash_attention_2, torch_varlen, flex_attention, sdpa's
    # block-diagonal mask), torch_varlen also compiled. A row whose package or device is missing is left out and
    # said so here (the GPU tier's own checks fail on what the run did not allow to be missing).
    has() { "$PYTHON" -c "import $1" 2>/dev/null; }
    cuda=0; "$PYTHON" -c "import torch; assert torch.cuda.is_available()" 2>/dev/null && cuda=1
    attn=sdpa; has flash_attn && [[ $cuda == 1 ]] && attn=fa2
    liger=""; if [[ $cuda == 1 ]] && has liger_kernel; then liger=+liger; else echo "left out: Liger (needs CUDA and liger-kernel)"; fi
    variants="$attn,$attn$liger,$attn$liger+compile,$attn$liger+ckpt+$mb_big"
    [[ $attn == fa2 ]] && variants+=",fa2$liger+docmask"
    if [[ $cuda == 1 ]]; then variants+=",varlen$liger+docmask,varlen$liger+docmask+compile"
    else echo "left out: torch_varlen (CUDA only)"; fi
    variants+=",flex$liger+docmask,sdpa$liger+docmask"
    if has deepspeed; then variants+=",$attn$liger+zero2"; else echo "left out: ZeRO-2 (deepspeed is not installed)"; fi
    variants=$(tr , '\n' <<<"$variants" | awk '!seen[$0]++' | paste -sd,)  # (without Liger, two rows coincide)
    "$PYTHON" scripts/benchmark_pretrain.py --model "$model" "${train[@]}" --variants "$variants" \
        | tee "$out/pretrain.md"
fi
if [[ $what == inference || $what == all ]]; then
    "$PYTHON" scripts/benchmark_inference.py --model "$model" "${infer[@]}" | tee "$out/inference.md"
fi
if [[ $what == batched || $what == all ]]; then
    echo "reference: TinyLlama's README, vLLM on one A40, batch 100, n=10: 7,094.5 tokens/s" | tee "$out/batched.md"
    "$PYTHON" scripts/benchmark_inference.py --model "$model" "${batched[@]}" | tee -a "$out/batched.md"
fi
if [[ $what == draft || $what == all ]]; then
    : >"$out/draft.md"
    IFS=';' read -ra pair_list <<<"$pairs"
    for pair in "${pair_list[@]}"; do
        read -r target draft_model <<<"$pair"
        if ! "$PYTHON" - "$target" "$draft_model" <<'PY'
import os, sys
from huggingface_hub import try_to_load_from_cache
missing = [m for m in sys.argv[1:] if "/" in m and not os.path.isdir(m)
           and not isinstance(try_to_load_from_cache(m, "config.json"), str)]
if missing:
    print(f"skipped {' and '.join(missing)}: not on this machine (no network here; fill HF_HOME first)")
    sys.exit(1)
PY
        then
            echo "| $target drafted by $draft_model | skipped: weights not on this machine |" | tee -a "$out/draft.md"
            continue
        fi
        "$PYTHON" scripts/benchmark_inference.py --model "$target" --draft "$draft_model" --prompt-lookup 10 \
            --batch-sizes 1 "${draft[@]}" | tee -a "$out/draft.md"
    done
fi
