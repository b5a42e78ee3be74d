"""Where evaluation inputs and outputs live: the suite, reference and metric folders, and the file names
written beside lm-eval's results."""

from __future__ import annotations

from pathlib import Path

from ..utils import repo_root

EVAL_DIR = repo_root() / "evaluation"
SUITES_DIR = EVAL_DIR / "suites"
REFERENCE_FILE = EVAL_DIR / "reference" / "tinyllama.yaml"
PERPLEXITY_METRIC = EVAL_DIR / "metrics" / "perplexity_bpb"
DEFAULT_SUITE = "commonsense"
DEFAULT_OUT = Path("outputs") / "eval"  # for models that are not inside a run folder

# Written by the pretraining loop into every export (outputs/<run>/export/step-N/): {"tokens_seen": int, "step": int}
TRAINING_METADATA_FILE = "training_metadata.json"
RUN_INFO_FILE = "run_info.json"
PERPLEXITY_RESULTS_FILE = "perplexity.json"
BACKENDS = ("hf", "vllm")

# Inherited by a child process, these would make lm-eval's accelerate join the training job's process group.
_DISTRIBUTED_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK",
                    "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID", "NODE_RANK")
# Arguments the runner owns: a suite decides the tasks (and whether a chat model is scored with its chat template,
# which run_info.json records) and the runner the output folder.
_OWNED_ARGS = {"--tasks": "EVAL_TASKS=a,b (or run_suite(tasks_override=...))", "-t": "EVAL_TASKS=a,b",
               "--output_path": "EVAL_OUT=DIR", "-o": "EVAL_OUT=DIR",
               "--apply_chat_template": "EVAL_CHAT_TEMPLATE=1 (or run(..., chat_template=True))",
               "--fewshot_as_multiturn": "EVAL_CHAT_TEMPLATE=1 (few-shot examples become turns with the template)"}
