"""The plan: each selected stage of a variant resolved into a :class:`Planned` stage: its run folder, recipe
arguments (``--output_dir``, ``--init_from``, overrides) and resolved config."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import yaml

from ..chat.methods import METHODS, PREFERENCE_METHODS
from ..config import load_yaml
from ..training.args import CONTINUE
from .spec import Pipeline, REPO, StageSpec, _repo_path, _selected

@dataclasses.dataclass
class Planned:
    spec: StageSpec
    name: str
    run_dir: Path
    config: Path | None
    upstream: "Planned | None"  # the earlier stage whose output this one reads
    init_from: str | None  # what it starts from: the upstream's output, or a literal path / Hub id
    argv: list[str]  # the recipe's arguments (after the script)
    resolved: dict  # the resolved config (pretrain) or the inputs that define the stage (others)
    state: str = "new"  # new | partial | done | changed | stale | rerun | unavailable
    reason: str = ""
    teacher: "Planned | None" = None  # the earlier stage whose export/final is this one's teacher (distillation)

    @property
    def output(self) -> Path | None:
        """What a later stage reads."""
        if self.spec.recipe == "pretrain":
            return self.run_dir / "export" / "final"
        return self.run_dir if self.spec.recipe in METHODS else None

    @property
    def will_run(self) -> bool:
        return self.state in ("new", "partial", "rerun")


def _cli_value(v: Any) -> str:
    if isinstance(v, str):
        return v
    return yaml.safe_dump(v, default_flow_style=True, width=10**9).strip().removesuffix("\n...")


def _argv(mapping: dict) -> list[str]:
    out = []
    for k, v in mapping.items():
        out += [f"--{k}", _cli_value(v)]
    return out


def plan(pipeline: Pipeline, variant: str | None = None, root: str | os.PathLike | None = None,
         with_chat: bool | str = False, with_eval: bool = False) -> list[Planned]:
    """The stages to run for ``variant``, with their folders, arguments and resolved configs (nothing is run).
    ``with_chat``: True runs the optional chat stages with the file's ``chat`` method, a method name with that one."""
    from ..config import config_to_dict, parse_config
    from ..training.args import PretrainArgs

    variant = variant or pipeline.variant
    if variant not in pipeline.variants:
        raise ValueError(f"variant {variant!r}: {pipeline.path} has {', '.join(pipeline.variants)}")
    chat = with_chat if isinstance(with_chat, str) else pipeline.chat
    if chat not in PREFERENCE_METHODS:
        raise ValueError(f"--with-chat {chat}: choose one of {', '.join(PREFERENCE_METHODS)}")
    root = Path(root).resolve() if root else REPO / "outputs" / pipeline.name
    planned: list[Planned] = []
    for spec in _selected(pipeline, variant, with_chat, with_eval, chat):
        name = spec.name.replace("{variant}", variant)
        run_dir = root / name
        config = _repo_path(spec.config.replace("{variant}", variant)) if spec.config else None
        ref = spec.init_from.replace("{variant}", variant) if spec.init_from else None
        by_name = {p.name: p for p in planned}
        upstream = planned[-1] if ref == "previous" else by_name.get(ref)
        init_from = str(upstream.output) if upstream else ref
        overrides = dict(spec.overrides or {})
        teacher_ref = spec.teacher.replace("{variant}", variant) if spec.teacher else None
        teacher = by_name.get(teacher_ref)
        if spec.recipe == "pretrain":
            overrides.update({"output_dir": str(run_dir), "resume": "auto"})
            if init_from:
                overrides["init_from"] = init_from
            if teacher_ref:  # an earlier stage's export/final, or a folder / Hub id as written
                overrides["teacher"] = str(teacher.output) if teacher else teacher_ref
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
        else:
            argv = [init_from, spec.suite] + (["--limit", _cli_value(spec.limit)] if spec.limit is not None else [])
            resolved = {"model": init_from, "suite": spec.suite, "limit": spec.limit}
        planned.append(Planned(spec, name, run_dir, config, upstream, init_from, argv, resolved, teacher=teacher))
    return planned


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


def _normalise(d: dict) -> dict:
    return yaml.safe_load(yaml.safe_dump(d, sort_keys=True))
