#!/usr/bin/env bash
# Evaluate a model on a benchmark suite with lm-evaluation-harness (its own tasks and scoring).
#
#   bash evaluation/run_lm_eval.sh MODEL [SUITE] [extra lm_eval arguments]
#
# MODEL: a model folder, a training checkpoint (outputs/<run>/checkpoints/step-N, read through its export) or a
# Hub id. SUITE: a file in evaluation/suites/ (commonsense, instruct, math_code, chinese; default commonsense).
# Results: $EVAL_OUT/<model-name>/<suite>/ (lm-eval's results_*.json, samples_*.jsonl, and run_info.json).
# Settings come from the environment (EVAL_OUT, EVAL_BACKEND=hf|vllm, EVAL_BATCH_SIZE, EVAL_DTYPE, EVAL_TASKS,
# EVAL_DATA_DIR, ALLOW_CODE_EXECUTION=1, EVAL_CHAT_TEMPLATE=1|0); `bash evaluation/run_lm_eval.sh --help` lists them. The work is done by
# tinyllama/evaluation/ (cli.py), which checks everything (suite, model, opt-ins) before anything is loaded.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The interpreter: $PYTHON if set, else the first of the repository's .venv, python3 and python on PATH that has
# lm_eval installed; never a Python without the requirements (that would fail later with an import error).
if [[ -n "${PYTHON:-}" ]]; then
  PY="$PYTHON"
else
  PY=""
  for candidate in "$REPO/.venv/bin/python" python3 python; do
    if command -v "$candidate" >/dev/null 2>&1 \
        && "$candidate" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("lm_eval") is None)' \
           >/dev/null 2>&1; then
      PY="$candidate"
      break
    fi
  done
  if [[ -z "$PY" ]]; then
    echo "error: no Python with lm_eval found (tried $REPO/.venv/bin/python, python3, python on PATH);" \
         "set PYTHON=/path/to/python of the environment that has requirements.txt installed" >&2
    exit 2
  fi
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" -m tinyllama.evaluation run "$@"
