"""Evaluation: what to run with lm-evaluation-harness, on which model, and where the results go.

lm-eval runs its own tasks and its own scoring; nothing here computes a benchmark score. This module:

- reads the suites (``evaluation/suites/<name>.yaml``: lm-eval task names, shots, the metric to report);
- resolves MODEL: a model folder (``config.json`` + ``*.safetensors`` + tokenizer), a training checkpoint
  (``outputs/<run>/checkpoints/step-N`` -> its ``outputs/<run>/export/step-N``, exported on the fly with
  ``tinyllama.training.export_checkpoint`` when missing) or a Hub id;
- optionally points the suite's tasks at local data files (:func:`write_offline_tasks`: a generated task YAML
  ``include``s lm-eval's installed YAML and overrides only the data source);
- runs ``python -m lm_eval run`` (lm-eval's own CLI, one call per shot count) into
  ``<out>/<model-name>/<suite>/`` with ``run_info.json`` beside lm-eval's ``results_*.json``/``samples_*.jsonl``;
- reads the results back (:func:`summarize`), and :func:`run_suite` does all of it for the pretraining loop.

Command line (``evaluation/run_lm_eval.sh`` calls the first form)::

    python -m tinyllama.evaluation run MODEL [SUITE] [extra lm_eval arguments]
    python -m tinyllama.evaluation perplexity MODEL DATA [--text_field text] [--out DIR] ...
    python -m tinyllama.evaluation suites
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import functools
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

import yaml

from .utils import atomic_write_text, entry_point, repo_root, setup_logging

log = logging.getLogger(__name__)

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
# Arguments the runner owns: a suite decides the tasks and the runner the output folder.
_OWNED_ARGS = {"--tasks": "EVAL_TASKS=a,b (or run_suite(tasks_override=...))", "-t": "EVAL_TASKS=a,b",
               "--output_path": "EVAL_OUT=DIR", "-o": "EVAL_OUT=DIR"}


# ----------------------------------------------------------------------------------------------- suites
@dataclasses.dataclass
class SuiteTask:
    task: str  # an lm-eval task, group or tag name
    label: str  # column header in the report
    num_fewshot: int
    metric: str | None  # "acc_norm" or "exact_match,strict-match" (metric[,filter]); None: acc_norm, else acc
    unsafe_code: bool = False  # runs model-written code (HumanEval, MBPP): needs the user's explicit opt-in


@dataclasses.dataclass
class Suite:
    name: str
    description: str
    tasks: list[SuiteTask]
    path: Path | None = None

    @property
    def task_names(self) -> list[str]:
        return [t.task for t in self.tasks]

    @property
    def requires_code_execution(self) -> bool:
        return any(t.unsafe_code for t in self.tasks)

    def get(self, task: str) -> SuiteTask | None:
        return next((t for t in self.tasks if t.task == task), None)


def available_suites() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))


def load_suite(name_or_path: str | os.PathLike) -> Suite:
    """A suite by name (``commonsense``) or by path to a suite YAML; every problem reported at once."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        path = p
        if not path.is_file():
            raise FileNotFoundError(f"suite file not found: {path}")
    else:
        path = SUITES_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            names = available_suites()
            close = difflib.get_close_matches(str(name_or_path), names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown suite {str(name_or_path)!r}{hint}: choose one of {', '.join(names)}, "
                             f"or pass the path of a suite YAML")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    errors = []
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a suite must be a YAML mapping")
    unknown = set(data) - {"description", "num_fewshot", "tasks"}
    if unknown:
        errors.append(f"unknown keys {sorted(unknown)} (allowed: description, num_fewshot, tasks)")
    default_shots = data.get("num_fewshot", 0)
    if not isinstance(default_shots, int) or default_shots < 0:
        errors.append(f"num_fewshot must be an integer >= 0, got {default_shots!r}")
        default_shots = 0
    tasks = []
    raw_tasks = data.get("tasks")
    if not isinstance(raw_tasks, list) or not raw_tasks:
        errors.append("tasks must be a non-empty list of {task: NAME, label:, num_fewshot:, metric:, unsafe_code:}")
        raw_tasks = []
    fields = {"task", "label", "num_fewshot", "metric", "unsafe_code"}
    for i, item in enumerate(raw_tasks):
        if isinstance(item, str):
            item = {"task": item}
        if not isinstance(item, dict) or not isinstance(item.get("task"), str):
            errors.append(f"tasks[{i}]: needs a 'task' name, got {item!r}")
            continue
        if set(item) - fields:
            errors.append(f"tasks[{i}] ({item['task']}): unknown keys {sorted(set(item) - fields)}")
        shots = item.get("num_fewshot", default_shots)
        if not isinstance(shots, int) or shots < 0:
            errors.append(f"tasks[{i}] ({item['task']}): num_fewshot must be an integer >= 0, got {shots!r}")
            shots = 0
        tasks.append(SuiteTask(task=item["task"], label=str(item.get("label", item["task"])), num_fewshot=shots,
                               metric=item.get("metric"), unsafe_code=bool(item.get("unsafe_code", False))))
    dup = sorted({t.task for t in tasks if [x.task for x in tasks].count(t.task) > 1})
    if dup:
        errors.append(f"tasks listed twice: {dup}")
    if errors:
        raise ValueError(f"invalid suite {path}:\n" + "\n".join(f"  - {e}" for e in errors))
    return Suite(name=path.stem, description=str(data.get("description", "")), tasks=tasks, path=path)


def select_tasks(suite: Suite, tasks_override: Sequence[str] | str | None) -> list[SuiteTask]:
    """The suite's tasks, or a chosen subset; a task outside the suite gets the suite's defaults."""
    if not tasks_override:
        return list(suite.tasks)
    if isinstance(tasks_override, str):
        tasks_override = [t for t in re.split(r"[,\s]+", tasks_override) if t]
    return [suite.get(t) or SuiteTask(task=t, label=t, num_fewshot=0, metric=None) for t in tasks_override]


@functools.cache
def lm_eval_task_index() -> dict:
    """lm-eval's task index (task, group and tag names -> entries), built once per process (a few seconds)."""
    from lm_eval.tasks import TaskManager

    return dict(TaskManager().task_index)


def check_suite_tasks(suite: Suite, index: dict | None = None) -> list[str]:
    """Problems with a suite against the installed lm-eval: unknown task names, a metric the task does not
    define, an ``unsafe_code`` flag that disagrees with the task's own."""
    from lm_eval.tasks._index import Kind
    from lm_eval.tasks._yaml_loader import load_yaml

    index = lm_eval_task_index() if index is None else index
    errors = []
    for t in suite.tasks:
        entry = index.get(t.task)
        if entry is None:
            close = difflib.get_close_matches(t.task, list(index), n=3)
            errors.append(f"{suite.name}: task {t.task!r} is not in lm-eval's task index"
                          + (f" (close: {', '.join(close)})" if close else ""))
            continue
        if entry.kind not in (Kind.TASK, Kind.GROUP) or entry.yaml_path is None:
            continue
        cfg = load_yaml(entry.yaml_path, resolve_func=False)
        if entry.kind == Kind.TASK:
            metrics = [m.get("metric") for m in cfg.get("metric_list") or [] if isinstance(m, dict)]
            lm_unsafe = bool(cfg.get("unsafe_code", False))
            if lm_unsafe != t.unsafe_code:
                errors.append(f"{suite.name}: task {t.task!r} has unsafe_code={lm_unsafe} in lm-eval; the suite "
                              f"says {t.unsafe_code}")
        else:
            metrics = [m.get("metric") for m in cfg.get("aggregate_metric_list") or [] if isinstance(m, dict)]
        names = [m for m in metrics if isinstance(m, str) and "/" not in m]  # "/" : an unresolved !function
        if t.metric and names and len(names) == len(metrics) and t.metric.split(",")[0] not in names:
            errors.append(f"{suite.name}: task {t.task!r} reports {names}, not {t.metric!r}")
    return errors


def parse_tokens(value) -> float | None:
    """``103B``, ``1.5T``, ``2.5M``, ``12K`` or a number -> tokens."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    s = str(value).strip().upper()
    scale = {"K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}.get(s[-1:])
    return float(s[:-1]) * scale if scale else float(s)


def load_reference(path: str | os.PathLike = REFERENCE_FILE) -> dict:
    """TinyLlama's published scores per suite: ``{suite: {source, metrics: {task: metric}, rows: [...]}}``."""
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    suites = data.get("suites")
    if not isinstance(suites, dict):
        raise ValueError(f"{path}: expected a mapping 'suites: {{name: {{source, metrics, rows}}}}'")
    for name, ref in suites.items():
        for key in ("source", "metrics", "rows"):
            if key not in ref:
                raise ValueError(f"{path}: suite {name} has no {key!r}")
        for row in ref["rows"]:
            if not isinstance(row.get("model"), str) or not isinstance(row.get("scores"), dict):
                raise ValueError(f"{path}: suite {name}: each row needs model and scores, got {row!r}")
            unknown = set(row["scores"]) - set(ref["metrics"])
            if unknown:
                raise ValueError(f"{path}: suite {name}, {row['model']}: no metric declared for {sorted(unknown)}")
            parse_tokens(row.get("tokens"))
    return suites


# ----------------------------------------------------------------------------------------------- models
@dataclasses.dataclass
class ResolvedModel:
    source: str  # what lm-eval loads: an absolute folder path or a Hub id
    name: str  # folder name under <out>/: the export's folder name (step-000500) or owner__name
    local: bool
    run_dir: Path | None = None  # outputs/<run> when the model is one of its exports
    tokens_seen: int | None = None
    step: int | None = None

    @property
    def label(self) -> str:
        return f"{self.run_dir.name}/{self.name}" if self.run_dir is not None else self.name

    def default_out(self) -> Path:
        return self.run_dir / "eval" if self.run_dir is not None else DEFAULT_OUT


_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def _looks_like_path(model: str) -> bool:
    return (model.startswith(("/", "./", "../", "~")) or model in (".", "..") or model.endswith("/")
            or not _HUB_ID.match(model))


def is_model_folder(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors*"))


def read_training_metadata(model_dir: str | os.PathLike) -> dict:
    """``{"tokens_seen": int|None, "step": int|None}`` for a model folder.

    Read from ``training_metadata.json`` (keys ``tokens_seen``, ``step``: what the pretraining loop writes in
    each export), else from a Trainer's ``trainer_state.json`` (``num_input_tokens_seen``, ``global_step``);
    the step also from a folder name ``step-000500``.
    """
    model_dir = Path(model_dir)
    tokens = step = None
    meta = model_dir / TRAINING_METADATA_FILE
    state = model_dir / "trainer_state.json"
    if meta.is_file():
        data = json.loads(meta.read_text(encoding="utf-8"))
        tokens, step = data.get("tokens_seen"), data.get("step")
    elif state.is_file():
        data = json.loads(state.read_text(encoding="utf-8"))
        tokens, step = data.get("num_input_tokens_seen") or None, data.get("global_step")
    if step is None and (m := re.fullmatch(r"step-(\d+)", model_dir.name)):
        step = int(m.group(1))
    return {"tokens_seen": int(tokens) if tokens is not None else None,
            "step": int(step) if step is not None else None}


def export_checkpoint_on_the_fly(checkpoint_dir: Path) -> Path:
    """``outputs/<run>/checkpoints/step-N`` -> ``outputs/<run>/export/step-N``, exporting it when missing.

    The export is what the pretraining loop writes anyway; when it is not there, this is the one call into
    the training package: ``tinyllama.training.export_checkpoint(checkpoint_dir, out_dir)``.
    """
    out = checkpoint_dir.parent.parent / "export" / checkpoint_dir.name
    if is_model_folder(out):
        return out
    from tinyllama.training import export_checkpoint

    log.info("exporting %s to %s", checkpoint_dir, out)
    export_checkpoint(checkpoint_dir, out)
    if not is_model_folder(out):
        raise FileNotFoundError(f"export of {checkpoint_dir} did not produce a model folder at {out}")
    return out


def resolve_model(model: str | os.PathLike) -> ResolvedModel:
    """Check MODEL before anything is loaded: a clear error for a missing path or an uncached Hub id offline."""
    model = str(model)
    if not model:
        raise ValueError("MODEL is empty: give a model folder, a training checkpoint or a Hub id")
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"MODEL {model} is a file; give a model folder (config.json + *.safetensors)")
        path = path.resolve()
        if path.parent.name == "checkpoints" and not is_model_folder(path):
            path = export_checkpoint_on_the_fly(path)
        if not is_model_folder(path):
            raise FileNotFoundError(
                f"{model} is not a model folder: expected config.json and *.safetensors in it (a training "
                f"checkpoint is read as outputs/<run>/checkpoints/step-N, through its export)")
        if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")):
            raise FileNotFoundError(f"{model} has no tokenizer (tokenizer.json / tokenizer.model): save the "
                                    f"tokenizer with the model")
        if "," in str(path):
            raise ValueError(f"{path}: lm-eval's --model_args cannot take a path with a comma; move or link it")
        meta = read_training_metadata(path)
        run_dir = path.parent.parent if path.parent.name == "export" else None
        return ResolvedModel(source=str(path), name=path.name, local=True, run_dir=run_dir, **meta)
    if _looks_like_path(model):
        raise FileNotFoundError(f"model not found: {model} (no such folder). MODEL is a model folder, a training "
                                f"checkpoint (outputs/<run>/checkpoints/step-N) or a Hub id (owner/name)")
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(model, "config.json"), str):
            raise FileNotFoundError(f"{model} looks like a Hub id, but HF_HUB_OFFLINE=1 and it is not in the local "
                                    f"Hugging Face cache: download it first, or pass a local model folder")
    return ResolvedModel(source=model, name=model.replace("/", "__"), local=False)


# ----------------------------------------------------------------------------------------------- offline data
_SPLIT_KEYS = ("training_split", "validation_split", "test_split", "fewshot_split")
_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}


def leaf_tasks(name: str, index: dict) -> list[str]:
    """The individual tasks of an lm-eval task, group or tag name (groups and tags expanded)."""
    from lm_eval.tasks._index import Kind

    entry = index.get(name)
    if entry is None:
        raise ValueError(f"{name!r} is not an lm-eval task")
    if entry.kind in (Kind.TASK, Kind.PY_TASK):
        return [name]
    if entry.kind == Kind.TAG:
        return sorted(entry.tags)
    out = []
    for item in (entry.cfg or {}).get("task") or []:
        child = item if isinstance(item, str) else (item.get("task") or item.get("group"))
        if isinstance(child, str) and child in index:
            out += [t for t in leaf_tasks(child, index) if t not in out]
    return out


def _find_split_files(data_dir: Path, task: str, cfg: dict, split: str) -> list[Path]:
    """Local files for one split: DIR/<task>/<split>.* or <split>-*.* (e.g. test-00000-of-00001.parquet), or
    a Hub snapshot layout DIR/<dataset_path>/[<dataset_name>/|data/]<split>*."""
    roots = [data_dir / task]
    if cfg.get("dataset_path"):
        base = data_dir / str(cfg["dataset_path"])
        roots += ([base / str(cfg["dataset_name"])] if cfg.get("dataset_name") else []) + [base / "data", base]
    for root in roots:
        if root.is_dir():
            files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix in _BUILDERS
                           and (p.stem == split or p.name.startswith(f"{split}-")))
            if files:
                return files
    return []


def write_offline_tasks(tasks: Sequence[SuiteTask], data_dir: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Point tasks at local data: one generated YAML per lm-eval task in ``out_dir``, to pass as --include_path.

    Each YAML ``include``s lm-eval's own task YAML (absolute path of the installed file, so its ``!function``
    helpers such as hellaswag's ``utils.process_docs`` resolve next to it) and overrides only the data source
    (``dataset_path: json|parquet|csv``, ``dataset_kwargs.data_files``) and, for splits with no local file,
    sets the split to null. Groups (mmlu) and tags are expanded to their tasks, whose overrides the group then
    picks up by name. The task keeps its name, so results are keyed exactly as online.
    """
    from lm_eval.tasks._index import Kind
    from lm_eval.tasks._yaml_loader import load_yaml

    data_dir, out_dir = Path(data_dir).resolve(), Path(out_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"offline data folder not found: {data_dir}")
    index = lm_eval_task_index()
    errors, configs = [], {}
    for st in tasks:
        try:
            names = leaf_tasks(st.task, index)
        except ValueError as e:
            errors.append(str(e))
            continue
        for name in names:
            entry = index[name]
            if entry.kind != Kind.TASK or entry.yaml_path is None:
                errors.append(f"{name}: a Python-defined task loads its own data; it cannot be pointed at files")
                continue
            cfg = load_yaml(entry.yaml_path, resolve_func=False)
            eval_split = cfg.get("test_split") or cfg.get("validation_split")
            fewshot_split = None
            if st.num_fewshot > 0 and not (cfg.get("fewshot_config") or {}).get("samples"):
                fewshot_split = cfg.get("fewshot_split") or cfg.get("training_split") or cfg.get("validation_split")
            data_files, override = {}, {}
            for key in _SPLIT_KEYS:
                split = cfg.get(key)
                if not split:
                    continue
                files = data_files.get(split) or _find_split_files(data_dir, name, cfg, split)
                if files:
                    data_files[split] = files
                elif split in (eval_split, fewshot_split):
                    errors.append(f"{name}: no local file for split {split!r} (looked for {split}.jsonl|json|parquet|"
                                  f"csv or {split}-*.* in {data_dir / name} and {data_dir / str(cfg.get('dataset_path'))})")
                else:
                    override[key] = None
            if not data_files:
                continue
            builders = {_BUILDERS[p.suffix] for files in data_files.values() for p in files}
            if len(builders) > 1:
                errors.append(f"{name}: local files mix formats {sorted(builders)}; use one format per task")
                continue
            configs[name] = {
                "include": str(Path(entry.yaml_path).resolve()),
                "task": name,
                "dataset_path": builders.pop(),
                "dataset_name": None,
                "dataset_kwargs": {"data_files": {s: [str(p) for p in fs] for s, fs in data_files.items()}},
                **override,
            }
    if errors:
        raise FileNotFoundError("offline data incomplete:\n" + "\n".join(f"  - {e}" for e in errors))
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("*.yaml"):  # from an earlier run with other tasks or data
        stale.unlink()
    for name, cfg in configs.items():
        atomic_write_text(out_dir / f"{name}.yaml", "# generated by tinyllama.evaluation.write_offline_tasks\n"
                          + yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))
    return out_dir


# ----------------------------------------------------------------------------------------------- running
def _device_defaults(backend: str) -> tuple[str, str]:
    """(batch_size, dtype): lm-eval's own probing and the checkpoint's dtype on a GPU; on a CPU a fixed batch
    (probing for the largest batch is slow there) and float32 (bf16 matmuls on a CPU are slow and lossy)."""
    if backend == "vllm":
        return "auto", "auto"
    import torch

    return ("auto", "auto") if torch.cuda.is_available() else ("8", "float32")


def _clean_env(allow_code_execution: bool) -> dict:
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
                     extra_args: Sequence[str] = ()) -> list[list[str]]:
    """One ``python -m lm_eval run ...`` per shot count (lm-eval's --num_fewshot is per call), in suite order."""
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
        cmds.append(cmd + list(extra_args))
    return cmds


def run(model: str | os.PathLike, suite: str | os.PathLike = DEFAULT_SUITE, out: str | os.PathLike | None = None, *,
        backend: str = "hf", batch_size: str | int | None = None, dtype: str | None = None,
        limit: float | None = None, tasks: Sequence[str] | str | None = None,
        data_dir: str | os.PathLike | None = None, allow_code_execution: bool = False,
        extra_args: Sequence[str] = (), env: dict | None = None) -> Path:
    """Run a suite on a model with lm-eval; returns the result folder ``<out>/<model-name>/<suite>/``.

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
                            extra_args=extra_args)
    from importlib.metadata import version

    info = {
        "model": resolved.source, "model_name": resolved.name, "label": resolved.label,
        "run": resolved.run_dir.name if resolved.run_dir else None,
        "tokens_seen": resolved.tokens_seen, "step": resolved.step,
        "suite": suite_obj.name, "suite_file": str(suite_obj.path),
        "tasks": [dataclasses.asdict(t) for t in selected],
        "backend": backend, "limit": limit, "offline_data": str(Path(data_dir).resolve()) if data_dir else None,
        "extra_args": extra_args, "lm_eval_version": version("lm_eval"),
        "started": datetime.datetime.now().isoformat(timespec="seconds"), "finished": None,
        "commands": [" ".join(c[1:]) for c in cmds],
    }
    atomic_write_text(result_dir / RUN_INFO_FILE, json.dumps(info, indent=2))
    run_env = _clean_env(allow_code_execution) if env is None else env
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


# ----------------------------------------------------------------------------------------------- results
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


# ----------------------------------------------------------------------------------------------- perplexity
def load_texts(data: str | os.PathLike, text_field: str = "text", split: str = "validation",
               max_samples: int | None = None) -> list[str]:
    """Texts from a .txt file (one document), a .jsonl/.json/.parquet/.csv file or a folder of them (the
    ``text_field`` column), or a dataset name (``datasets.load_dataset(name, split=split)``)."""
    path = Path(data).expanduser()
    if path.is_file() and path.suffix == ".txt":
        texts = [path.read_text(encoding="utf-8")]
    else:
        import datasets

        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix in _BUILDERS)
            kinds = {_BUILDERS[p.suffix] for p in files}
            if len(kinds) != 1:
                raise ValueError(f"{path}: expected files of one format (.jsonl, .json, .parquet or .csv), found "
                                 f"{sorted(kinds) or 'none'}")
            ds = datasets.load_dataset(kinds.pop(), data_files=[str(p) for p in files], split="train")
        elif path.is_file():
            if path.suffix not in _BUILDERS:
                raise ValueError(f"{path}: expected .txt, .jsonl, .json, .parquet or .csv")
            ds = datasets.load_dataset(_BUILDERS[path.suffix], data_files=str(path), split="train")
        elif _looks_like_path(str(data)):
            raise FileNotFoundError(f"data not found: {data}")
        else:
            ds = datasets.load_dataset(str(data), split=split)
        if text_field not in ds.column_names:
            raise ValueError(f"{data}: no column {text_field!r} (columns: {ds.column_names}); set --text_field")
        if max_samples is not None:
            ds = ds.select(range(min(max_samples, len(ds))))
        texts = list(ds[text_field])
    texts = [t for t in texts if t]
    if max_samples is not None:
        texts = texts[:max_samples]
    if not texts:
        raise ValueError(f"{data}: no non-empty texts")
    return texts


def perplexity_metric():
    """The repository's ``evaluate`` metric (evaluation/metrics/perplexity_bpb), loaded from its local path."""
    import evaluate

    return evaluate.load(str(PERPLEXITY_METRIC))


def run_perplexity(model: str | os.PathLike, data: str | os.PathLike, out: str | os.PathLike | None = None, *,
                   text_field: str = "text", split: str = "validation", max_samples: int | None = None,
                   max_length: int | None = None, batch_size: int = 8) -> Path:
    """Held-out perplexity and bits per byte of a model on text data, written to
    ``<out>/<model-name>/perplexity/perplexity.json`` (beside a run_info.json, so the report shows it)."""
    resolved = resolve_model(model)
    texts = load_texts(data, text_field=text_field, split=split, max_samples=max_samples)
    result_dir = Path(out or resolved.default_out()) / resolved.name / "perplexity"
    scores = perplexity_metric().compute(predictions=texts, model_id=resolved.source, batch_size=batch_size,
                                         max_length=max_length)
    result = {"data": str(data), "text_field": text_field, **scores}
    atomic_write_text(result_dir / PERPLEXITY_RESULTS_FILE, json.dumps(result, indent=2))
    info = {"model": resolved.source, "model_name": resolved.name, "label": resolved.label,
            "run": resolved.run_dir.name if resolved.run_dir else None, "tokens_seen": resolved.tokens_seen,
            "step": resolved.step, "suite": "perplexity", "data": str(data),
            "finished": datetime.datetime.now().isoformat(timespec="seconds")}
    atomic_write_text(result_dir / RUN_INFO_FILE, json.dumps(info, indent=2))
    log.info("perplexity %.4f, bits per byte %.4f -> %s", scores["perplexity"], scores["bits_per_byte"], result_dir)
    return result_dir


# ----------------------------------------------------------------------------------------------- command line
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
  EVAL_TASKS=a,b           run only these tasks (of the suite, or any lm-eval task)
  EVAL_DATA_DIR=DIR        offline: read each task's data from local files (see docs/evaluation.md)
  ALLOW_CODE_EXECUTION=1   required for suites that execute model-written code (HumanEval, MBPP)
"""


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


@entry_point
def _cli_run(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE.format(suites=", ".join(available_suites()), default=DEFAULT_SUITE),
              file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    model, rest = argv[0], argv[1:]
    suite = DEFAULT_SUITE
    if rest and not rest[0].startswith("-"):
        suite, rest = rest[0], rest[1:]
    try:
        run(model, suite, os.environ.get("EVAL_OUT") or None, backend=os.environ.get("EVAL_BACKEND", "hf"),
            batch_size=os.environ.get("EVAL_BATCH_SIZE") or None, dtype=os.environ.get("EVAL_DTYPE") or None,
            tasks=os.environ.get("EVAL_TASKS") or None, data_dir=os.environ.get("EVAL_DATA_DIR") or None,
            allow_code_execution=_truthy("ALLOW_CODE_EXECUTION"), extra_args=rest)
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


if __name__ == "__main__":
    sys.exit(main())
