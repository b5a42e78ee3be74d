"""One command for TinyLlama v1.1's chain: basic -> continual (a variant) -> cooldown [-> SFT -> DPO] [-> evaluation].

A pipeline is data (``configs/pipeline/*.yaml``): an ordered list of stages, each one recipe run with a config and
overrides, most reading the output of an earlier stage::

    name: demo-v1.1              # run folders in outputs/<name>/<stage>/ (or --output-root)
    variant: math_code           # the default variant; {variant} in stage names and config paths is replaced
    variants: [general, math_code, chinese, code]
    launcher: [python]           # how recipe stages start, e.g. [accelerate, launch, --config_file, <file>]
    stages:
      - name: continual-{variant}
        recipe: pretrain         # pretrain (default) | sft | dpo | eval
        config: configs/continual/demo-{variant}.yaml
        init_from: basic         # an earlier stage (its output), 'previous', or a path / Hub id; none: the config's
        overrides: {}            # --key value for the recipe
        variants: [general]      # only for these variants (default: all)
        optional: chat           # only with --with-chat (chat) or --with-eval (eval)
        launcher: [...]          # this stage's own launcher
        suite: commonsense       # eval stages: the lm-eval suite (and limit: lm-eval --limit)

How stages connect and when they are skipped:

- A stage's run folder is ``<root>/<stage name>``. A pretraining stage is started with ``--output_dir <folder>
  --init_from <earlier stage>/export/final --resume auto``: ``init_from`` names the weights a stage starts from,
  ``resume auto`` continues an interrupted run of the same stage from its own newest checkpoint (its own step and
  data position). SFT/DPO get ``--model_name_or_path`` and ``--output_dir``; evaluation runs
  ``python -m tinyllama.evaluation run`` on the last model with ``EVAL_OUT`` set to its folder.
- A finished stage is skipped only while it is still what the pipeline would run: the same resolved config (the
  recipe's ``config.yaml``, keys that do not change the weights aside: ``OPERATIONAL_KEYS``) and the same input
  weights (a fingerprint of the earlier stage's output, kept in ``<folder>/pipeline_stage.json``). A stage whose
  config or input changed is never silently reused or resumed: the pipeline stops before any work, names every such
  stage and why, and ``--rerun STAGE`` retrains that stage and every later one.
- At the end: a table (stage, status, steps, tokens, cumulative tokens, final loss, time, folder), also written as
  ``<root>/pipeline-<variant>.json`` and ``.md``, and ``pipeline-<variant>.png`` beside them: learning rate, batch
  size, source shares and loss over the chain's tokens, read from each stage's ``logs/metrics.jsonl``.

The package, in the order a run goes through it: ``spec.py`` (the pipeline file: :func:`load_pipeline`, the stages
of a variant with "{variant}" and "{chat}" replaced), ``plan.py`` (:func:`plan`: the defaults for the variant and the
root folder applied once, each stage resolved into a complete :class:`Planned` one: folder, arguments, resolved
config, the stage it reads and its teacher), ``state.py`` (:func:`assess`: what is on disk, as each stage's state and
reason), ``run.py`` (stage commands and :func:`run_pipeline`), ``summary.py`` (the summary table, ``.json`` and
``.md``), ``plot.py`` (the chain's plot).
"""

from .spec import (  # noqa: F401
    REPO, RECIPES, OPTIONAL_FLAGS, STAGE_KEYS, PIPELINE_KEYS, MARKER, OPERATIONAL_KEYS, StageSpec, Pipeline,
    load_pipeline,
)
from .plan import Plan, Planned, plan  # noqa: F401
from .state import fingerprint, read_marker, assess  # noqa: F401
from .summary import summary_rows, COLUMNS, table_cells, format_table, write_summary  # noqa: F401
from .plot import chain_series, plot_chain  # noqa: F401
from .run import launcher_for, command, run_stage, StageFailed, describe, run_pipeline  # noqa: F401
