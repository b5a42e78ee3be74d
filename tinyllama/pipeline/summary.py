"""The summary: one row per stage (status, steps, tokens, cumulative tokens, final loss, time, folder), printed
as a table and written as ``pipeline-<variant>.json`` and ``.md``."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

from ..chat.methods import METHODS
from ..utils import atomic_write_text
from .plan import Plan, Planned
from .plot import plot_chain
from .state import read_marker, read_run_summary


def summary_rows(stages: list[Planned], ran: dict[str, str]) -> list[dict]:
    """One row per stage: what it is, what happened now, its steps, tokens (and the chain's cumulative tokens),
    final loss (or evaluation result), time spent on it over all runs, and its folder. ``ran``: the status of the
    stages run now (:func:`ran_status`)."""
    rows, cumulative = [], 0
    for s in stages:
        marker = read_marker(s.run_dir)
        row = {"stage": s.name, "recipe": s.spec.recipe, "status": ran.get(s.name) or _status_text(s),
               "note": s.reason if s.state == "unavailable" else None, "steps": None, "tokens": None,
               "cumulative_tokens": None, "final_loss": None, "result": None,
               "seconds": marker.get("seconds"), "output": str(s.run_dir)}
        if s.spec.recipe == "pretrain" or s.spec.recipe in METHODS:  # each recipe writes summary.json at the end
            summary = read_run_summary(s.run_dir)
            if summary:
                row.update(steps=summary.get("step"), final_loss=summary.get("final_loss"))
            if summary and s.spec.recipe in METHODS:
                row["result"] = _heldout_result(summary.get("metrics") or {})
            if summary and s.spec.recipe == "pretrain":
                row["tokens"] = summary.get("tokens")
                cumulative += summary.get("tokens") or 0
                row["cumulative_tokens"] = cumulative
        elif s.spec.recipe == "eval" and marker.get("finished"):
            row["result"] = _eval_result(s)
        rows.append(row)
    return rows


def _heldout_result(metrics: dict) -> str | None:
    """A preference method's held-out measure (tinyllama/chat/measure.py), start -> end; a distillation's held-out
    KL to its teacher."""
    kl = metrics.get("heldout/kl_teacher_student")
    if kl is not None:
        start = metrics.get("heldout/kl_teacher_student_start")
        return f"held-out KL(teacher || student) {f'{start:.3f} -> ' if start is not None else ''}{kl:.3f} per token"
    acc, margin = metrics.get("heldout/pair_accuracy"), metrics.get("heldout/logp_margin")
    if acc is None or margin is None:
        return None
    start = metrics.get("heldout/pair_accuracy_start"), metrics.get("heldout/logp_margin_start")
    was = f"{start[0]:.0%} -> " if start[0] is not None else ""
    moved = f" ({margin - start[1]:+.3f})" if start[1] is not None else ""
    return f"held-out pairs {was}{acc:.0%}, margin/token {margin:.3f}{moved}"


def ran_status(resumed: bool, seconds: float) -> str:
    """The status of a stage run now, as the table shows it: ``ran (42s)`` or ``resumed (3.5min)``."""
    return f"{'resumed' if resumed else 'ran'} ({_fmt_seconds(seconds)})"


def _status_text(s: Planned) -> str:
    return {"done": "skipped (done)", "unavailable": "not run (note)"}.get(s.state, s.state)


def _short(path: str) -> str:
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return path


def _eval_result(s: Planned) -> str | None:
    try:
        from ..evaluation import load_results, load_suite, pick_metric

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
    loss = f"{row['final_loss']:.4f}" if isinstance(row["final_loss"], float) else "-"
    loss = f"{row['result']}" + (f"; loss {loss}" if loss != "-" else "") if row["result"] else loss
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


def write_summary(p: Plan, rows: list[dict]) -> dict:
    """``<root>/pipeline-<variant>.json`` and ``.md`` (the table), and the chain's plot beside them (``.png``, when a
    pretraining stage has logged); returns the summary document."""
    pipeline, variant = p.pipeline, p.variant
    p.root.mkdir(parents=True, exist_ok=True)
    base = p.root / f"pipeline-{variant}"
    doc = {"pipeline": str(pipeline.path), "name": pipeline.name, "variant": variant,
           "written": datetime.datetime.now().isoformat(timespec="seconds"), "stages": rows,
           "total_tokens": sum(r["tokens"] or 0 for r in rows)}
    atomic_write_text(base.with_suffix(".json"), json.dumps(doc, indent=2))
    md = (f"# Pipeline {pipeline.name}, variant {variant}\n\nFrom `{pipeline.path}`; "
          f"{_fmt_tokens(doc['total_tokens'])} pretraining tokens in all.\n\n" + format_table(rows, markdown=True)
          + f"\n![learning rate, batch size, source shares and loss over the chain]({base.name}.png)\n")
    atomic_write_text(base.with_suffix(".md"), md)
    runs = [(s.name, s.run_dir) for s in p if s.spec.recipe == "pretrain" and (s.run_dir / "logs").is_dir()]
    if runs:
        doc["plot"] = str(plot_chain(runs, base.with_suffix(".png"), f"{pipeline.name} ({variant})"))
    return doc
