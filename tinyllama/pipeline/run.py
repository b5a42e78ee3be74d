"""Running: the command line of each stage and its subprocess (output shown and kept in a log), and
:func:`run_pipeline`, the whole command: plan, check the state on disk, refuse changed stages, run what is left,
write the summary."""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ..chat.methods import METHODS
from ..utils import atomic_write_text
from .plan import Plan, Planned, plan
from .spec import MARKER, OPTIONAL_FLAGS, Pipeline, RECIPES, REPO, load_pipeline, selected
from .state import assess, config_hash, fingerprint, pretraining_finished, read_marker, read_run_summary
from .summary import format_table, ran_status, summary_rows, write_summary


def launcher_for(pipeline: Pipeline, s: Planned, override: list[str] | None = None) -> list[str]:
    launcher = list(override or s.spec.launcher or pipeline.launcher)
    if launcher[0] in ("python", "python3"):
        launcher[0] = sys.executable
    return launcher


def command(pipeline: Pipeline, s: Planned, launcher: list[str] | None = None) -> list[str]:
    if s.spec.recipe == "eval":
        return [sys.executable, "-m", "tinyllama.evaluation", "run", *s.argv]
    argv = list(s.argv)
    if s.spec.recipe in METHODS and s.state == "partial" and any(s.run_dir.glob("checkpoint-*")):
        argv += ["--resume_from_checkpoint", "last"]
    return [*launcher_for(pipeline, s, launcher), str(REPO / RECIPES[s.spec.recipe]), *argv]


def _env(s: Planned) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    if s.spec.recipe == "eval":
        env["EVAL_OUT"] = str(s.run_dir)
    return env


def run_stage(pipeline: Pipeline, s: Planned, log_dir: Path, launcher: list[str] | None = None) -> float:
    """Run one stage as a subprocess, its output shown and kept in ``log_dir/<stage>.log``; returns seconds."""
    if s.state == "rerun" and s.run_dir.exists():
        doomed = s.run_dir.with_name(f".deleting-{s.run_dir.name}")
        shutil.rmtree(doomed, ignore_errors=True)
        os.replace(s.run_dir, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
    s.run_dir.mkdir(parents=True, exist_ok=True)
    marker = read_marker(s.run_dir) if s.state == "partial" else {}
    marker.update({"stage": s.name, "recipe": s.spec.recipe, "config": str(s.config) if s.config else None,
                   "init_from": s.init_from, "input_fingerprint": fingerprint(s.init_from),
                   "config_hash": config_hash(s.resolved), "finished": None,
                   "seconds": marker.get("seconds", 0.0)})
    atomic_write_text(s.run_dir / MARKER, json.dumps(marker, indent=2))
    cmd = command(pipeline, s, launcher)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_file = log_dir / f"{s.name}.log"
    print(f"\n=== {s.name}: {' '.join(cmd)}\n    (log: {log_file})", flush=True)
    start = time.perf_counter()
    with open(log_file, "a") as logf:
        proc = subprocess.Popen(cmd, cwd=REPO, env=_env(s), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace", bufsize=1)
        for line in proc.stdout:
            sys.stdout.write(line)
            logf.write(line)
        rc = proc.wait()
    elapsed = time.perf_counter() - start
    marker["seconds"] = marker["seconds"] + elapsed
    if rc == 0 and s.spec.recipe == "pretrain" and not pretraining_finished(s):
        atomic_write_text(s.run_dir / MARKER, json.dumps(marker, indent=2))
        raise StageFailed(f"stage {s.name} stopped at step {read_run_summary(s.run_dir).get('step')} of "
                          f"{s.resolved['max_steps']} (preempted?): run the pipeline again to resume it from its "
                          f"last checkpoint")
    if rc != 0:
        atomic_write_text(s.run_dir / MARKER, json.dumps(marker, indent=2))
        raise StageFailed(f"stage {s.name} failed (exit status {rc}); its output is in {log_file}")
    marker["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
    atomic_write_text(s.run_dir / MARKER, json.dumps(marker, indent=2))
    return elapsed


class StageFailed(RuntimeError):
    pass


def describe(stages: list[Planned]) -> str:
    width = max(len(s.name) for s in stages)
    lines = []
    for s in stages:
        what = {"done": "done: skipped", "new": "runs", "partial": "runs", "rerun": "runs again"}.get(s.state, s.state)
        lines.append(f"  {s.name.ljust(width)}  {s.spec.recipe:8s} {what}" + (f" ({s.reason})" if s.reason else ""))
    return "\n".join(lines)


def run_pipeline(pipeline_path: str | os.PathLike, variant: str | None = None,
                 root: str | os.PathLike | None = None, with_chat: bool | str = False, with_eval: bool = False,
                 rerun: str | None = None, dry_run: bool = False, launcher: list[str] | None = None) -> dict:
    """Plan, check, run what is not done, and write the summary; returns the summary document. ``with_chat``: True
    or a chat method's name (the preference method of the "{chat}" stages)."""
    p = plan(load_pipeline(pipeline_path), variant, root, with_chat, with_eval)
    assess(p.stages, rerun)
    print(f"pipeline {p.pipeline.name} ({p.pipeline.path}), variant {p.variant} -> {p.root}\n{describe(p.stages)}",
          flush=True)
    for line in _left_out(p, with_chat, with_eval):
        print(line)
    _refuse_changed(p)
    if dry_run:
        return {"stages": [dataclasses.asdict(s.spec) | {"state": s.state} for s in p]}
    return _run(p, launcher)


def _left_out(p: Plan, with_chat: bool | str, with_eval: bool) -> list[str]:
    """A note for each kind of optional stage this variant has that was not asked for."""
    asked = {"chat": bool(with_chat), "eval": with_eval}
    return [f"  ({kind} stages are left out: add {flag})" for kind, flag in OPTIONAL_FLAGS.items()
            if not asked[kind] and any(s.optional == kind for s in selected(p.pipeline, p.variant, True, True))]


def _refuse_changed(p: Plan) -> None:
    """Stop before any work when a finished or started stage no longer matches the pipeline."""
    blocked = [s for s in p if s.state in ("changed", "stale")]
    if blocked:
        lines = "\n".join(f"  - {s.name} ({s.run_dir}): {s.reason}" for s in blocked)
        raise ValueError(f"{len(blocked)} finished or started stage(s) no longer match the pipeline:\n{lines}\n"
                         f"Nothing was run. Restore the config, or retrain from the first of them (its folder and "
                         f"every later stage's are deleted): --rerun {blocked[0].name}")


def _run(p: Plan, launcher: list[str] | None) -> dict:
    """Run the stages that are not done, in order; the summary is written even when one fails."""
    ran: dict[str, str] = {}
    try:
        for s in p:
            if not s.will_run:
                continue
            resumed = s.state == "partial"
            seconds = run_stage(p.pipeline, s, p.root / "logs", launcher)
            ran[s.name] = ran_status(resumed, seconds)
            s.state = "done"
    finally:
        rows = summary_rows(p.stages, ran)
        doc = write_summary(p, rows)
        print("\n" + format_table(rows), flush=True)
        print(f"\nsummary: {p.root / f'pipeline-{p.variant}.md'} (.json)" +
              (f", plot: {doc['plot']}" if doc.get("plot") else ""), flush=True)
    return doc
