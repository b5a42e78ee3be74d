"""Suites (``evaluation/suites/<name>.yaml``: lm-eval task names, shots, the metric to report), the published
reference scores (``evaluation/reference/tinyllama.yaml``), and checks of both against the installed lm-eval."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
import re
from pathlib import Path
from typing import Sequence

import yaml

from .. import environment
from ..utils import atomic_write_bytes
from .layout import REFERENCE_FILE, SUITES_DIR

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
    chat_template: bool = False  # score a chat model with its chat template (few-shot examples as turns)

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
    unknown = set(data) - {"description", "num_fewshot", "tasks", "chat_template"}
    if unknown:
        errors.append(f"unknown keys {sorted(unknown)} (allowed: description, num_fewshot, tasks, chat_template)")
    if not isinstance(data.get("chat_template", False), bool):
        errors.append(f"chat_template must be true or false, got {data['chat_template']!r}")
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
    return Suite(name=path.stem, description=str(data.get("description", "")), tasks=tasks, path=path,
                 chat_template=data.get("chat_template", False) is True)


def select_tasks(suite: Suite, tasks_override: Sequence[str] | str | None) -> list[SuiteTask]:
    """The suite's tasks, or those named in ``tasks_override`` (``EVAL_TASKS=a,b``), read by :func:`resolve_tasks`:
    a suite's name for all its tasks, or task names (a task of ``suite`` keeps its settings there)."""
    if not tasks_override:
        return list(suite.tasks)
    return resolve_tasks(tasks_override, suite)


def resolve_tasks(names: Sequence[str] | str, suite: Suite | None = None) -> list[SuiteTask]:
    """The one reading of a list of evaluation names, wherever a user gives one (``EVAL_TASKS`` through
    :func:`select_tasks`; ``decontaminate: {suites: [...]}`` in a data config). Each name is

    - a suite: ``evaluation/suites/<name>.yaml`` (or the path of a suite YAML), meaning all its tasks;
    - or an lm-eval task (or group, or tag) name: the task as ``suite`` lists it, else as the first of this
      repository's suites that lists it (its shots, metric, label, ``unsafe_code``), else any name in lm-eval's task
      index (:func:`lm_eval_task_index`, read only for such a name), with 0 shots and the default metric.

    A suite's name wins over a task of the same name. Each task comes once, in the order named; a string is split at
    commas and spaces. Every unknown name is reported in one ``ValueError`` that lists the suites and says that a
    task name is accepted too."""
    if isinstance(names, str):
        names = [n for n in re.split(r"[,\s]+", names) if n]
    suites = available_suites()
    listed: dict[str, SuiteTask] = {}  # the tasks of this repository's suites, first suite first
    out: dict[str, SuiteTask] = {}
    unknown = []
    for name in map(str, names):
        if suite is not None and suite.get(name):
            found = [suite.get(name)]
        elif name in suites or name.endswith((".yaml", ".yml")) and Path(name).is_file():
            found = load_suite(name).tasks
        else:
            if not listed:
                for s in suites:
                    try:
                        listed.update({t.task: t for t in load_suite(s).tasks if t.task not in listed})
                    except ValueError:  # a broken suite is reported when it is used; here it lends no settings
                        pass
            if name in listed:
                found = [listed[name]]
            elif name in lm_eval_task_index():
                found = [SuiteTask(task=name, label=name, num_fewshot=0, metric=None)]
            else:
                unknown.append(name)
                continue
        out.update({t.task: t for t in found if t.task not in out})
    if unknown:
        close = {n: difflib.get_close_matches(n, suites + list(listed) + list(lm_eval_task_index()), n=1)
                 for n in unknown}
        named = ", ".join(f"{n!r}" + (f" (did you mean {close[n][0]!r}?)" if close[n] else "") for n in unknown)
        raise ValueError(f"unknown evaluation suite or task {named}: name a suite ({', '.join(suites)}: all its "
                         f"tasks; evaluation/suites/), the path of a suite YAML, or an lm-eval task name (e.g. "
                         f"arc_easy; `lm_eval ls tasks` lists them)")
    return list(out.values())


@functools.cache
def lm_eval_task_index() -> dict:
    """lm-eval's task index (task, group and tag names -> entries), once per process, and kept on disk per installed
    lm-eval (``$XDG_CACHE_HOME/tinyllama/``, else ``~/.cache/tinyllama/``): lm-eval builds it by parsing its ~15,000
    task YAMLs, 14 s on 2 cores, before every check of a suite and every evaluation; the pickled index loads in
    about 1 s. Written by hand because lm-eval keeps no such cache. The key is lm-eval's version and its tasks
    folder's modification time; a cache that cannot be read is rebuilt."""
    import hashlib
    import pickle
    from importlib.metadata import version

    import lm_eval.tasks

    tasks_dir = Path(lm_eval.tasks.__file__).parent
    key = hashlib.sha256(f"{version('lm_eval')}|{tasks_dir}|{tasks_dir.stat().st_mtime_ns}".encode()).hexdigest()
    cache = environment.cache_home() / "tinyllama" / f"lm-eval-index-{key[:16]}.pkl"
    try:
        return pickle.loads(cache.read_bytes())
    except Exception:  # missing, partly written by an older version, unreadable: rebuild
        pass
    index = dict(lm_eval.tasks.TaskManager().task_index)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(cache, pickle.dumps(index))
    except OSError:  # a read-only home: the index still works, for this process
        pass
    return index


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
