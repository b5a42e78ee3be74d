"""Run TinyLlama v1.1's chain end to end: basic -> continual (a variant) -> cooldown [-> SFT -> DPO] [-> evaluation].

    python scripts/pipeline.py                                   # the embedded demo (configs/pipeline/demo.yaml), CPU
    python scripts/pipeline.py --variant chinese --with-chat     # another variant, plus the chat stages (SFT, DPO)
    python scripts/pipeline.py --with-chat orpo                  # the chat stages with ORPO after SFT (or simpo, kto)
    python scripts/pipeline.py --pipeline configs/pipeline/tinyllama-v1.1.yaml --variant math_code
    python scripts/pipeline.py --dry-run                         # what would run, what would be skipped, and why

Each stage reads the previous one's output (export/final); finished stages are skipped; an interrupted stage
resumes from its own last checkpoint; a stage whose config or input changed is reported and nothing runs until it is
restored or retrained (--rerun STAGE: that stage and every later one). At the end a table (stage, tokens, final
loss, time, folder) is printed and written to <root>/pipeline-<variant>.{md,json}, with a plot of learning rate,
batch size and source shares over the whole chain beside it (.png). See tinyllama/pipeline/ and docs/stages.md.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from tinyllama.chat.methods import PREFERENCE_METHODS
from tinyllama.pipeline import REPO, StageFailed, run_pipeline
from tinyllama.utils import entry_point

DEMO_PIPELINE = REPO / "configs" / "pipeline" / "demo.yaml"


@entry_point
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pipeline", default=str(DEMO_PIPELINE), help="a pipeline file (default: the embedded demo)")
    p.add_argument("--variant", default=None, help="which variant (default: the pipeline's 'variant')")
    p.add_argument("--output-root", default=None, help="stage folders go here (default: outputs/<pipeline name>)")
    p.add_argument("--with-chat", nargs="?", const=True, default=False, metavar="METHOD",
                   choices=[True, *PREFERENCE_METHODS],
                   help="also run the chat stages: SFT, then the pipeline file's preference method (chat:, DPO in "
                        f"the shipped files) or METHOD, one of {', '.join(PREFERENCE_METHODS)}")
    p.add_argument("--with-eval", action="store_true", help="also run the evaluation stage (lm-eval suite)")
    p.add_argument("--rerun", metavar="STAGE", default=None,
                   help="retrain STAGE and every later stage (their folders are deleted first)")
    p.add_argument("--launcher", default=None,
                   help="how recipe stages start, e.g. 'accelerate launch --num_processes 8' (default: the file's)")
    p.add_argument("--dry-run", action="store_true", help="show the plan and the state of each stage; run nothing")
    a = p.parse_args(argv)
    try:
        run_pipeline(a.pipeline, a.variant, a.output_root, a.with_chat, a.with_eval, a.rerun, a.dry_run,
                     shlex.split(a.launcher) if a.launcher else None)
    except StageFailed as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
