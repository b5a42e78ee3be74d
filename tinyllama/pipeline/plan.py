"""The plan: a pipeline resolved for one run (:class:`Plan`: the variant, the root folder and the stages), each
selected stage a :class:`Planned` one, complete when :func:`plan` returns it: its run folder, the stage it reads
(and its teacher), its recipe arguments (``--output_dir``, ``--init_from``, overrides) and its resolved config.
Checking the state on disk (state.py) only sets a stage's ``state`` and ``reason``."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import yaml

from ..chat.methods import METHODS, PREFERENCE_METHODS
from ..config import config_to_dict, load_yaml, parse_config
from ..training.args import CONTINUE, PretrainArgs
from .spec import Pipeline, REPO, StageSpec, repo_path, selected


@dataclasses.dataclass
class Planned:
    spec: StageSpec  # the stage as it runs for this plan: "{variant}" and "{chat}" replaced
    run_dir: Path
    config: Path | None
    upstream: "Planned | None"  # the earlier stage whose output this one reads
    init_from: str | None  # what it starts from: the upstream's output, or a literal path / Hub id
    argv: list[str]  # the recipe's arguments (after the script)
    resolved: dict  # the resolved config (pretrain) or the inputs that define the stage (others)
    teacher: "Planned | None" = None  # the earlier stage whose export/final is this one's teacher (distillation)
    state: str = "new"  # new | partial | done | changed | stale | rerun | unavailable (set by state.assess)
    reason: str = ""

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def output(self) -> Path | None:
        """What a later stage reads."""
        if self.spec.recipe == "pretrain":
            return self.run_dir / "export" / "final"
        return self.run_dir if self.spec.recipe in METHODS else None

    @property
    def will_run(self) -> bool:
        return self.state in ("new", "partial", "rerun")


@dataclasses.dataclass
class Plan:
    """A pipeline planned for one run: the variant and root folder (their defaults applied once, by :func:`plan`)
    and the stages in order. Iterating or indexing a Plan goes over its stages."""

    pipeline: Pipeline
    variant: str
    root: Path
    stages: list[Planned]

    def __iter__(self):
        return iter(self.stages)

    def __getitem__(self, i: int) -> Planned:
        return self.stages[i]

    def __len__(self) -> int:
        return len(self.stages)


def plan(pipeline: Pipeline, variant: str | None = None, root: str | os.PathLike | None = None,
         with_chat: bool | str = False, with_eval: bool = False) -> Plan:
    """The stages to run for ``variant`` (default: the file's), in folders under ``root`` (default:
    ``outputs/<pipeline name>``), with their arguments and resolved configs (nothing is run). ``with_chat``: True
    runs the optional chat stages with the file's ``chat`` method, a method name with that one."""
    variant = variant or pipeline.variant
    if variant not in pipeline.variants:
        raise ValueError(f"variant {variant!r}: {pipeline.path} has {', '.join(pipeline.variants)}")
    chat = with_chat if isinstance(with_chat, str) else pipeline.chat
    if chat not in PREFERENCE_METHODS:
        raise ValueError(f"--with-chat {chat}: choose one of {', '.join(PREFERENCE_METHODS)}")
    root = Path(root).resolve() if root else REPO / "outputs" / pipeline.name
    stages: list[Planned] = []
    for spec in selected(pipeline, variant, with_chat, with_eval, chat):
        stages.append(_planned(spec, root / spec.name, stages))
    return Plan(pipeline, variant, root, stages)


def _planned(spec: StageSpec, run_dir: Path, earlier: list[Planned]) -> Planned:
    """One stage: what it reads (an earlier stage's output, or a path / Hub id as written), its teacher, its
    recipe's arguments and its resolved config."""
    by_name = {p.name: p for p in earlier}
    upstream = earlier[-1] if spec.init_from == "previous" else by_name.get(spec.init_from)
    teacher = by_name.get(spec.teacher)
    init_from = str(upstream.output) if upstream else spec.init_from
    config = repo_path(spec.config) if spec.config else None
    overrides = dict(spec.overrides or {})
    if spec.recipe == "pretrain":
        overrides.update({"output_dir": str(run_dir), "resume": "auto"})
        if init_from:
            overrides["init_from"] = init_from
        if spec.teacher:  # an earlier stage's export/final, or a folder / Hub id as written
            overrides["teacher"] = str(teacher.output) if teacher else spec.teacher
        offset = _continued_offset(config, overrides, upstream)
        if offset is not None:
            overrides["lr_step_offset"] = offset
        argv = ["--config", str(config), *_argv(overrides)]
        (args,) = parse_config(PretrainArgs, argv)
        resolved = _normalise(config_to_dict(args))
    elif spec.recipe in METHODS:
        overrides.update({"model_name_or_path": init_from, "output_dir": str(run_dir)})
        argv = ["--config", str(config), *_argv(overrides)]
        resolved = _normalise({**load_yaml(config), **overrides})
    else:  # eval
        argv = [init_from, spec.suite] + (["--limit", _cli_value(spec.limit)] if spec.limit is not None else [])
        resolved = {"model": init_from, "suite": spec.suite, "limit": spec.limit}
    return Planned(spec, run_dir, config, upstream, init_from, argv, resolved, teacher)


def _continued_offset(config: Path, overrides: dict, upstream: Planned | None) -> int | None:
    """``lr_step_offset: continue`` after a pretraining stage of this plan: where that stage's schedule stops, its
    offset plus its steps. That is the number the recipe would read from the upstream export's
    training_metadata.json (a stage is finished only at max_steps), derived here from the configs so that the plan,
    its dry run and the finished-stage check need no file, and a stage planned before its upstream has run gets its
    number too. Anything else (a number, or an init_from outside the plan) is left to the recipe's parser."""
    if not (upstream is not None and upstream.spec.recipe == "pretrain"):
        return None
    if {**load_yaml(config), **overrides}.get("lr_step_offset") != CONTINUE:
        return None
    before = upstream.resolved.get("lr_step_offset")
    return before + upstream.resolved["max_steps"] if isinstance(before, int) else None


def _argv(mapping: dict) -> list[str]:
    out = []
    for k, v in mapping.items():
        out += [f"--{k}", _cli_value(v)]
    return out


def _cli_value(v: Any) -> str:
    if isinstance(v, str):
        return v
    return yaml.safe_dump(v, default_flow_style=True, width=10**9).strip().removesuffix("\n...")


def _normalise(d: dict) -> dict:
    return yaml.safe_load(yaml.safe_dump(d, sort_keys=True))
