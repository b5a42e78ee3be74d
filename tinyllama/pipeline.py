"""One command for TinyLlama v1.1's chain: basic -> continual (a variant) -> cooldown [-> SFT -> DPO] [-> evaluation].

A pipeline is data (``configs/pipeline/*.yaml``): an ordered list of stages, each one recipe run with a config and
overrides, most reading the output of an earlier stage::

    name: demo-v1.1              # run folders in outputs/<name>/<stage>/ (or --output-root)
    variant: math_code           # the default variant; {variant} in stage names and config paths is replaced
    variants: [general, math_code, chinese, code]
    launcher: [python]           # how recipe stages start, e.g. [accelerate, launch, --config_file, <file>]
    stages:
      - name: continual-{variant}
        recipe: pretrain         # pretrain (default) | sft | dpo | eval
        config: configs/continual/demo-{variant}.yaml
        init_from: basic         # an earlier stage (its output), 'previous', or a path / Hub id; none: the config's
        overrides: {}            # --key value for the recipe
        variants: [general]      # only for these variants (default: all)
        optional: chat           # only with --with-chat (chat) or --with-eval (eval)
        launcher: [...]          # this stage's own launcher
        suite: commonsense       # eval stages: the lm-eval suite (and limit: lm-eval --limit)

How stages connect and when they are skipped:

- A stage's run folder is ``<root>/<stage name>``. A pretraining stage is started with ``--output_dir <folder>
  --init_from <earlier stage>/export/final --resume auto``: ``init_from`` names the weights a stage starts from,
  ``resume auto`` continues an interrupted run of the same stage from its own newest checkpoint (its own step and
  data position). SFT/DPO get ``--model_name_or_path`` and ``--output_dir``; evaluation runs
  ``python -m tinyllama.evaluation run`` on the last model with ``EVAL_OUT`` set to its folder.
- A finished stage is skipped only while it is still what the pipeline would run: the same resolved config (the
  recipe's ``config.yaml``, keys that do not change the weights aside: ``OPERATIONAL_KEYS``) and the same input
  weights (a fingerprint of the earlier stage's output, kept in ``<folder>/pipeline_stage.json``). A stage whose
  config or input changed is never silently reused or resumed: the pipeline stops before any work, names every such
  stage and why, and ``--rerun STAGE`` retrains that stage and every later one.
- At the end: a table (stage, status, steps, tokens, cumulative tokens, final loss, time, folder), also written as
  ``<root>/pipeline-<variant>.json`` and ``.md``, and ``pipeline-<variant>.png`` beside them: learning rate, batch
  size, source shares and loss over the chain's tokens, read from each stage's ``logs/metrics.jsonl``.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from .config import ConfigError, load_yaml
from .utils import atomic_write_text, repo_root

log = logging.getLogger("pipeline")

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


# ------------------------------------------------------------------------------------------------ the description
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


# ------------------------------------------------------------------------------------------------ the plan
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

    @property
    def output(self) -> Path | None:
        """What a later stage reads."""
        if self.spec.recipe == "pretrain":
            return self.run_dir / "export" / "final"
        return self.run_dir if self.spec.recipe in ("sft", "dpo") else None

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
         with_chat: bool = False, with_eval: bool = False) -> list[Planned]:
    """The stages to run for ``variant``, with their folders, arguments and resolved configs (nothing is run)."""
    from .config import config_to_dict, parse_config
    from .training.args import PretrainArgs

    variant = variant or pipeline.variant
    if variant not in pipeline.variants:
        raise ValueError(f"variant {variant!r}: {pipeline.path} has {', '.join(pipeline.variants)}")
    root = Path(root).resolve() if root else REPO / "outputs" / pipeline.name
    planned: list[Planned] = []
    for spec in _selected(pipeline, variant, with_chat, with_eval):
        name = spec.name.replace("{variant}", variant)
        run_dir = root / name
        config = _repo_path(spec.config.replace("{variant}", variant)) if spec.config else None
        ref = spec.init_from.replace("{variant}", variant) if spec.init_from else None
        by_name = {p.name: p for p in planned}
        upstream = planned[-1] if ref == "previous" else by_name.get(ref)
        init_from = str(upstream.output) if upstream else ref
        overrides = dict(spec.overrides or {})
        if spec.recipe == "pretrain":
            overrides.update({"output_dir": str(run_dir), "resume": "auto"})
            if init_from:
                overrides["init_from"] = init_from
            argv = ["--config", str(config), *_argv(overrides)]
            (args,) = parse_config(PretrainArgs, argv)
            resolved = _normalise(config_to_dict(args))
        elif spec.recipe in ("sft", "dpo"):
            overrides.update({"model_name_or_path": init_from, "output_dir": str(run_dir)})
            argv = ["--config", str(config), *_argv(overrides)]
            resolved = _normalise({**load_yaml(config), **overrides})
        else:
            argv = [init_from, spec.suite] + (["--limit", _cli_value(spec.limit)] if spec.limit is not None else [])
            resolved = {"model": init_from, "suite": spec.suite, "limit": spec.limit}
        planned.append(Planned(spec, name, run_dir, config, upstream, init_from, argv, resolved))
    return planned


def _normalise(d: dict) -> dict:
    return yaml.safe_load(yaml.safe_dump(d, sort_keys=True))


# ------------------------------------------------------------------------------------------------ state on disk
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


def _config_hash(resolved: dict) -> str:
    return hashlib.sha256(json.dumps(resolved, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _config_diff(saved: dict, resolved: dict) -> list[str]:
    keys = sorted((set(saved) | set(resolved)) - OPERATIONAL_KEYS)
    return [f"{k}: {saved.get(k, '<unset>')!r} -> {resolved.get(k, '<unset>')!r}" for k in keys
            if saved.get(k) != resolved.get(k)]


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


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
        if s.spec.recipe == "eval" and _offline() and not os.environ.get("EVAL_DATA_DIR"):
            s.state, s.reason = "unavailable", ("offline (HF_HUB_OFFLINE=1) and no EVAL_DATA_DIR: lm-eval needs the "
                                                "suite's task data (docs/evaluation.md)")
            continue
        if s.upstream is not None and s.upstream.state == "unavailable":
            s.state, s.reason = "unavailable", f"its input stage {s.upstream.name} is not run"
            continue
        if i >= rerun_from:
            s.state, s.reason = "rerun", f"--rerun {rerun}"
            continue
        s.state, s.reason = _state_on_disk(s)
    return stages


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


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
        if marker.get("config_hash") != _config_hash(s.resolved):
            return "changed", "its config or overrides differ from the ones it ran with"
    if s.upstream is not None:
        if s.upstream.will_run:
            return "stale", f"its input, stage {s.upstream.name}, is about to be (re)trained"
        if marker and marker.get("input_fingerprint") != fingerprint(s.init_from):
            return "stale", f"its input {s.init_from} changed since it ran"
    if s.spec.recipe == "pretrain":
        summary = _read_json(s.run_dir / "summary.json")
        if summary.get("step") == s.resolved["max_steps"] and (s.run_dir / "export" / "final").is_dir():
            return "done", ""
        from .training.checkpoint import complete_checkpoints

        ckpts = complete_checkpoints(s.run_dir / "checkpoints")
        return "partial", (f"resumes from its checkpoint at step {ckpts[-1][0]}" if ckpts
                           else "restarts (no complete checkpoint yet)")
    return ("done", "") if marker.get("finished") else ("partial", "did not finish; runs again")


# ------------------------------------------------------------------------------------------------ running
def launcher_for(pipeline: Pipeline, s: Planned, override: list[str] | None = None) -> list[str]:
    launcher = list(override or s.spec.launcher or pipeline.launcher)
    if launcher[0] in ("python", "python3"):
        launcher[0] = sys.executable
    return launcher


def command(pipeline: Pipeline, s: Planned, launcher: list[str] | None = None) -> list[str]:
    if s.spec.recipe == "eval":
        return [sys.executable, "-m", "tinyllama.evaluation", "run", *s.argv]
    argv = list(s.argv)
    if s.spec.recipe in ("sft", "dpo") and s.state == "partial" and any(s.run_dir.glob("checkpoint-*")):
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


# ------------------------------------------------------------------------------------------------ the summary
def summary_rows(stages: list[Planned], ran: dict[str, str]) -> list[dict]:
    """One row per stage: what it is, what happened now, its steps, tokens (and the chain's cumulative tokens),
    final loss (or evaluation result), time spent on it over all runs, and its folder."""
    rows, cumulative = [], 0
    for s in stages:
        marker = read_marker(s.run_dir)
        row = {"stage": s.name, "recipe": s.spec.recipe, "status": ran.get(s.name) or _status_text(s),
               "note": s.reason if s.state == "unavailable" else None, "steps": None, "tokens": None, "cumulative_tokens": None, "final_loss": None, "result": None,
               "seconds": marker.get("seconds"), "output": str(s.run_dir)}
        if s.spec.recipe == "pretrain":
            summary = _read_json(s.run_dir / "summary.json")
            if summary:
                row.update(steps=summary.get("step"), tokens=summary.get("tokens"),
                           final_loss=summary.get("final_loss"))
                cumulative += summary.get("tokens") or 0
                row["cumulative_tokens"] = cumulative
        elif s.spec.recipe in ("sft", "dpo"):
            row["final_loss"] = _chat_loss(s.run_dir)
        elif s.spec.recipe == "eval" and marker.get("finished"):
            row["result"] = _eval_result(s)
        rows.append(row)
    return rows


def _status_text(s: Planned) -> str:
    return {"done": "skipped (done)", "unavailable": "not run (note)"}.get(s.state, s.state)


def _short(path: str) -> str:
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return path


def _chat_loss(run_dir: Path) -> float | None:
    """The train loss the chat recipes print at the end ("saved model to ...: train_loss=...")."""
    import re

    log_file = run_dir.parent / "logs" / f"{run_dir.name}.log"
    if not log_file.is_file():
        return None
    hits = re.findall(r"train_loss=([0-9.eE+-]+)", log_file.read_text(errors="replace"))
    return float(hits[-1]) if hits else None


def _eval_result(s: Planned) -> str | None:
    try:
        from .evaluation import load_results, load_suite, pick_metric

        suite = load_suite(s.spec.suite)
        results = {}
        for f in s.run_dir.rglob("results_*.json"):
            results.update(load_results(f.parent))
        picked = [pick_metric(results[t.task], t.metric) for t in suite.tasks if t.task in results]
        picked = [p for p in picked if p]
        if not picked:
            return None
        return f"{suite.name}: mean {sum(v for _, v in picked) / len(picked):.4f} over {len(picked)} tasks"
    except Exception as e:  # the table should still print
        return f"(results unreadable: {e})"


def _fmt_tokens(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def _fmt_seconds(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s:.0f}s" if s < 600 else f"{s / 60:.1f}min" if s < 36000 else f"{s / 3600:.1f}h"


COLUMNS = ["stage", "status", "steps", "tokens", "cumulative", "final loss", "time", "output"]


def table_cells(row: dict) -> list[str]:
    loss = row["result"] or (f"{row['final_loss']:.4f}" if isinstance(row["final_loss"], float) else "-")
    return [row["stage"], row["status"], "-" if row["steps"] is None else str(row["steps"]),
            _fmt_tokens(row["tokens"]), _fmt_tokens(row["cumulative_tokens"]), loss, _fmt_seconds(row["seconds"]),
            _short(row["output"])]


def format_table(rows: list[dict], markdown: bool = False) -> str:
    cells = [table_cells(r) for r in rows]
    notes = [f"note, {r['stage']}: {r['note']}" for r in rows if r.get("note")]
    if markdown:
        lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        return "\n".join(lines + ["| " + " | ".join(c) + " |" for c in cells] + [""] + notes) + "\n"
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(COLUMNS)]
    line = lambda c: "  ".join(x.ljust(w) for x, w in zip(c, widths)).rstrip()  # noqa: E731
    return "\n".join([line(COLUMNS), line(["-" * w for w in widths])] + [line(c) for c in cells] + notes)


def write_summary(pipeline: Pipeline, variant: str, root: Path, rows: list[dict], stages: list[Planned]) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    base = root / f"pipeline-{variant}"
    doc = {"pipeline": str(pipeline.path), "name": pipeline.name, "variant": variant,
           "written": datetime.datetime.now().isoformat(timespec="seconds"), "stages": rows,
           "total_tokens": sum(r["tokens"] or 0 for r in rows)}
    atomic_write_text(base.with_suffix(".json"), json.dumps(doc, indent=2))
    md = (f"# Pipeline {pipeline.name}, variant {variant}\n\nFrom `{pipeline.path}`; "
          f"{_fmt_tokens(doc['total_tokens'])} pretraining tokens in all.\n\n" + format_table(rows, markdown=True)
          + f"\n![learning rate, batch size, source shares and loss over the chain]({base.name}.png)\n")
    atomic_write_text(base.with_suffix(".md"), md)
    runs = [(s.name, s.run_dir) for s in stages if s.spec.recipe == "pretrain" and (s.run_dir / "logs").is_dir()]
    if runs:
        doc["plot"] = str(plot_chain(runs, base.with_suffix(".png"), f"{pipeline.name} ({variant})"))
    return doc


def chain_series(runs: list[tuple[str, Path]]) -> list[dict]:
    """Per stage: its training rows from logs/metrics.jsonl (the last row of each step wins, for a resumed run),
    with x = tokens of the whole chain so far and batch in tokens."""
    out, offset = [], 0
    for name, run_dir in runs:
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) if (run_dir / "config.yaml").is_file() else {}
        seq_len = cfg.get("seq_len", 1)
        by_step = {}
        f = run_dir / "logs" / "metrics.jsonl"
        for line in (f.read_text().splitlines() if f.is_file() else []):
            row = json.loads(line)
            if "lr" in row:
                by_step[row["step"]] = row
        rows = [by_step[k] for k in sorted(by_step)]
        configured = {}
        if cfg.get("mixture") and rows:  # the configured share at each logged step (ramps included)
            import numpy as np

            from .data.mixture import parse_mixture

            mixture = parse_mixture(cfg["mixture"])
            # the share of the samples of step s is the weight at their token position (within this stage)
            pos = np.array([r["tokens_seen"] - r["global_batch"] * seq_len / 2 for r in rows], dtype=np.float64)
            w = np.stack([m.at(pos) for m in mixture], axis=1)
            w = w / w.sum(axis=1, keepdims=True)
            configured = {m.name: w[:, j].tolist() for j, m in enumerate(mixture)}
        out.append({"stage": name, "start": offset, "x": [offset + r["tokens_seen"] for r in rows],
                    "configured": configured,
                    "lr": [r["lr"] for r in rows], "batch_tokens": [r["global_batch"] * seq_len for r in rows],
                    "loss": [r.get("loss") for r in rows],
                    "mix": {k[4:]: [r.get(k, 0.0) for r in rows] for k in sorted({k for r in rows for k in r
                                                                                   if k.startswith("mix/")})}})
        offset = out[-1]["x"][-1] if rows else offset
    return out


def plot_chain(runs: list[tuple[str, Path]], out: Path, title: str) -> Path:
    """learning rate, batch size (tokens), source shares (a moving average over ~16 log lines) and loss over the
    chain's tokens, one panel each, stage boundaries marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    series = chain_series(runs)
    fig, axes = plt.subplots(4, 1, figsize=(10, 11), sharex=True)
    colours = {}
    for st in series:
        if not st["x"]:
            continue
        axes[0].plot(st["x"], st["lr"], color="tab:blue")
        axes[1].step(st["x"], st["batch_tokens"], where="post", color="tab:green")
        for src, shares in st["mix"].items():
            c = colours.setdefault(src, f"C{len(colours)}")
            k = max(1, min(16, len(shares) // 4))
            smooth = np.convolve(shares, np.ones(k) / k, mode="valid") if len(shares) >= k else np.array(shares)
            axes[2].plot(st["x"], shares, color=c, alpha=0.2, lw=0.8)
            axes[2].plot(st["x"][k - 1:], smooth, color=c, lw=1.8,
                         label=src if src not in axes[2].get_legend_handles_labels()[1] else None)
            if src in st["configured"]:
                axes[2].plot(st["x"], st["configured"][src], color=c, lw=1, ls=":")
        losses = [(x, y) for x, y in zip(st["x"], st["loss"]) if y is not None]
        if losses:
            axes[3].plot(*zip(*losses), color="tab:red", lw=1)
    for ax in axes:
        for st in series:
            ax.axvline(st["start"], color="grey", ls="--", lw=0.8)
    for st in series:
        axes[0].annotate(st["stage"], (st["start"], 1), xycoords=("data", "axes fraction"), xytext=(3, -12),
                         textcoords="offset points", fontsize=8, color="grey")
    axes[0].set_ylabel("learning rate")
    axes[1].set_ylabel("batch (tokens)")
    axes[2].set_ylabel("source share\n(read; dotted: configured)")
    axes[2].set_ylim(-0.02, 1.02)
    if colours:
        axes[2].legend(loc="center left", fontsize=8)
    axes[3].set_ylabel("train loss")
    axes[3].set_xlabel("tokens, whole chain")
    axes[0].set_title(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".tmp-{out.name}")
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    os.replace(tmp, out)
    return out


# ------------------------------------------------------------------------------------------------ the command
def describe(stages: list[Planned]) -> str:
    width = max(len(s.name) for s in stages)
    lines = []
    for s in stages:
        what = {"done": "done: skipped", "new": "runs", "partial": "runs", "rerun": "runs again"}.get(s.state, s.state)
        lines.append(f"  {s.name.ljust(width)}  {s.spec.recipe:8s} {what}" + (f" ({s.reason})" if s.reason else ""))
    return "\n".join(lines)


def run_pipeline(pipeline_path: str | os.PathLike, variant: str | None = None,
                 root: str | os.PathLike | None = None, with_chat: bool = False, with_eval: bool = False,
                 rerun: str | None = None, dry_run: bool = False, launcher: list[str] | None = None) -> dict:
    """Plan, check, run what is not done, and write the summary; returns the summary document."""
    pipeline = load_pipeline(pipeline_path)
    variant = variant or pipeline.variant
    stages = assess(plan(pipeline, variant, root, with_chat, with_eval), rerun)
    root = Path(root).resolve() if root else REPO / "outputs" / pipeline.name
    print(f"pipeline {pipeline.name} ({pipeline.path}), variant {variant} -> {root}\n{describe(stages)}", flush=True)
    for flag_name, flag in OPTIONAL_FLAGS.items():
        enabled = with_chat if flag_name == "chat" else with_eval
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
