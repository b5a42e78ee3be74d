"""Reading results back: lm-eval's ``results_*.json`` merged and cleaned into one metric per task
(:func:`summarize`), and :func:`run_suite`, the pretraining loop's one call (run, then summarize)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

from .layout import RUN_INFO_FILE
from .runner import run
from .suites import load_suite, select_tasks

def load_results(result_dir: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """lm-eval's ``results`` of every ``results_*.json`` in a folder, merged (the newest file wins per task)."""
    merged: dict[str, dict] = {}
    for f in sorted(Path(result_dir).glob("results_*.json")):
        merged.update(json.loads(f.read_text(encoding="utf-8")).get("results", {}))
    return merged


def clean_metrics(task_results: dict) -> dict[str, float]:
    """lm-eval's ``{"acc,none": .., "acc_stderr,none": .., "alias": ..}`` -> ``{"acc": ..}``: numbers only, no
    stderr, the filter kept only when it is not ``none`` (``exact_match,strict-match``)."""
    out = {}
    for key, value in task_results.items():
        if "," not in key or "_stderr" in key or not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        metric, _, filt = key.partition(",")
        out[metric if filt == "none" else key] = float(value)
    return out


def pick_metric(task_results: dict, metric: str | None) -> tuple[str, float] | None:
    """The reported number of one task: ``metric`` (``name`` or ``name,filter``; without a filter, ``none``
    or else the first filter), or acc_norm, else acc, else the first metric."""
    clean = clean_metrics(task_results)
    if not clean:
        return None
    candidates = [metric] if metric else ["acc_norm", "acc"]
    for m in candidates:
        if m in clean:
            return m, clean[m]
        hits = sorted(k for k in clean if k.split(",")[0] == m)
        if hits:
            return hits[0], clean[hits[0]]
    return None if metric else next(iter(clean.items()))


def summarize(result_dir: str | os.PathLike, tasks: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """``{task: {metric: value}}`` for a result folder (the suite's tasks when ``tasks`` is None)."""
    results = load_results(result_dir)
    if tasks is None:
        info_file = Path(result_dir) / RUN_INFO_FILE
        if info_file.is_file():
            tasks = [t["task"] for t in json.loads(info_file.read_text(encoding="utf-8"))["tasks"]]
    names = tasks if tasks is not None else list(results)
    return {t: clean_metrics(results[t]) for t in names if t in results}


def run_suite(model_dir: str | os.PathLike, suite: str | os.PathLike, out_dir: str | os.PathLike,
              limit: float | None = None, tasks_override: Sequence[str] | str | None = None,
              extra_args: Sequence[str] = (), **kwargs) -> dict[str, dict[str, float]]:
    """Evaluate an export during pretraining; returns ``{task: {metric: value}}`` (e.g. ``{"hellaswag":
    {"acc": 0.26, "acc_norm": 0.27}}``, values as lm-eval reports them, 0-1).

    Blocking. This process only prepares and reads; lm-eval runs in a child process (``python -m lm_eval``)
    whose environment drops the torch.distributed/accelerate variables, so calling it from rank 0 of a
    distributed job neither joins nor hangs the job, and the evaluation's memory is freed when it returns.
    Results land in ``<out_dir>/<model folder name>/<suite>/`` (e.g. ``outputs/<run>/eval/step-000500/
    commonsense/``). Next to a training job on the same GPU, pass ``extra_args=("--batch_size", "16")`` so
    lm-eval does not probe for the largest batch that fits. ``kwargs`` go to :func:`run` (backend,
    data_dir, allow_code_execution, batch_size, dtype).
    """
    result_dir = run(model_dir, suite, out_dir, limit=limit, tasks=tasks_override, extra_args=extra_args, **kwargs)
    names = [t.task for t in select_tasks(load_suite(suite), tasks_override)]
    return summarize(result_dir, names)


def export_hook(suite: str | os.PathLike, out_dir: str | os.PathLike, limit: float | None = None,
                data_dir: str | os.PathLike | None = None):
    """The pretraining loop's hook for each export (``Checkpointer(on_export=[...])``, passed by the recipe):
    :func:`run_suite` on the export, its metrics returned as ``{"eval/<task>/<metric>": value}`` to log beside the
    loss. An evaluation problem is logged, never raised: it does not stop training."""
    import logging

    def evaluate(export: Path, step: int) -> dict[str, float]:
        try:
            results = run_suite(export, suite, out_dir, limit=limit, data_dir=data_dir)
        except Exception as e:
            logging.getLogger(__name__).error("eval_suite %s on %s failed: %s", suite, Path(export).name, e)
            return {}
        return {f"eval/{task}/{metric}": value for task, m in results.items() for metric, value in m.items()
                if isinstance(value, (int, float))}

    return evaluate
