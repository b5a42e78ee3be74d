#!/usr/bin/env bash
# litgpt's side environment for `make test-interop`: a virtual environment outside the repository with litgpt and
# its dependencies at the pins of requirements-litgpt.txt (litgpt pins an older huggingface_hub than this
# repository, so it cannot share the project's venv). Prints the environment's python on stdout, for
# TINYLLAMA_LITGPT_PYTHON (tests/test_interop_litgpt.py runs tests/litgpt_side.py with it).
#
#   bash scripts/litgpt_env.sh                  # build once per requirements-litgpt.txt, then reuse
#   PYTHON=python3.11 bash scripts/litgpt_env.sh
#
# The environment lives in ${XDG_CACHE_HOME:-~/.cache}/tinyllama-litgpt/venv-<hash of requirements-litgpt.txt>
# (TINYLLAMA_LITGPT_CACHE to move it); a build that did not finish (no .complete file) is started again. About
# 1 GB; a first build takes a minute or two where pip's cache and a local torch wheel are there, longer otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
CACHE=${TINYLLAMA_LITGPT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tinyllama-litgpt}
key=$(sha256sum requirements-litgpt.txt | cut -c1-12)
venv=$CACHE/venv-$key
if [[ ! -f $venv/.complete ]]; then
    echo "litgpt_env.sh: building $venv from requirements-litgpt.txt" >&2
    start=$SECONDS
    rm -rf "$venv"
    mkdir -p "$CACHE"
    "$PYTHON" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements-litgpt.txt >&2
    "$venv/bin/python" -c "import litgpt.model, litgpt.scripts.convert_lit_checkpoint" >&2
    touch "$venv/.complete"
    echo "litgpt_env.sh: built in $((SECONDS - start)) s" >&2
fi
echo "litgpt_env.sh: $("$venv/bin/python" -m pip --disable-pip-version-check list 2>/dev/null | grep -E '^(litgpt|torch) ' | tr -s ' ' | paste -sd, -)" >&2
echo "$venv/bin/python"
