"""Running: the command line of each stage and its subprocess (output shown and kept in a log), and
:func:`run_pipeline`, the whole command: plan, check the state on disk, run what is left, write the summary."""

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
from .plan import Planned, plan
from .report import _fmt_seconds, format_table, summary_rows, write_summary
from .spec import MARKER, OPTIONAL_FLAGS, Pipeline, RECIPES, REPO, load_pipeline
from .state import _config_hash, _read_json, assess, fingerprint, read_marker

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
                   "config_hash": _config_hash(s.resolved), "finished": None,
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
    if rc == 0 and s.spec.recipe == "pretrain":
        summary = _read_json(s.run_dir / "summary.json")
        if summary.get("step") != s.resolved["max_steps"] or not (s.run_dir / "export" / "final").is_dir():
            atomic_write_text(s.run_dir / MARKER, json.dumps(marker, indent=2))
            raise StageFailed(f"stage {s.name} stopped at step {summary.get('step')} of {s.resolved['max_steps']} "
                              f"(preempted?): run the pipeline again to resume it from its last checkpoint")
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
    pipeline = load_pipeline(pipeline_path)
    variant = variant or pipeline.variant
    stages = assess(plan(pipeline, variant, root, with_chat, with_eval), rerun)
    root = Path(root).resolve() if root else REPO / "outputs" / pipeline.name
    print(f"pipeline {pipeline.name} ({pipeline.path}), variant {variant} -> {root}\n{describe(stages)}", flush=True)
    for flag_name, flag in OPTIONAL_FLAGS.items():
        enabled = bool(with_chat) if flag_name == "chat" else with_eval
        if not enabled and any(s.optional == flag_name and (s.variants is None or variant in s.variants)
                               for s in pipeline.stages):
            print(f"  ({flag_name} stages are left out: add {flag})")
    blocked = [s for s in stages if s.state in ("changed", "stale")]
    if blocked:
        lines = "\n".join(f"  - {s.name} ({s.run_dir}): {s.reason}" for s in blocked)
        raise ValueError(f"{len(blocked)} finished or started stage(s) no longer match the pipeline:\n{lines}\n"
                         f"Nothing was run. Restore the config, or retrain from the first of them (its folder and "
                         f"every later stage's are deleted): --rerun {blocked[0].name}")
    if dry_run:
        return {"stages": [dataclasses.asdict(s.spec) | {"name": s.name, "state": s.state} for s in stages]}
    ran: dict[str, str] = {}
    try:
        for s in stages:
            if not s.will_run:
                continue
            resumed = s.state == "partial"
            seconds = run_stage(pipeline, s, root / "logs", launcher)
            ran[s.name] = f"{'resumed' if resumed else 'ran'} ({_fmt_seconds(seconds)})"
            s.state = "done"
    finally:
        rows = summary_rows(stages, ran)
        doc = write_summary(pipeline, variant, root, rows, stages)
        print("\n" + format_table(rows), flush=True)
        print(f"\nsummary: {root / f'pipeline-{variant}.md'} (.json)" +
              (f", plot: {doc['plot']}" if doc.get("plot") else ""), flush=True)
    return doc
