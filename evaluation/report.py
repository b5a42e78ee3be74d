#!/usr/bin/env python
"""This project's evaluation results beside TinyLlama's published scores: Markdown tables and plots.

    python evaluation/report.py RESULTS... [--out DIR] [--data_dir DIR...]

RESULTS are result folders written by evaluation/run_lm_eval.sh (``<out>/<model-name>/<suite>/``, with
``run_info.json``), any folder above them (searched recursively), plain lm-eval output folders or
``results_*.json`` files, and perplexity folders (``python -m tinyllama.evaluation perplexity``).

The table is printed and written to ``DIR/report.md`` (default DIR: outputs/eval/report), with ``DIR/<suite>.png``
plots over tokens seen; ``--data_dir`` names the prepared data the models were trained on, for the contamination
marks. The tables, plots and marks are ``tinyllama/evaluation/scoreboard.py``'s (its docstring says what they hold).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tinyllama.evaluation import DEFAULT_OUT
from tinyllama.evaluation.scoreboard import build_report
from tinyllama.utils import entry_point, setup_logging


@entry_point
def main(argv=None) -> int:
    setup_logging()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+", help="result folders or files (searched recursively)")
    p.add_argument("--out", default=str(DEFAULT_OUT / "report"), help="where report.md and the plots go")
    p.add_argument("--data_dir", nargs="+", default=None,
                   help="prepared data folder(s) the models were trained on, for the contamination marks (default: "
                        "what each model folder's training_metadata.json records)")
    a = p.parse_args(argv)
    markdown, plots = build_report(a.results, Path(a.out), a.data_dir)
    print(markdown)
    print(f"\nwritten: {Path(a.out) / 'report.md'}" + "".join(f", {p}" for p in plots), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
