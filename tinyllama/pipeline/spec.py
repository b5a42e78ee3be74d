"""The description: a pipeline file (``configs/pipeline/*.yaml``) read and checked into :class:`Pipeline` and its
:class:`StageSpec` list, and the constants every other module of the pipeline shares (recipes, marker file, the
config keys that do not change the weights)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Optional

from ..chat.methods import METHODS, PREFERENCE_METHODS
from ..config import ConfigError, check_mapping, load_yaml
from ..training.args import OPERATIONAL_KEYS as PRETRAIN_OPERATIONAL_KEYS
from ..utils import repo_root

REPO = repo_root()
# each recipe's script; the chat methods' from their registry (tinyllama/chat/methods.py)
RECIPES = {"pretrain": "recipes/pretrain.py", **{name: m.script for name, m in METHODS.items()}, "eval": None}
CHAT = "{chat}"  # in a stage's name, recipe, config and init_from: the chat method (--with-chat METHOD)
OPTIONAL_FLAGS = {"chat": "--with-chat", "eval": "--with-eval"}
MARKER = "pipeline_stage.json"
# Keys of a pretraining config that do not change the weights a stage produces (marked ``operational`` in
# tinyllama/training/args.py): a difference in them alone does not make a finished stage stale.
OPERATIONAL_KEYS = PRETRAIN_OPERATIONAL_KEYS


@dataclasses.dataclass
class StageSpec:
    """One entry of ``stages:`` in a pipeline file (docs/stages.md)."""

    name: str  # the stage's run name; "{variant}" is replaced by the variant
    recipe: str = "pretrain"  # pretrain, a chat method (sft, dpo, orpo, simpo, kto; "{chat}": the chosen one) or eval
    config: Optional[str] = None  # the recipe's YAML ("{variant}" replaced)
    init_from: Optional[str] = None  # an earlier stage's name, or "previous"
    teacher: Optional[str] = None  # pretrain: distil from an earlier stage (its export/final) or a model folder/Hub id
    overrides: dict = dataclasses.field(default_factory=dict)  # extra --key value for the recipe
    variants: Optional[list[str]] = None  # only in these variants
    optional: Optional[str] = None  # chat or eval: run only with --with-chat / --with-eval
    launcher: Optional[list[str]] = None  # this stage's launcher (default: the pipeline's)
    suite: Optional[str] = None  # eval: the suite
    limit: Optional[float] = None  # eval: lm-eval --limit


@dataclasses.dataclass
class PipelineFile:
    """The top level of a pipeline file."""

    stages: list  # mappings, each a StageSpec
    name: Optional[str] = None  # default: the file's name
    variants: list[str] = dataclasses.field(default_factory=list)
    variant: Optional[str] = None  # default: the first variant
    launcher: list[str] = dataclasses.field(default_factory=lambda: ["python"])
    chat: str = "dpo"  # the preference method of "{chat}" stages; --with-chat METHOD picks another


# the keys a pipeline file and a stage may hold: their dataclasses' fields (one source)
PIPELINE_KEYS = {f.name for f in dataclasses.fields(PipelineFile)}
STAGE_KEYS = {f.name for f in dataclasses.fields(StageSpec)}


@dataclasses.dataclass
class Pipeline:
    name: str
    variant: str
    variants: list[str]
    launcher: list[str]
    stages: list[StageSpec]
    path: Path
    chat: str = "dpo"


def repo_path(p: str | os.PathLike) -> Path:
    """A path from a pipeline file: absolute, or relative to the repository root (like every config path here)."""
    return Path(p) if Path(p).is_absolute() else REPO / p


def load_pipeline(path: str | os.PathLike) -> Pipeline:
    """Read and check a pipeline file; every problem (for every variant) is reported at once. Keys and value types
    are checked against ``PipelineFile`` and ``StageSpec`` by the parser every config goes through
    (``tinyllama.config.check_mapping``)."""
    path = Path(path)
    data = load_yaml(path)
    errors: list[str] = []
    top = check_mapping(PipelineFile, data, "(pipeline file)", errors)
    variants = top.get("variants") or []
    if not variants and ("variants" in top or "variants" not in data):  # (a value of the wrong type: reported)
        errors.append(f"'variants' must be a non-empty list of names, got {data.get('variants')!r}")
    variant = top.get("variant") or (variants[0] if variants else None)
    if variants and variant not in variants:
        errors.append(f"'variant' {variant!r} is not one of the variants {variants}")
    launcher = top.get("launcher", ["python"])
    if not launcher:
        errors.append("'launcher' must be a list of strings, e.g. [python]")
    stages = []
    raw_stages = top.get("stages")
    if not raw_stages:
        errors.append("'stages' must be a non-empty list of stages")
        raw_stages = []
    for i, raw in enumerate(raw_stages):
        where = f"stages[{i}]" + (f" ({raw.get('name')})" if isinstance(raw, dict) and raw.get("name") else "")
        if not isinstance(raw, dict):
            errors.append(f"{where}: must be a mapping")
            continue
        fields = check_mapping(StageSpec, raw, f"in {where}", errors)
        if not isinstance(fields.get("name"), str) or not fields.get("name"):
            errors.append(f"{where}: 'name' is required")
            continue
        spec = StageSpec(**fields)
        if spec.recipe not in RECIPES and spec.recipe != CHAT:
            errors.append(f"{where}: 'recipe' must be one of {', '.join(RECIPES)} or {CHAT}, got {spec.recipe!r}")
        if spec.recipe == "eval":
            if not spec.suite:
                errors.append(f"{where}: an eval stage needs 'suite' (e.g. commonsense)")
        elif not spec.config:
            errors.append(f"{where}: 'config' is required")
        if spec.optional is not None and spec.optional not in OPTIONAL_FLAGS:
            errors.append(f"{where}: 'optional' must be one of {', '.join(OPTIONAL_FLAGS)}, got {spec.optional!r}")
        if spec.variants is not None and set(spec.variants) - set(variants):
            errors.append(f"{where}: 'variants' must list some of {variants}, got {spec.variants!r}")
        stages.append(spec)
    chat = top.get("chat", "dpo")
    if chat not in PREFERENCE_METHODS:
        errors.append(f"'chat' must be one of {', '.join(PREFERENCE_METHODS)}, got {chat!r}")
    pipeline = Pipeline(str(top.get("name") or path.stem), variant, variants, launcher, stages, path, chat)
    if launcher and all(isinstance(s.name, str) and s.name for s in stages):
        # every variant's plan must hold together (names, references, config files), with every chat method
        methods = PREFERENCE_METHODS if any(CHAT in str(dataclasses.astuple(s)) for s in stages) else [chat]
        for v in variants:
            for m in methods:
                errors += [f"variant {v}" + (f", --with-chat {m}" if len(methods) > 1 else "") + f": {e}"
                           for e in _check_plan(pipeline, v, m)]
    if errors:
        raise ConfigError(str(path), errors)
    return pipeline


def _check_plan(pipeline: Pipeline, variant: str, chat: str) -> list[str]:
    """What does not hold together in one variant's plan, every optional stage included: names, references, config
    files."""
    errors, seen = [], {}  # the stages so far, by name
    all_names = {with_variant(with_chat_method(s, chat), v).name for s in pipeline.stages for v in pipeline.variants}
    for spec in selected(pipeline, variant, with_chat=True, with_eval=True, chat=chat):
        name, ref, teacher = spec.name, spec.init_from, spec.teacher
        if name in seen:
            errors.append(f"stage name '{name}' appears twice")
        if spec.config and not repo_path(spec.config).is_file():
            errors.append(f"{name}: config file not found: {spec.config}")
        if ref == "previous" and not seen:
            errors.append(f"{name}: init_from 'previous', but it is the first stage")
        elif ref in all_names and ref not in seen:
            errors.append(f"{name}: init_from '{ref}' is not an earlier stage of this variant")
        elif ref and ref in seen and seen[ref].recipe == "eval":
            errors.append(f"{name}: init_from '{ref}' is an evaluation, which has no model to start from")
        if teacher and spec.recipe != "pretrain":
            errors.append(f"{name}: 'teacher' is for pretraining stages (recipes/pretrain.py)")
        elif teacher in all_names and (teacher not in seen or seen[teacher].recipe != "pretrain"):
            errors.append(f"{name}: teacher '{teacher}' is not an earlier pretraining stage of this variant")
        if (spec.recipe in METHODS or spec.recipe == "eval") and not ref:
            errors.append(f"{name}: a {spec.recipe} stage needs init_from (the model it reads)")
        seen.setdefault(name, spec)
    return errors


def selected(pipeline: Pipeline, variant: str, with_chat: bool | str, with_eval: bool,
             chat: str | None = None) -> list[StageSpec]:
    """The stages of a variant (the optional ones when asked) as they run: "{chat}" replaced by ``chat`` (default:
    the file's method) and "{variant}" by the variant."""
    flags = {"chat": bool(with_chat), "eval": with_eval}
    return [with_variant(with_chat_method(s, chat or pipeline.chat), variant) for s in pipeline.stages
            if (s.variants is None or variant in s.variants) and (s.optional is None or flags[s.optional])]


def with_chat_method(spec: StageSpec, chat: str) -> StageSpec:
    """The stage with "{chat}" replaced by the chat method in its name, recipe, config and init_from."""
    return _replace(spec, CHAT, chat, ("name", "recipe", "config", "init_from"))


def with_variant(spec: StageSpec, variant: str) -> StageSpec:
    """The stage with "{variant}" replaced by the variant in its name, config, init_from and teacher."""
    return _replace(spec, "{variant}", variant, ("name", "config", "init_from", "teacher"))


def _replace(spec: StageSpec, placeholder: str, value: str, keys: tuple[str, ...]) -> StageSpec:
    fields = {k: getattr(spec, k).replace(placeholder, value) for k in keys if isinstance(getattr(spec, k), str)}
    return dataclasses.replace(spec, **fields)
