"""The description: a pipeline file (``configs/pipeline/*.yaml``) read and checked into :class:`Pipeline` and its
:class:`StageSpec` list, and the constants every other module of the pipeline shares (recipes, marker file, the
config keys that do not change the weights)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from ..config import ConfigError, load_yaml
from ..utils import repo_root

REPO = repo_root()
RECIPES = {"pretrain": "recipes/pretrain.py", "sft": "recipes/sft.py", "dpo": "recipes/dpo.py", "eval": None}
OPTIONAL_FLAGS = {"chat": "--with-chat", "eval": "--with-eval"}
STAGE_KEYS = {"name", "recipe", "config", "init_from", "overrides", "variants", "optional", "launcher", "suite",
              "limit"}
PIPELINE_KEYS = {"name", "variant", "variants", "launcher", "stages"}
MARKER = "pipeline_stage.json"
# Keys of a pretraining config that do not change the weights a stage produces: a difference in them alone does not
# make a finished stage stale (everything else does).
OPERATIONAL_KEYS = {"run_name", "report_to", "num_workers", "log_every", "eval_every", "eval_batches", "eval_suite",
                    "eval_limit", "eval_data_dir", "save_every", "keep_last", "export", "export_initial", "resume",
                    "prepare_config",
                    "peak_flops", "push_to_hub", "hub_model_id", "hub_private", "hub_revision",
                    "hub_upload_retries"}




@dataclasses.dataclass
class StageSpec:
    name: str
    recipe: str = "pretrain"
    config: str | None = None
    init_from: str | None = None
    overrides: dict = dataclasses.field(default_factory=dict)
    variants: list[str] | None = None
    optional: str | None = None
    launcher: list[str] | None = None
    suite: str | None = None
    limit: float | None = None


@dataclasses.dataclass
class Pipeline:
    name: str
    variant: str
    variants: list[str]
    launcher: list[str]
    stages: list[StageSpec]
    path: Path


def _repo_path(p: str | os.PathLike) -> Path:
    """A path from a pipeline file: absolute, or relative to the repository root (like every config path here)."""
    return Path(p) if Path(p).is_absolute() else REPO / p


def load_pipeline(path: str | os.PathLike) -> Pipeline:
    """Read and check a pipeline file; every problem (for every variant) is reported at once."""
    path = Path(path)
    data = load_yaml(path)
    errors = [f"unknown key '{k}' (known: {', '.join(sorted(PIPELINE_KEYS))})" for k in data if k not in PIPELINE_KEYS]
    variants = data.get("variants") or []
    if not (isinstance(variants, list) and variants and all(isinstance(v, str) for v in variants)):
        errors.append(f"'variants' must be a non-empty list of names, got {variants!r}")
        variants = []
    variant = data.get("variant", variants[0] if variants else None)
    if variants and variant not in variants:
        errors.append(f"'variant' {variant!r} is not one of the variants {variants}")
    launcher = data.get("launcher", ["python"])
    if not (isinstance(launcher, list) and launcher and all(isinstance(x, str) for x in launcher)):
        errors.append(f"'launcher' must be a list of strings, e.g. [python], got {launcher!r}")
    stages = []
    raw_stages = data.get("stages")
    if not isinstance(raw_stages, list) or not raw_stages:
        errors.append("'stages' must be a non-empty list of stages")
        raw_stages = []
    for i, raw in enumerate(raw_stages):
        where = f"stages[{i}]" + (f" ({raw.get('name')})" if isinstance(raw, dict) and raw.get("name") else "")
        if not isinstance(raw, dict):
            errors.append(f"{where}: must be a mapping")
            continue
        errors += [f"{where}: unknown key '{k}' (known: {', '.join(sorted(STAGE_KEYS))})" for k in raw
                   if k not in STAGE_KEYS]
        try:
            spec = StageSpec(**{k: v for k, v in raw.items() if k in STAGE_KEYS})
        except TypeError as e:
            errors.append(f"{where}: {e}")
            continue
        if not isinstance(spec.name, str) or not spec.name:
            errors.append(f"{where}: 'name' is required")
        if spec.recipe not in RECIPES:
            errors.append(f"{where}: 'recipe' must be one of {', '.join(RECIPES)}, got {spec.recipe!r}")
        if spec.recipe == "eval":
            if not spec.suite:
                errors.append(f"{where}: an eval stage needs 'suite' (e.g. commonsense)")
        elif not spec.config:
            errors.append(f"{where}: 'config' is required")
        if spec.optional is not None and spec.optional not in OPTIONAL_FLAGS:
            errors.append(f"{where}: 'optional' must be one of {', '.join(OPTIONAL_FLAGS)}, got {spec.optional!r}")
        if spec.variants is not None and (not isinstance(spec.variants, list) or set(spec.variants) - set(variants)):
            errors.append(f"{where}: 'variants' must list some of {variants}, got {spec.variants!r}")
        if not isinstance(spec.overrides, dict):
            errors.append(f"{where}: 'overrides' must be a mapping of key: value")
        stages.append(spec)
    pipeline = Pipeline(str(data.get("name") or path.stem), variant, variants, launcher, stages, path)
    if isinstance(launcher, list) and all(isinstance(s.name, str) and s.name for s in stages):
        for v in variants:  # every variant's plan must hold together: names, references, config files
            errors += [f"variant {v}: {e}" for e in _check_plan(pipeline, v)]
    if errors:
        raise ConfigError(str(path), errors)
    return pipeline


def _check_plan(pipeline: Pipeline, variant: str) -> list[str]:
    errors, seen = [], []
    all_names = {s.name.replace("{variant}", v) for s in pipeline.stages for v in pipeline.variants}
    for spec in _selected(pipeline, variant, with_chat=True, with_eval=True):
        name = spec.name.replace("{variant}", variant)
        if name in seen:
            errors.append(f"stage name '{name}' appears twice")
        if spec.config and not _repo_path(spec.config.replace("{variant}", variant)).is_file():
            errors.append(f"{name}: config file not found: {spec.config.replace('{variant}', variant)}")
        ref = spec.init_from.replace("{variant}", variant) if spec.init_from else None
        if ref == "previous" and not seen:
            errors.append(f"{name}: init_from 'previous', but it is the first stage")
        elif ref in all_names and ref not in seen:
            errors.append(f"{name}: init_from '{ref}' is not an earlier stage of this variant")
        elif ref and ref in seen and _stage_by_name(pipeline, variant, ref).recipe == "eval":
            errors.append(f"{name}: init_from '{ref}' is an evaluation, which has no model to start from")
        if spec.recipe in ("sft", "dpo", "eval") and not ref:
            errors.append(f"{name}: a {spec.recipe} stage needs init_from (the model it reads)")
        seen.append(name)
    return errors


def _selected(pipeline: Pipeline, variant: str, with_chat: bool, with_eval: bool) -> list[StageSpec]:
    flags = {"chat": with_chat, "eval": with_eval}
    return [s for s in pipeline.stages
            if (s.variants is None or variant in s.variants) and (s.optional is None or flags[s.optional])]


def _stage_by_name(pipeline: Pipeline, variant: str, name: str) -> StageSpec:
    return next(s for s in pipeline.stages if s.name.replace("{variant}", variant) == name)
