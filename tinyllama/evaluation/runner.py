"""Running lm-eval: the ``python -m lm_eval run`` command lines of a suite (one per shot count), the child
process environment, and :func:`run`, which writes ``<out>/<model-name>/<suite>/`` with ``run_info.json``."""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from ..utils import atomic_write_text, repo_root
from .layout import BACKENDS, DEFAULT_SUITE, RUN_INFO_FILE
from .models import ResolvedModel, model_chat_template, resolve_model
from .offline import write_offline_tasks
from .suites import Suite, SuiteTask, lm_eval_task_index, load_suite, select_tasks

log = logging.getLogger(__name__)

# Inherited by a child process, these would make lm-eval's accelerate join the training job's process group.
_DISTRIBUTED_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK",
                    "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID", "NODE_RANK")
# Arguments the runner owns: a suite decides the tasks (and whether a chat model is scored with its chat template,
# which run_info.json records) and the runner the output folder.
_OWNED_ARGS = {"--tasks": "EVAL_TASKS=a,b (or run_suite(tasks_override=...))", "-t": "EVAL_TASKS=a,b",
               "--output_path": "EVAL_OUT=DIR", "-o": "EVAL_OUT=DIR",
               "--apply_chat_template": "EVAL_CHAT_TEMPLATE=1 (or run(..., chat_template=True))",
               "--fewshot_as_multiturn": "EVAL_CHAT_TEMPLATE=1 (few-shot examples become turns with the template)"}


def _device_defaults(backend: str) -> tuple[str, str]:
    """(batch_size, dtype): lm-eval's own probing and the checkpoint's dtype on a GPU; on a CPU a fixed batch
    (probing for the largest batch is slow there) and float32 (bf16 matmuls on a CPU are slow and lossy)."""
    if backend == "vllm":
        return "auto", "auto"
    import torch

    return ("auto", "auto") if torch.cuda.is_available() else ("8", "float32")


def lm_eval_env(allow_code_execution: bool) -> dict:
    """The environment of lm-eval's child process: this process's, less the torch.distributed and accelerate
    variables (inherited, they would make lm-eval join a training job's process group), with the repository on
    ``PYTHONPATH``, ``TOKENIZERS_PARALLELISM=false`` unless set, and ``HF_ALLOW_CODE_EVAL=1`` when code execution is
    allowed (HF evaluate's ``code_eval`` refuses without it)."""
    env = {k: v for k, v in os.environ.items() if k not in _DISTRIBUTED_ENV and not k.startswith("ACCELERATE_")}
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONPATH"] = os.pathsep.join([str(repo_root())] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    if allow_code_execution:
        env["HF_ALLOW_CODE_EVAL"] = "1"  # HF evaluate's code_eval (HumanEval, MBPP) refuses without it
    return env


class LmEvalError(RuntimeError):
    def __init__(self, message: str, returncode: int = 1):
        super().__init__(message)
        self.returncode = returncode


def lm_eval_commands(model: ResolvedModel, tasks: Sequence[SuiteTask], result_dir: Path, *, backend: str = "hf",
                     batch_size: str | int | None = None, dtype: str | None = None, limit: float | None = None,
                     include_path: Path | None = None, allow_code_execution: bool = False,
                     chat_template: bool = False, extra_args: Sequence[str] = ()) -> list[list[str]]:
    """One ``python -m lm_eval run ...`` per shot count (lm-eval's --num_fewshot is per call), in suite order;
    ``chat_template``: prompts through the model's chat template, few-shot examples as turns."""
    by_shots: dict[int, list[str]] = {}
    for t in tasks:
        by_shots.setdefault(t.num_fewshot, []).append(t.task)
    default_bs, default_dtype = (None, None) if batch_size and dtype else _device_defaults(backend)
    model_args = f"pretrained={model.source},dtype={dtype or default_dtype}"
    if backend == "vllm":
        model_args += ",gpu_memory_utilization=0.8"
    cmds = []
    for shots, names in by_shots.items():
        cmd = [sys.executable, "-m", "lm_eval", "run", "--model", backend, "--model_args", model_args,
               "--tasks", ",".join(names), "--num_fewshot", str(shots),
               "--batch_size", str(batch_size or default_bs),
               "--output_path", str(result_dir / "results.json"), "--log_samples"]
        if limit is not None:
            cmd += ["--limit", str(limit)]
        if include_path is not None:
            cmd += ["--include_path", str(include_path)]
        if allow_code_execution and any(t.unsafe_code for t in tasks if t.task in names):
            cmd += ["--confirm_run_unsafe_code"]
        if chat_template:
            cmd += ["--apply_chat_template", "--fewshot_as_multiturn"]
        cmds.append(cmd + list(extra_args))
    return cmds


def prompt_format(suite: Suite, model: ResolvedModel, asked: bool | None) -> tuple[bool, str]:
    """(apply the chat template?, how the prompts were built, in words for run_info.json and the report)."""
    if asked is False or (asked is None and not suite.chat_template):
        return False, "raw prompts"
    if model_chat_template(model.source) is None:
        if asked:
            raise ValueError(f"chat template asked for (EVAL_CHAT_TEMPLATE=1), but {model.source} has none (a base "
                             "model): leave it unset, or evaluate a chat model")
        return False, f"raw prompts (suite {suite.name} asks for the chat template; the model has none)"
    return True, "the model's chat template (lm-eval --apply_chat_template), few-shot examples as turns"


def run(model: str | os.PathLike, suite: str | os.PathLike = DEFAULT_SUITE, out: str | os.PathLike | None = None, *,
        backend: str = "hf", batch_size: str | int | None = None, dtype: str | None = None,
        limit: float | None = None, tasks: Sequence[str] | str | None = None,
        data_dir: str | os.PathLike | None = None, allow_code_execution: bool = False,
        chat_template: bool | None = None, extra_args: Sequence[str] = (), env: dict | None = None) -> Path:
    """Run a suite on a model with lm-eval; returns the result folder ``<out>/<model-name>/<suite>/``.

    ``chat_template``: None lets the suite decide (``chat_template: true`` in its YAML: the ``instruct`` suite);
    True asks for it on any suite (a model without a chat template is then an error); False never. When asked, a
    model that has a chat template is scored through it (lm-eval ``--apply_chat_template``, few-shot examples as
    turns: ``--fewshot_as_multiturn``); a base model without one, on raw prompts. ``run_info.json`` says which
    (``prompts``), and the report marks chat-template rows.

    Every user mistake (suite, model, backend, code-execution opt-in, offline data) is reported before
    anything is loaded. ``out`` defaults to ``outputs/<run>/eval`` for a run's export, else ``outputs/eval``.
    """
    suite_obj = load_suite(suite)
    selected = select_tasks(suite_obj, tasks)
    extra_args = list(extra_args)
    for a in extra_args:
        if a.split("=")[0] in _OWNED_ARGS:
            raise ValueError(f"{a.split('=')[0]} is set by the runner; use {_OWNED_ARGS[a.split('=')[0]]} instead")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "vllm":
        import importlib.util

        if importlib.util.find_spec("vllm") is None:
            raise ValueError("backend vllm asked for, but vllm is not installed (pip install vllm), or use hf")
    unsafe = [t.task for t in selected if t.unsafe_code]
    if unsafe and not allow_code_execution:
        raise PermissionError(
            f"suite {suite_obj.name}: {', '.join(unsafe)} execute(s) code written by the model. Run it in a sandbox "
            f"and opt in with ALLOW_CODE_EXECUTION=1 (run_suite(..., allow_code_execution=True)), or leave "
            f"those tasks out with EVAL_TASKS")
    resolved = resolve_model(model)
    use_template, prompts = prompt_format(suite_obj, resolved, chat_template)
    index = lm_eval_task_index()  # (a few seconds, but before the model loads or anything is written)
    unknown = [t.task for t in selected if t.task not in index]
    if unknown:
        raise ValueError(f"suite {suite_obj.name} ({suite_obj.path}) names task(s) the installed lm-eval does not "
                         f"have: {', '.join(unknown)}; check the names with `lm_eval ls tasks`")
    result_dir = Path(out or resolved.default_out()) / resolved.name / suite_obj.name
    include_path = None
    if data_dir is not None:  # checks every task's files first; writes nothing when one is missing
        include_path = write_offline_tasks(selected, data_dir, result_dir / "offline_tasks")
    result_dir.mkdir(parents=True, exist_ok=True)
    cmds = lm_eval_commands(resolved, selected, result_dir, backend=backend, batch_size=batch_size, dtype=dtype,
                            limit=limit, include_path=include_path, allow_code_execution=allow_code_execution,
                            chat_template=use_template, extra_args=extra_args)
    from importlib.metadata import version

    info = {
        "model": resolved.source, "model_name": resolved.name, "label": resolved.label,
        "run": resolved.run_dir.name if resolved.run_dir else None,
        "tokens_seen": resolved.tokens_seen, "step": resolved.step,
        "suite": suite_obj.name, "suite_file": str(suite_obj.path),
        "tasks": [dataclasses.asdict(t) for t in selected],
        "backend": backend, "limit": limit, "chat_template": use_template, "prompts": prompts,
        "offline_data": str(Path(data_dir).resolve()) if data_dir else None,
        "extra_args": extra_args, "lm_eval_version": version("lm_eval"),
        "started": datetime.datetime.now().isoformat(timespec="seconds"), "finished": None,
        "commands": [" ".join(c[1:]) for c in cmds],
    }
    atomic_write_text(result_dir / RUN_INFO_FILE, json.dumps(info, indent=2))
    run_env = lm_eval_env(allow_code_execution) if env is None else env
    for cmd in cmds:
        before = set(result_dir.glob("results_*.json"))
        log.info("running: %s", " ".join(cmd[1:]))
        rc = subprocess.call(cmd, env=run_env)
        if rc != 0:
            raise LmEvalError(f"lm-eval exited with status {rc} for {cmd[cmd.index('--tasks') + 1]} "
                              f"(its log is above)", rc)
        if not set(result_dir.glob("results_*.json")) - before:
            raise LmEvalError(f"lm-eval finished but wrote no results_*.json in {result_dir} (its log is above)")
    info["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
    atomic_write_text(result_dir / RUN_INFO_FILE, json.dumps(info, indent=2))
    log.info("results in %s", result_dir)
    return result_dir
