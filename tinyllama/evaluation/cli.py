"""The command line: ``python -m tinyllama.evaluation {run,perplexity,suites}``; ``evaluation/run_lm_eval.sh``
calls ``run``, with its settings from the environment (``EVAL_OUT``, ``EVAL_BACKEND`` ...)."""

from __future__ import annotations

import sys
from typing import Sequence

from .. import environment
from ..utils import entry_point, setup_logging
from .layout import DEFAULT_SUITE
from .perplexity import run_perplexity
from .runner import LmEvalError, run
from .suites import available_suites, load_suite

USAGE = """\
usage: bash evaluation/run_lm_eval.sh MODEL [SUITE] [extra lm_eval arguments]

MODEL  a model folder (config.json + *.safetensors + tokenizer), a training checkpoint
       (outputs/<run>/checkpoints/step-N: its export is used, made on the fly if missing) or a Hub id
SUITE  {suites} (default {default}); or the path of a suite YAML
extra  passed to `lm_eval run` as they are, e.g. --limit 100, --batch_size 16, --model_args parallelize=True

environment:
  EVAL_OUT=DIR             results in DIR/<model-name>/<suite>/ (default outputs/<run>/eval for a run's
                           export, else outputs/eval)
  EVAL_BACKEND=hf|vllm     lm-eval model backend (default hf; vllm must be installed)
  EVAL_BATCH_SIZE, EVAL_DTYPE   defaults: auto/auto on a GPU, 8/float32 on a CPU
  EVAL_TASKS=a,b           run these instead of the suite's tasks: each a suite (all its tasks) or a task
                           name (of this repository's suites, or any lm-eval task); the same names as a data
                           config's decontaminate: suites
  EVAL_DATA_DIR=DIR        offline: read each task's data from local files (see docs/evaluation.md)
  ALLOW_CODE_EXECUTION=1   required for suites that execute model-written code (HumanEval, MBPP)
  EVAL_CHAT_TEMPLATE=1|0   score through the model's chat template, few-shot examples as turns (lm-eval
                           --apply_chat_template --fewshot_as_multiturn) on any suite (1) or never (0); unset:
                           when the suite asks (instruct) and the model has a template
"""


@entry_point
def _cli_run(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE.format(suites=", ".join(available_suites()), default=DEFAULT_SUITE),
              file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    # Read by hand, not argparse: everything after MODEL [SUITE] goes to `lm_eval run` as it is (its own flags,
    # which argparse would have to know); the settings come from the EVAL_* variables run_lm_eval.sh documents.
    model, rest = argv[0], argv[1:]
    suite = DEFAULT_SUITE
    if rest and not rest[0].startswith("-"):
        suite, rest = rest[0], rest[1:]
    try:
        env = environment.eval_settings()
        run(model, suite, env.out, backend=env.backend, batch_size=env.batch_size, dtype=env.dtype, tasks=env.tasks,
            data_dir=env.data_dir, allow_code_execution=env.allow_code_execution, chat_template=env.chat_template,
            extra_args=rest)
    except LmEvalError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return e.returncode
    return 0


@entry_point
def _cli_perplexity(argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m tinyllama.evaluation perplexity",
                                description="Held-out perplexity and bits per byte (comparable across tokenizers).")
    p.add_argument("model", help="model folder, training checkpoint or Hub id")
    p.add_argument("data", help=".txt/.jsonl/.json/.parquet/.csv file, a folder of them, or a dataset name")
    p.add_argument("--text_field", default="text")
    p.add_argument("--split", default="validation", help="split, when DATA is a dataset name")
    p.add_argument("--max_samples", type=int, default=None)
    p.add_argument("--max_length", type=int, default=None, help="window in tokens (default: the model's context)")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--out", default=None, help="results in OUT/<model-name>/perplexity/")
    a = p.parse_args(argv)
    run_perplexity(a.model, a.data, a.out, text_field=a.text_field, split=a.split, max_samples=a.max_samples,
                   max_length=a.max_length, batch_size=a.batch_size)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging()
    argv = list(sys.argv[1:] if argv is None else argv)
    command, rest = (argv[0], argv[1:]) if argv else ("", [])
    if command == "run":
        return _cli_run(rest)
    if command == "perplexity":
        return _cli_perplexity(rest)
    if command == "suites":
        for name in available_suites():
            s = load_suite(name)
            print(f"{name:12s} {', '.join(f'{t.task}({t.num_fewshot}-shot)' for t in s.tasks)}")
        return 0
    print("usage: python -m tinyllama.evaluation {run,perplexity,suites} ...", file=sys.stderr)
    return 2
