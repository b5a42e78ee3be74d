#!/usr/bin/env bash
# Bring what a bare GPU machine lacks for scripts/gpu/benchmark.sh, as wheels in .whl/ (git-ignored), from a
# machine that reaches PyPI. The GPU machine then installs them with no network (benchmark.sh does it).
#
#   bash scripts/gpu/fetch_wheels.sh            # on a machine with pip access, in the repository root
#
# Targets CPython 3.12 on x86-64 Linux (override with PYVER=3.11 etc.). The versions are requirements.txt's pins.
# Not included: torch (the GPU machine's CUDA build is used as it is) and flash-attn, which PyPI ships only as
# source (a build takes an hour or more); drop a prebuilt flash_attn wheel matching that machine's torch and CUDA
# into .whl/ and the benchmark adds the flash_attention_2 variants by itself.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
PYVER=${PYVER:-3.12}
mkdir -p .whl
pin() { sed -n "s/^$1==\([^ #]*\).*/\1/p" requirements.txt requirements-gpu.txt | head -1; }
platform=(--only-binary=:all: --python-version "$PYVER" --implementation cp --platform manylinux_2_28_x86_64
          --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
# transformers at the repository's pin (the GPU image may hold another), Liger's kernels, and the pure-Python
# needs of DeepSpeed that such an image lacks (pydantic and its core, hjson).
"$PYTHON" -m pip download -q --no-deps "${platform[@]}" -d .whl \
    "transformers==$(pin transformers)" "liger-kernel==$(pin liger-kernel)" \
    hjson==3.1.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
    typing-extensions==4.16.0
# DeepSpeed is published as source only: build a pure-Python wheel here (its CUDA ops, which the ZeRO-2 benchmark
# does not use, would be JIT-built there).
DS_BUILD_OPS=0 "$PYTHON" -m pip wheel -q --no-deps --no-build-isolation -w .whl "deepspeed==$(pin deepspeed)"
ls -l .whl
du -sh .whl
