"""Suites (``evaluation/suites/<name>.yaml``: lm-eval task names, shots, the metric to report), the published
reference scores (``evaluation/reference/tinyllama.yaml``), and checks of both against the installed lm-eval.

Both files are described by dataclasses (:class:`SuiteFile` and :class:`SuiteTask`; :class:`ReferenceFile`,
:class:`ReferenceSuite` and :class:`ReferenceRow`) and read by the parser every configuration goes through
(``tinyllama.config.check_mapping``: unknown keys with the closest known one, values converted to the fields'
types); what the types cannot say (shots >= 0, a task listed once, a score's task declared) is checked after, into
the same list, and every problem of a file comes in one ``ConfigError`` naming it."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
import re
from pathlib import Path
from typing import Sequence

from .. import environment
from ..config import ConfigError, check_mapping, load_yaml
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


@dataclasses.dataclass
class SuiteFile:
    """The keys of a suite YAML. Each entry of ``tasks`` is an lm-eval task name or a mapping of
    :class:`SuiteTask`'s keys: ``task`` (required), ``label`` (default: the task), ``num_fewshot`` (default: the
    suite's), ``metric`` (default: acc_norm, else acc) and ``unsafe_code``."""

    tasks: list  # non-empty
    description: str = ""
    num_fewshot: int = 0  # the default of the tasks that give none
    chat_template: bool = False  # see Suite.chat_template


@dataclasses.dataclass
class ReferenceFile:
    """The keys of the reference file: ``suites``, a mapping of suite name -> :class:`ReferenceSuite`'s keys."""

    suites: dict


@dataclasses.dataclass
class ReferenceSuite:
    """One suite's published scores."""

    source: str  # where they were published and how they were measured
    metrics: dict[str, str]  # task -> the metric its scores are in (the suite's metric for the task)
    rows: list  # one mapping of ReferenceRow's keys per published model


@dataclasses.dataclass
class ReferenceRow:
    """One published model's scores (percentages)."""

    model: str
    scores: dict[str, float]  # task -> score; every task declared in the suite's metrics
    tokens: float | str | None = None  # tokens seen in pretraining: 103B, 1.5T, 2.5M, 12K or a number
    avg: float | None = None  # the published average
    series: str | None = None  # checkpoints of one training run (the report draws them as a line over tokens)


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
    data = load_yaml(path, inherit=False)
    errors: list[str] = []
    top = check_mapping(SuiteFile, data, "(suite file)", errors, require=True)
    default_shots = top.get("num_fewshot", 0)
    if default_shots < 0:
        errors.append(f"'num_fewshot' (suite file): must be >= 0, got {default_shots}")
        default_shots = 0
    if "tasks" in top and not top["tasks"]:
        errors.append("'tasks' (suite file): must be a non-empty list of task names or {task: NAME, label:, "
                      "num_fewshot:, metric:, unsafe_code:}")
    tasks = []
    for i, item in enumerate(top.get("tasks") or []):
        if isinstance(item, str):
            item = {"task": item}
        where = f"tasks[{i}]" + (f" ({item['task']})" if isinstance(item, dict) and item.get("task") else "")
        if not isinstance(item, dict):
            errors.append(f"{where}: expected a task name or a mapping of task, label, num_fewshot, metric, "
                          f"unsafe_code; got {item!r}")
            continue
        fields = check_mapping(SuiteTask, item, f"in {where}", errors)
        if "task" not in item:
            errors.append(f"'task' is required in {where} (an lm-eval task, group or tag name)")
        elif fields.get("task") == "":
            errors.append(f"'task' in {where}: expected an lm-eval task, group or tag name, got ''")
        if not fields.get("task"):
            continue
        shots = fields.get("num_fewshot", default_shots)
        if shots < 0:
            errors.append(f"'num_fewshot' in {where}: must be >= 0, got {shots}")
            shots = 0
        tasks.append(SuiteTask(task=fields["task"], label=fields.get("label", fields["task"]), num_fewshot=shots,
                               metric=fields.get("metric"), unsafe_code=fields.get("unsafe_code", False)))
    dup = sorted({t.task for t in tasks if [x.task for x in tasks].count(t.task) > 1})
    if dup:
        errors.append(f"tasks listed twice: {dup}")
    if errors:
        raise ConfigError(str(path), errors)
    return Suite(name=path.stem, description=top.get("description", ""), tasks=tasks, path=path,
                 chat_template=top.get("chat_template", False))


def select_tasks(suite: Suite, tasks_override: Sequence[str] | str | None) -> list[SuiteTask]:
    """The suite's tasks, or those named in ``tasks_override`` (``EVAL_TASKS=a,b``), read by :func:`resolve_tasks`:
    a suite's name for all its tasks, or task names (a task of ``suite`` keeps its settings there)."""
    if not tasks_override:
        return list(suite.tasks)
    return resolve_tasks(tasks_override, suite)


def split_names(value: str) -> list[str]:
    """``"a,b c"`` -> ``["a", "b", "c"]``: a list of evaluation names written as one string (``EVAL_TASKS``, or
    ``decontaminate: {suites: "a,b"}``)."""
    return [n for n in re.split(r"[,\s]+", value) if n]


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
        names = split_names(names)
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
    """TinyLlama's published scores per suite: ``{suite: {source, metrics: {task: metric}, rows: [...]}}`` (each row
    the keys of :class:`ReferenceRow` it gives); every problem of the file reported at once."""
    data = load_yaml(path, inherit=False)
    errors: list[str] = []
    top = check_mapping(ReferenceFile, data, "(reference file)", errors, require=True)
    suites = {}
    for name, raw in (top.get("suites") or {}).items():
        where = f"in suites.{name}"
        if not isinstance(raw, dict):
            errors.append(f"suites.{name}: expected a mapping of source, metrics, rows; got {raw!r}")
            continue
        ref = check_mapping(ReferenceSuite, raw, where, errors, require=True)
        metrics = ref.get("metrics", {})
        wrong = {t: m for t, m in metrics.items() if not isinstance(m, str)}
        if wrong:
            errors.append(f"'metrics' {where}: expected a metric name per task, got {wrong}")
        rows = []
        for i, raw_row in enumerate(ref.get("rows") or []):
            label = f"suites.{name}.rows[{i}]" + (f" ({raw_row['model']})" if isinstance(raw_row, dict)
                                                  and raw_row.get("model") else "")
            row_where = f"in {label}"
            if not isinstance(raw_row, dict):
                errors.append(f"{label}: expected a mapping of "
                              f"{', '.join(f.name for f in dataclasses.fields(ReferenceRow))}; got {raw_row!r}")
                continue
            row = check_mapping(ReferenceRow, raw_row, row_where, errors, require=True)
            scores = row.get("scores", {})
            wrong = {t: v for t, v in scores.items() if not isinstance(v, (int, float)) or isinstance(v, bool)}
            if wrong:
                errors.append(f"'scores' {row_where}: expected a number per task, got {wrong}")
            unknown = sorted(set(scores) - set(metrics))
            if unknown:
                errors.append(f"'scores' {row_where}: no metric declared for {unknown} in suites.{name}.metrics")
            try:
                parse_tokens(row.get("tokens"))
            except ValueError:
                errors.append(f"'tokens' {row_where}: expected 103B, 1.5T, 2.5M, 12K or a number, got "
                              f"{row['tokens']!r}")
            rows.append(row)
        suites[name] = {**ref, "rows": rows}
    if errors:
        raise ConfigError(str(path), errors)
    return suites
