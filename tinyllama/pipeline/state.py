"""State on disk: what each planned stage's folder holds (finished, started, changed config or input, absent),
from its ``pipeline_stage.json`` marker, its saved ``config.yaml`` and a fingerprint of its input weights."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import yaml

from .. import environment
from ..environment import offline
from .plan import Planned
from .spec import MARKER, OPERATIONAL_KEYS, RECIPES, REPO


def fingerprint(path: str | os.PathLike | None) -> str | None:
    """Identity of a model folder's weights (a Hub id or other non-folder: the name itself). Reads the size and the
    first and last MiB of each weights file, so it survives copying or moving the folder but not retraining."""
    if path is None:
        return None
    p = Path(path)
    if not p.is_dir():
        return f"name:{path}"
    h = hashlib.sha256()
    files = sorted(p.glob("*.safetensors")) + sorted(p.glob("*.bin")) + [p / "config.json"]
    for f in files:
        if not f.is_file():
            continue
        size = f.stat().st_size
        h.update(f"{f.name}:{size}:".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(1 << 20))
            if size > 2 << 20:
                fh.seek(-(1 << 20), os.SEEK_END)
                h.update(fh.read())
    return h.hexdigest()[:20]


def read_marker(run_dir: Path) -> dict:
    f = Path(run_dir) / MARKER
    return json.loads(f.read_text()) if f.is_file() else {}


def config_hash(resolved: dict) -> str:
    """The identity of a stage's resolved config, kept in its marker: a chat or eval stage is finished only for the
    config it ran with."""
    return hashlib.sha256(json.dumps(resolved, sort_keys=True, default=str).encode()).hexdigest()[:20]


def read_run_summary(run_dir: Path) -> dict:
    """The ``summary.json`` a recipe writes in its run folder at the end (step, tokens, final loss, metrics); {}
    before that."""
    f = Path(run_dir) / "summary.json"
    return json.loads(f.read_text()) if f.is_file() else {}


def pretraining_finished(s: Planned) -> bool:
    """A pretraining stage trained to its max_steps and exported its final weights."""
    return (read_run_summary(s.run_dir).get("step") == s.resolved["max_steps"]
            and (s.run_dir / "export" / "final").is_dir())


def assess(stages: list[Planned], rerun: str | None = None) -> list[Planned]:
    """Set each stage's state: done (skip), new, partial (resume), rerun, or changed / stale (refuse)."""
    names = [s.name for s in stages]
    if rerun is not None and rerun not in names:
        raise ValueError(f"--rerun {rerun}: not a stage of this plan ({', '.join(names)})")
    rerun_from = names.index(rerun) if rerun is not None else len(stages)
    for i, s in enumerate(stages):
        script = RECIPES[s.spec.recipe]
        if script and not (REPO / script).is_file():
            s.state, s.reason = "unavailable", f"{script} does not exist in this checkout"
            continue
        if s.spec.recipe == "eval" and offline() and not environment.eval_data_dir():
            s.state, s.reason = "unavailable", ("offline (HF_HUB_OFFLINE=1) and no EVAL_DATA_DIR: lm-eval needs the "
                                                "suite's task data (docs/evaluation.md)")
            continue
        if s.teacher is not None and s.teacher.state == "unavailable":
            s.state, s.reason = "unavailable", f"its teacher stage {s.teacher.name} is not run"
            continue
        if s.upstream is not None and s.upstream.state == "unavailable":
            s.state, s.reason = "unavailable", f"its input stage {s.upstream.name} is not run"
            continue
        if i >= rerun_from:
            s.state, s.reason = "rerun", f"--rerun {rerun}"
            continue
        s.state, s.reason = _state_on_disk(s)
    return stages


def _config_diff(saved: dict, resolved: dict) -> list[str]:
    keys = sorted((set(saved) | set(resolved)) - OPERATIONAL_KEYS)
    return [f"{k}: {saved.get(k, '<unset>')!r} -> {resolved.get(k, '<unset>')!r}" for k in keys
            if saved.get(k) != resolved.get(k)]


def _state_on_disk(s: Planned) -> tuple[str, str]:
    marker = read_marker(s.run_dir)
    if s.spec.recipe == "pretrain":
        saved_config = s.run_dir / "config.yaml"
        if not saved_config.is_file():
            return "new", ""
        diff = _config_diff(yaml.safe_load(saved_config.read_text()) or {}, s.resolved)
        if diff:
            return "changed", "its config differs from the one it ran with: " + "; ".join(diff)
    else:
        if not marker:
            return ("new", "") if not s.run_dir.exists() else ("changed", f"{s.run_dir} exists but was not made by "
                                                                          "this pipeline")
        if marker.get("config_hash") != config_hash(s.resolved):
            return "changed", "its config or overrides differ from the ones it ran with"
    if s.teacher is not None and s.teacher.will_run:
        return "stale", f"its teacher, stage {s.teacher.name}, is about to be (re)trained"
    if s.upstream is not None:
        if s.upstream.will_run:
            return "stale", f"its input, stage {s.upstream.name}, is about to be (re)trained"
        if marker and marker.get("input_fingerprint") != fingerprint(s.init_from):
            return "stale", f"its input {s.init_from} changed since it ran"
    if s.spec.recipe == "pretrain":
        if pretraining_finished(s):
            return "done", ""
        from ..checkpoints import complete_checkpoints

        ckpts = complete_checkpoints(s.run_dir / "checkpoints")
        return "partial", (f"resumes from its checkpoint at step {ckpts[-1][0]}" if ckpts
                           else "restarts (no complete checkpoint yet)")
    return ("done", "") if marker.get("finished") else ("partial", "did not finish; runs again")
