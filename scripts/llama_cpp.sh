#!/usr/bin/env bash
# llama.cpp for the GGUF export and its checks: llama-cpp-python, built from its PyPI source distribution at the one
# version the repository pins (tinyllama/gguf_export.py, LLAMA_CPP_PYTHON_VERSION), installed into the venv.
#
#   bash scripts/llama_cpp.sh                 # fetch (once), build (once per version + CMAKE_ARGS + CPU), install
#   PY=/path/to/python bash scripts/llama_cpp.sh
#
# The source distribution vendors the llama.cpp tree it builds: convert_hf_to_gguf.py, gguf-py and the C++ library.
# scripts/export_gguf.py runs that converter and quantises with that library, so the GGUF writer and the runtime
# that reads its files are one llama.cpp commit. Everything fetched or built stays outside the repository, in
# ${XDG_CACHE_HOME:-~/.cache}/tinyllama-wheels (TINYLLAMA_WHEEL_CACHE to move it):
#   llama_cpp_python-<version>.tar.gz                 the source distribution, from PyPI by exact version
#   src/llama_cpp_python-<version>/vendor/llama.cpp   unpacked: the converter tinyllama/gguf_export.py runs
#   wheels/<version>-<key>/llama_cpp_python-*.whl     the built wheel; key = hash of CMAKE_ARGS and the CPU flags
# Building takes about 10 minutes on 2 idle cores (the Python bindings need only the library: tools, tests,
# examples, server and llava are switched off). GGML_NATIVE=ON compiles for this CPU, hence the CPU in the key.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
VERSION=$(PYTHONPATH=$PWD "$PY" -c "from tinyllama.gguf_export import LLAMA_CPP_PYTHON_VERSION as v; print(v)")
CACHE=${TINYLLAMA_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tinyllama-wheels}
CMAKE_ARGS=${CMAKE_ARGS:-"-DGGML_NATIVE=ON -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF"}
export CMAKE_ARGS CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
cpu=$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || uname -m)
key=$(printf '%s\n%s\n' "$CMAKE_ARGS" "$cpu" | sha256sum | cut -c1-12)
sdist=$CACHE/llama_cpp_python-$VERSION.tar.gz
src=$CACHE/src/llama_cpp_python-$VERSION
wheels=$CACHE/wheels/$VERSION-$key
mkdir -p "$CACHE/src" "$CACHE/wheels"

if [[ ! -f $sdist ]]; then
    echo "llama_cpp.sh: fetching llama-cpp-python $VERSION's source distribution from PyPI" >&2
    tmp=$(mktemp -d "$CACHE/.download.XXXXXX")
    "$PY" -m pip download --quiet --no-binary :all: --no-deps "llama-cpp-python==$VERSION" -d "$tmp"
    mv "$tmp/llama_cpp_python-$VERSION.tar.gz" "$sdist"
    rm -rf "$tmp"
fi
if [[ ! -f $src/vendor/llama.cpp/convert_hf_to_gguf.py ]]; then
    tmp=$(mktemp -d "$CACHE/src/.unpack.XXXXXX")
    tar xzf "$sdist" -C "$tmp"
    rm -rf "$src"
    mv "$tmp/llama_cpp_python-$VERSION" "$src"
    rm -rf "$tmp"
fi
if ! compgen -G "$wheels/llama_cpp_python-*.whl" >/dev/null; then
    echo "llama_cpp.sh: building llama-cpp-python $VERSION (CMAKE_ARGS=$CMAKE_ARGS); about 10 minutes on 2 cores" >&2
    start=$SECONDS
    tmp=$(mktemp -d "$CACHE/wheels/.build.XXXXXX")
    "$PY" -m pip wheel --quiet --no-deps "$sdist" -w "$tmp"
    rm -rf "$wheels"
    mv "$tmp" "$wheels"
    echo "llama_cpp.sh: built in $((SECONDS - start)) s: $(ls "$wheels")" >&2
fi
"$PY" -m pip install --quiet --no-deps --force-reinstall "$wheels"/llama_cpp_python-*.whl
"$PY" -m pip install --quiet -r requirements-llama-cpp.txt
"$PY" -c "import llama_cpp; print('llama_cpp.sh: llama-cpp-python', llama_cpp.__version__, 'installed; converter:', '$src/vendor/llama.cpp')"
