"""Offline data: generated task YAMLs that ``include`` lm-eval's installed task YAML and point only its data
source at local files (``EVAL_DATA_DIR``), and the expansion of task groups into their leaf tasks."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import yaml

from ..utils import atomic_write_text
from .layout import DATA_FILE_BUILDERS
from .suites import SuiteTask, lm_eval_task_index

_SPLIT_KEYS = ("training_split", "validation_split", "test_split", "fewshot_split")


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
            files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix in DATA_FILE_BUILDERS
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
            builders = {DATA_FILE_BUILDERS[p.suffix] for files in data_files.values() for p in files}
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
