#!/usr/bin/env bash
# The GPU benchmarks of docs/benchmarks.md in one command, for a bare GPU machine with no network:
#
#   bash scripts/gpu/benchmark.sh [pretrain|inference|all]       # default: all
#
# 1. installs the wheels in .whl/ (scripts/gpu/fetch_wheels.sh) into /tmp/site, if there are any (not with TOY=1);
# 2. prints the card and the software versions;
# 3. runs scripts/benchmark_pretrain.py over the throughput variants (the 1.1B model, seq_len 2048,
#    bf16): the attention kernel (flash_attention_2 where flash-attn imports, else sdpa), Liger kernels,
#    torch.compile, activation checkpointing with a larger micro batch, document masking (varlen flash-attention,
#    else flex_attention and sdpa's block-diagonal mask) and DeepSpeed ZeRO-2 on one GPU;
# 4. runs scripts/benchmark_inference.py at batch 1 and 64 (dynamic cache, static cache, static + torch.compile).
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
if [[ ${TOY:-0} != 1 ]] && compgen -G ".whl/*.whl" >/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

if [[ ${TOY:-0} == 1 ]]; then
    model=tiny; train=(--seq-len 32 --micro-batch 2 --steps 1 --warmup 1); mb_big=mb4
    infer=(--batch-sizes 1,2 --prompt-len 8 --new-tokens 4 --repeats 1 --compile-on-cpu)
else
    model=tinyllama-1.1b; train=(--seq-len 2048 --micro-batch 8 --steps 10 --warmup 3); mb_big=mb16
    infer=(--batch-sizes 1,64 --prompt-len 128 --new-tokens 256 --repeats 2)
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
    if "$PYTHON" -c "import flash_attn" 2>/dev/null; then
        attn=fa2; docmask=fa2+liger+docmask
    else
        attn=sdpa; docmask=flex+liger+docmask,sdpa+liger+docmask
    fi
    variants="$attn,$attn+liger,$attn+liger+compile,$attn+liger+ckpt+$mb_big,$docmask,$attn+liger+zero2"
    if [[ ${TOY:-0} == 1 ]]; then  # Liger's Triton kernels need a GPU: on CPU the same variants without them
        variants=$(tr , '\n' <<<"${variants//+liger/}" | awk '!seen[$0]++' | paste -sd,)
    fi
    "$PYTHON" scripts/benchmark_pretrain.py --model "$model" "${train[@]}" --variants "$variants" \
        | tee "$out/pretrain.md"
fi
if [[ $what == inference || $what == all ]]; then
    "$PYTHON" scripts/benchmark_inference.py --model "$model" "${infer[@]}" | tee "$out/inference.md"
fi
