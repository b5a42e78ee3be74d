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

DATA_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}
"""The ``datasets`` builder that reads a local data file, by the file's suffix: the offline task data
(``offline.py``) and the perplexity texts (``perplexity.py``)."""
