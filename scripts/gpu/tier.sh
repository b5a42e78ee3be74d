#!/usr/bin/env bash
# The GPU tier on a bare, offline GPU machine, in one command (`make test-gpu` runs this):
#
#   python scripts/gpu/wheels.py fetch --python 3.12 --cuda 12.8    # once, on a machine with PyPI (the target's
#                                                                    # Python and torch.version.cuda)
#   bash scripts/gpu/tier.sh                                         # on the GPU machine, with .whl/ carried along
#
# 1. installs the set in .whl/ (scripts/gpu/wheels.py) into an empty folder ($TINYLLAMA_GPU_SITE, default
#    /tmp/tinyllama-site) put first on PYTHONPATH: the machine's CUDA torch stays, everything else is the repository's
#    tested versions (its own transformers is shadowed);
# 2. prints the card and the versions;
# 3. runs the GPU tier (pytest -m gpu tests/gpu): a missing kernel or package FAILS it, except those named in
#    TINYLLAMA_GPU_ALLOW_MISSING (default here: flash_attention_2, which has no wheel for most torch/CUDA pairs; set
#    it empty where flash-attn is installed). The training checks use TINYLLAMA_GPU_ATTENTION (default torch_varlen,
#    torch's own FlashAttention varlen kernel; flash_attention_2 where flash-attn is installed);
# 4. the pretraining benchmark of the 1.1B model at seq_len 2048 (scripts/gpu/benchmark.sh pretrain): one row per
#    attention kernel with document masking, Liger, compile, activation checkpointing, ZeRO-2.
# The log and the tables go to $OUT (the device tool's folder) or outputs/gpu-tier/. Sized for about 10 minutes on
# one H100 (an estimate: not yet run on a GPU); the exit status is the tier's.
set -uo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
out=${OUT:-outputs/gpu-tier}
site=${TINYLLAMA_GPU_SITE:-/tmp/tinyllama-site}
mkdir -p "$out"
export TINYLLAMA_GPU_ATTENTION=${TINYLLAMA_GPU_ATTENTION:-torch_varlen}
export TINYLLAMA_GPU_ALLOW_MISSING=${TINYLLAMA_GPU_ALLOW_MISSING-flash_attention_2}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
exec > >(tee "$out/tier.log") 2>&1

if [[ -f .whl/MANIFEST.txt ]]; then
    "$PYTHON" scripts/gpu/wheels.py install --wheels .whl --target "$site" || exit 1
    export PYTHONPATH="$site"
else
    echo "no wheel set in .whl/ (scripts/gpu/wheels.py fetch): running with the packages of $PYTHON as they are"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi || true
"$PYTHON" - <<'PY'
import importlib.metadata as md, platform, torch
card = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
print(f"card: {card}; python {platform.python_version()}; torch {torch.__version__} (CUDA {torch.version.cuda})")
for name in ("transformers", "accelerate", "deepspeed", "trl", "peft", "datasets", "liger-kernel", "bitsandbytes",
             "flash-attn", "triton"):
    try:
        print(f"{name} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"{name}: not installed")
PY
echo "attention for the training checks: $TINYLLAMA_GPU_ATTENTION; allowed to be missing: ${TINYLLAMA_GPU_ALLOW_MISSING:-nothing}"

"$PYTHON" -m pytest -q -m gpu tests/gpu -rs --durations=15 -p no:cacheprovider
status=$?
STEPS=${STEPS:-6} OUT="$out" PYTHON="$PYTHON" bash scripts/gpu/benchmark.sh pretrain || status=${status:-1}
echo "GPU tier exit status: $status (log and tables in $out)"
exit $status
