"""This project's evaluation results beside TinyLlama's published scores: the Markdown tables and the plots of
``evaluation/report.py`` (:func:`build_report`).

The results are folders written by ``evaluation/run_lm_eval.sh`` (``<out>/<model-name>/<suite>/``, with
``run_info.json``), any folder above them (searched recursively), plain lm-eval output folders or ``results_*.json``
files, and perplexity folders (``python -m tinyllama.evaluation perplexity``); each is read into a
:class:`ResultSet`.

For each suite: one row per model (the suite's metric per task, in %, and the average over the suite's tasks),
then TinyLlama's reference rows for the same tasks and metric (``evaluation/reference/tinyllama.yaml``, with its
source). With two or more results that know their tokens seen (``training_metadata.json`` in the model folder),
``<out>/<suite>.png`` plots each task's score over tokens seen, with TinyLlama's checkpoints for scale.

Contamination: a score whose task had evaluation items in the model's training data is marked ``(!12 of 10042)``
(items found by data preparation's decontamination, ``tinyllama/data/decontaminate.py``), ``(?)`` when not all of
the training data was checked against the task; footnotes name the sources. The training data comes from the
prepared data folders given (every row), else from each model folder's ``training_metadata.json`` (its data folder
and mixture; ``contamination.py``); a model that records neither gets no mark.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from ..utils import atomic_write_text
from .contamination import TaskCount, TrainingData, from_data_dirs, from_training_metadata, leaf_task_names
from .layout import PERPLEXITY_RESULTS_FILE, RUN_INFO_FILE
from .models import read_training_metadata
from .results import load_results, pick_metric
from .suites import available_suites, load_reference, load_suite, parse_tokens


@dataclasses.dataclass
class ResultSet:
    label: str
    suite: str
    path: Path
    run: str | None = None
    tokens_seen: int | None = None
    step: int | None = None
    limit: float | None = None
    scores: dict = dataclasses.field(default_factory=dict)  # task -> score in % (or perplexity numbers)
    metrics: dict = dataclasses.field(default_factory=dict)  # task -> the metric key shown
    labels: dict = dataclasses.field(default_factory=dict)  # task -> column header
    model: str | None = None  # the model folder (or Hub id) evaluated
    chat_template: bool = False  # scored through the model's chat template (run_info.json; lm-eval's config)
    training: TrainingData | None = None  # its training data, when known (for the contamination marks)


# ------------------------------------------------------------------------------------------------ reading
def fmt_tokens(n) -> str:
    if n is None:
        return "–"
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(int(n))


def find_result_folders(paths) -> list[Path]:
    """Folders holding one result set each: with a run_info.json, or lm-eval's results_*.json."""
    found: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"results not found: {p}")
        if p.is_file():
            candidates = [p.parent]
        else:
            candidates = sorted({f.parent for f in p.rglob(RUN_INFO_FILE)} | {f.parent for f in p.rglob("results_*.json")})
            candidates = [c for c in candidates if "offline_tasks" not in c.parts]
        for c in candidates:
            if c not in found:
                found.append(c)
    if not found:
        raise FileNotFoundError(f"no results (run_info.json or results_*.json) under {', '.join(map(str, paths))}")
    return found


def _guess_suite(task_names) -> str | None:
    best, overlap = None, 0
    for name in available_suites():
        n = len(set(load_suite(name).task_names) & set(task_names))
        if n > overlap:
            best, overlap = name, n
    return best


def load_result_set(folder: Path) -> ResultSet:
    info_file = folder / RUN_INFO_FILE
    info = json.loads(info_file.read_text(encoding="utf-8")) if info_file.is_file() else {}
    if info.get("suite") == "perplexity":
        scores = json.loads((folder / PERPLEXITY_RESULTS_FILE).read_text(encoding="utf-8"))
        return ResultSet(label=info.get("label") or folder.parent.name, suite="perplexity", path=folder,
                         run=info.get("run"), tokens_seen=info.get("tokens_seen"), step=info.get("step"),
                         scores=scores, model=info.get("model"))
    results = load_results(folder)
    if not results:
        raise FileNotFoundError(f"{folder}: no results_*.json (did the evaluation finish?)")
    if info:
        tasks = info["tasks"]
        suite = info["suite"]
        label, run, tokens, step, limit = info.get("label"), info.get("run"), info.get("tokens_seen"), \
            info.get("step"), info.get("limit")
        model = info.get("model")
        chat_template = bool(info.get("chat_template"))
    else:  # a plain lm-eval output folder
        suite = _guess_suite(results) or "other"
        tasks = ([dataclasses.asdict(t) for t in load_suite(suite).tasks] if suite != "other"
                 else [{"task": t, "label": t, "metric": None} for t in results])
        first = json.loads(sorted(folder.glob("results_*.json"))[-1].read_text(encoding="utf-8"))
        model = str(first.get("model_name") or folder.name)
        meta = read_training_metadata(model) if Path(model).is_dir() else {"tokens_seen": None, "step": None}
        label, run, tokens, step = Path(model).name if Path(model).is_dir() else model, None, \
            meta["tokens_seen"], meta["step"]
        limit = (first.get("config") or {}).get("limit")
        chat_template = bool(first.get("chat_template"))  # lm-eval records the template it applied, if any
    for f in folder.glob("results_*.json"):  # --limit may also have come as an extra lm-eval argument
        limit = limit or (json.loads(f.read_text(encoding="utf-8")).get("config") or {}).get("limit")
    rs = ResultSet(label=label or folder.parent.name, suite=suite, path=folder, run=run, tokens_seen=tokens,
                   step=step, limit=limit, model=model, chat_template=chat_template)
    for t in tasks:
        rs.labels[t["task"]] = t.get("label") or t["task"]
        if t["task"] in results and (picked := pick_metric(results[t["task"]], t.get("metric"))):
            rs.metrics[t["task"]], value = picked
            rs.scores[t["task"]] = 100.0 * value
    return rs


# ------------------------------------------------------------------------------------------------ tables
def _avg(values) -> float | None:
    return sum(values) / len(values) if values and all(v is not None for v in values) else None


def _cell(v, digits=2) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def contamination_counts(rs: ResultSet, columns) -> dict[str, TaskCount]:
    """``{task: TaskCount}`` for the columns of a row whose training data is known (else empty)."""
    if rs.training is None:
        return {}
    known = rs.training.known_tasks()
    if not known:  # nothing of this training data was checked: one footnote says so, rather than a "?" per cell
        return {}
    out = {}
    for t in columns:
        count = rs.training.count(leaf_task_names(t, known))
        if count is not None:
            out[t] = count
    return out


def _mark(count: TaskCount | None) -> str:
    if count is None:
        return ""
    if count.seen:
        return f" (!{count.seen} of {count.items}{'' if count.checked else ', ?'})"
    return "" if count.checked else " (?)"


def contamination_notes(rows: list[ResultSet], columns, labels) -> list[str]:
    """The footnotes under a suite table: what the marks mean, which data each row was checked against."""
    notes, counted = [], [(rs, contamination_counts(rs, columns)) for rs in rows]
    if not any(rs.training is not None for rs in rows):
        return notes
    ngram = sorted({n for rs in rows if rs.training for n in rs.training.ngram_sizes()})
    n = "/".join(map(str, ngram)) or "13"
    if any(c.seen for _, cs in counted for c in cs.values()):
        notes.append(f"(!k of N) k of the task's N evaluation items occur in this model's training data (any shared "
                     f"{n}-word sequence, after lower-casing and removing punctuation): the score rests partly on "
                     f"items seen in training.")
    if any(not c.checked for _, cs in counted for c in cs.values()):
        notes.append("(?) not checked for contamination against all of this model's training data (see the data "
                     "below): not known to be clean; beside a count, the count is a lower bound.")
    for rs, cs in counted:
        if rs.training is None:
            if any(other.training is not None for other in rows):
                notes.append(f"{rs.label}: training data unknown (no contamination check).")
            continue
        notes.append(f"{rs.label}: trained on {rs.training.describe() or 'no prepared source found'}.")
        short = [f"{labels.get(t, t)} {c.too_short}" for t, c in cs.items() if c.too_short]
        if short:
            notes.append(f"{rs.label}: items too short to check (fewer than {n} words): {', '.join(short)}.")
        dropped = [f"{labels.get(t, t)} {c.dropped}" for t, c in cs.items() if c.dropped]
        if dropped:
            notes.append(f"{rs.label}: items found in documents left out of training (mode drop; not marked): "
                         f"{', '.join(dropped)}.")
        unchecked = [labels.get(t, t) for t, c in cs.items() if not c.checked]
        if unchecked and rs.training.sources and not rs.training.unknown and not rs.training.unchecked_sources():
            notes.append(f"{rs.label}: not checked against {', '.join(unchecked)} (not in the suites the data was "
                         f"checked against).")
    return notes


def _sort_key(rs: ResultSet):
    return (rs.run or "", rs.tokens_seen if rs.tokens_seen is not None else (rs.step or -1), rs.label)


def suite_table(suite: str, results: list[ResultSet], reference: dict) -> str:
    rows = sorted(results, key=_sort_key)
    try:
        order = load_suite(suite).task_names
    except (ValueError, FileNotFoundError):
        order = []
    present = {t for rs in rows for t in rs.scores}
    columns = [t for t in order if t in present] + sorted(present - set(order))
    labels = {t: lbl for rs in rows for t, lbl in rs.labels.items()}
    metrics = {t: m for rs in reversed(rows) for t, m in rs.metrics.items()}
    ref = reference.get(suite)
    lines = [f"### {suite}", ""]
    try:
        if load_suite(suite).description:
            lines += [load_suite(suite).description, ""]
    except (ValueError, FileNotFoundError):
        pass
    lines += ["Metric: " + ", ".join(f"{labels.get(t, t)} {metrics.get(t, '?')}" for t in columns)
              + ". Scores in %; avg over the columns shown.", ""]
    lines.append("| model | tokens | " + " | ".join(labels.get(t, t) for t in columns) + " | avg |")
    lines.append("|---|---|" + "---|" * len(columns) + "---|")
    limited = chatted = False
    for rs in rows:
        values = [rs.scores.get(t) for t in columns]
        name = rs.label + ("†" if rs.limit else "") + (" (chat)" if rs.chat_template else "")
        limited |= bool(rs.limit)
        chatted |= rs.chat_template
        counts = contamination_counts(rs, columns)
        lines.append(f"| {name} | {fmt_tokens(rs.tokens_seen)} | "
                     + " | ".join(_cell(v) + (_mark(counts.get(t)) if v is not None else "")
                                  for t, v in zip(columns, values))
                     + f" | {_cell(_avg(values))} |")
    if ref:
        # A reference number is shown only under the same metric (never acc beside acc_norm).
        same = {t for t in columns if ref["metrics"].get(t) == metrics.get(t, "").split(",")[0]
                or ref["metrics"].get(t) == metrics.get(t)}
        shown = [r for r in ref["rows"] if any(t in r["scores"] for t in same)]
        for r in shown:
            values = [r["scores"].get(t) if t in same else None for t in columns]
            # the published average where the columns are exactly the published ones, else recomputed
            avg = r["avg"] if r.get("avg") is not None and set(columns) == set(ref["metrics"]) == same \
                else _avg(values)
            lines.append(f"| *{r['model']}* | {fmt_tokens(parse_tokens(r.get('tokens')))} | "
                         + " | ".join(_cell(v) for v in values) + f" | {_cell(avg)} |")
        if shown:
            lines += ["", f"*Italic rows: TinyLlama's published scores ({ref['source']}).*"]
    if limited:
        lines += ["", "† evaluated on a subset (lm-eval --limit): not comparable with full-set scores."]
    if chatted:
        lines += ["", "(chat): prompts built with the model's chat template, few-shot examples as turns (lm-eval "
                      "--apply_chat_template --fewshot_as_multiturn); the other rows on raw prompts."]
    notes = contamination_notes(rows, columns, labels)
    if notes:
        lines += ["", "Contamination (evaluation items in the training data):", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines)


def perplexity_table(results: list[ResultSet]) -> str:
    lines = ["### held-out perplexity", "",
             "Bits per byte = total NLL / ln 2 / UTF-8 bytes: comparable across tokenizers (perplexity is not).", "",
             "| model | tokens | data | perplexity | bits/byte | tokens scored |", "|---|---|---|---|---|---|"]
    for rs in sorted(results, key=_sort_key):
        s = rs.scores
        lines.append(f"| {rs.label} | {fmt_tokens(rs.tokens_seen)} | {s.get('data', '?')} | "
                     f"{_cell(s.get('perplexity'))} | {_cell(s.get('bits_per_byte'), 4)} | {s.get('num_tokens', '–')} |")
    return "\n".join(lines)


def render_markdown(results: list[ResultSet], reference: dict) -> str:
    suites = []
    for rs in results:
        if rs.suite not in suites:
            suites.append(rs.suite)
    order = {name: i for i, name in enumerate(["commonsense", "instruct", "math_code", "chinese"])}
    parts = ["## Evaluation results", ""]
    for suite in sorted(suites, key=lambda s: (s == "perplexity", order.get(s, 99), s)):
        group = [rs for rs in results if rs.suite == suite]
        parts += [perplexity_table(group) if suite == "perplexity" else suite_table(suite, group, reference), ""]
    return "\n".join(parts)


# ------------------------------------------------------------------------------------------------ plots
def plot_suite(suite: str, results: list[ResultSet], reference: dict, out: Path) -> Path | None:
    """``out/<suite>.png``: each task (and the average) over tokens seen; None with fewer than 2 points."""
    points = [rs for rs in results if rs.tokens_seen]
    if len(points) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    perplexity = suite == "perplexity"
    if perplexity:
        columns = ["bits_per_byte", "perplexity"]
    else:
        try:
            order = load_suite(suite).task_names
        except (ValueError, FileNotFoundError):
            order = sorted({t for rs in points for t in rs.scores})
        columns = [t for t in order if any(t in rs.scores for rs in points)] + ["avg"]
    labels = {t: lbl for rs in points for t, lbl in rs.labels.items()}
    ncols = min(4, len(columns))
    nrows = math.ceil(len(columns) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4 * ncols, 3.2 * nrows), squeeze=False)
    ref = None if perplexity else reference.get(suite)
    runs: dict[str, list[ResultSet]] = {}
    for rs in sorted(points, key=_sort_key):
        runs.setdefault(rs.run or "this project", []).append(rs)

    def value(scores: dict, col: str, cols: list[str]):
        if col != "avg":
            return scores.get(col)
        return _avg([scores.get(t) for t in cols if t != "avg"])

    for ax, col in zip(axes.flat, columns):
        for run, series in runs.items():
            xs = [rs.tokens_seen for rs in series]
            ys = [value(rs.scores, col, columns) for rs in series]
            ax.plot(xs, [float("nan") if y is None else y for y in ys], marker="o", label=run)
        if ref:
            by_series: dict[str, list] = {}
            for r in ref["rows"]:
                if r.get("series") and r.get("tokens"):
                    by_series.setdefault(r["series"], []).append(r)
            for name, rows in by_series.items():
                ys = [value(r["scores"], col, columns) for r in rows]
                if any(y is not None for y in ys):
                    ax.plot([parse_tokens(r["tokens"]) for r in rows], [float("nan") if y is None else y for y in ys],
                            linestyle="--", marker=".", color="grey", label=f"{name} (published)")
        ax.set_xscale("log")
        ax.set_title(labels.get(col, "average" if col == "avg" else col))
        ax.set_xlabel("tokens seen")
        ax.set_ylabel(col if perplexity else "score (%)")
        ax.grid(True, alpha=0.3)
    for ax in list(axes.flat)[len(columns):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"{suite} over tokens seen")
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{suite}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def attach_training_data(results: list[ResultSet], data_dirs=None) -> None:
    """Each row's training data: the prepared data folders given, else what its model folder records."""
    given = from_data_dirs(data_dirs) if data_dirs else None
    for rs in results:
        if given is not None:
            rs.training = given
        elif rs.model and Path(rs.model).is_dir():
            rs.training = from_training_metadata(rs.model)


def build_report(paths, out: Path | None, data_dirs=None) -> tuple[str, list[Path]]:
    """The report of the results under ``paths``: (its Markdown, the plots written). With ``out``, writes
    ``out/report.md`` and ``out/<suite>.png``; ``data_dirs``: the prepared data folders the models were trained on,
    for the contamination marks (default: what each model folder records)."""
    reference = load_reference()
    results = [load_result_set(f) for f in find_result_folders(paths)]
    attach_training_data(results, data_dirs)
    markdown = render_markdown(results, reference)
    plots = []
    if out is not None:
        for suite in dict.fromkeys(rs.suite for rs in results):
            p = plot_suite(suite, [rs for rs in results if rs.suite == suite], reference, out)
            if p is not None:
                plots.append(p)
                markdown += f"\n![{suite} over tokens seen]({p.name})\n"
        atomic_write_text(out / "report.md", markdown)
    return markdown, plots
