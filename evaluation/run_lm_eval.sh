#!/usr/bin/env bash
# Evaluate a model on a benchmark suite with lm-evaluation-harness (its own tasks and scoring).
#
#   bash evaluation/run_lm_eval.sh MODEL [SUITE] [extra lm_eval arguments]
#
# MODEL: a model folder, a training checkpoint (outputs/<run>/checkpoints/step-N, read through its export) or a
# Hub id. SUITE: a file in evaluation/suites/ (commonsense, instruct, math_code, chinese; default commonsense).
# Results: $EVAL_OUT/<model-name>/<suite>/ (lm-eval's results_*.json, samples_*.jsonl, and run_info.json).
# Settings come from the environment (EVAL_OUT, EVAL_BACKEND=hf|vllm, EVAL_BATCH_SIZE, EVAL_DTYPE, EVAL_TASKS,
# EVAL_DATA_DIR, ALLOW_CODE_EXECUTION=1); `bash evaluation/run_lm_eval.sh --help` lists them. The work is done by
# tinyllama/evaluation.py, which checks everything (suite, model, opt-ins) before anything is loaded.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -n "${PYTHON:-}" ]]; then
  PY="$PYTHON"
elif [[ -x "$REPO/.venv/bin/python" ]]; then
  PY="$REPO/.venv/bin/python"
else
  PY="python3"
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" -m tinyllama.evaluation run "$@"
