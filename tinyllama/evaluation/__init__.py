"""Evaluation: what to run with lm-evaluation-harness, on which model, and where the results go.

lm-eval runs its own tasks and its own scoring; nothing here computes a benchmark score. The package, in the
order the work flows:

- ``suites.py``: the suites (``evaluation/suites/<name>.yaml``: lm-eval task names, shots, the metric to report)
  and the published reference scores, both read by the configuration parser (``tinyllama.config.check_mapping``)
  and checked against the installed lm-eval;
- ``models.py``: resolves MODEL: a model folder (``config.json`` + ``*.safetensors`` + tokenizer), a training
  checkpoint (``outputs/<run>/checkpoints/step-N`` -> its ``outputs/<run>/export/step-N``, exported on the fly
  with ``tinyllama.checkpoints.export_checkpoint`` when missing) or a Hub id;
- ``offline.py``: optionally points the suite's tasks at local data files (:func:`write_offline_tasks`: a
  generated task YAML ``include``s lm-eval's installed YAML and overrides only the data source);
- ``runner.py``: runs ``python -m lm_eval run`` (lm-eval's own CLI, one call per shot count) into
  ``<out>/<model-name>/<suite>/`` with ``run_info.json`` beside lm-eval's ``results_*.json``/``samples_*.jsonl``;
- ``results.py``: reads the results back (:func:`summarize`); :func:`run_suite` does all of it for the
  pretraining loop;
- ``perplexity.py``: held-out perplexity and bits per byte;
- ``scoreboard.py``: the results beside TinyLlama's published scores, Markdown tables and plots over tokens seen
  (:func:`~tinyllama.evaluation.scoreboard.build_report`, which ``evaluation/report.py`` calls);
- ``contamination.py``: a model's training data (its ``training_metadata.json``, or given folders) and the
  evaluation items its sources' manifests found in it, for the scoreboard's marks;
- ``cli.py``: the command line; ``layout.py``: folder and file names.

Command line (``evaluation/run_lm_eval.sh`` calls the first form)::

    python -m tinyllama.evaluation run MODEL [SUITE] [extra lm_eval arguments]
    python -m tinyllama.evaluation perplexity MODEL DATA [--text_field text] [--out DIR] ...
    python -m tinyllama.evaluation suites

The names users, recipes and scripts call are importable from ``tinyllama.evaluation`` itself; the rest from their
module.
"""

from .layout import (  # noqa: F401
    EVAL_DIR, SUITES_DIR, REFERENCE_FILE, PERPLEXITY_METRIC, DEFAULT_SUITE, DEFAULT_OUT, TRAINING_METADATA_FILE,
    RUN_INFO_FILE, PERPLEXITY_RESULTS_FILE, BACKENDS,
)
from .suites import (  # noqa: F401
    SuiteTask, Suite, available_suites, load_suite, select_tasks, lm_eval_task_index, check_suite_tasks,
    parse_tokens, load_reference,
)
from .models import (  # noqa: F401
    ResolvedModel, is_model_folder, read_training_metadata, export_checkpoint_on_the_fly,
    resolve_model, model_chat_template,
)
from .offline import leaf_tasks, write_offline_tasks  # noqa: F401
from .runner import LmEvalError, lm_eval_commands, prompt_format, run  # noqa: F401
from .results import load_results, clean_metrics, pick_metric, summarize, run_suite, export_hook  # noqa: F401
from .perplexity import load_texts, perplexity_metric, run_perplexity  # noqa: F401
from .cli import USAGE, main  # noqa: F401
