"""The preparation report: per source, the rows read and what became of them (kept, filtered, bad row, duplicate,
near duplicate, contaminated), the tokens kept, and the benchmark items found in the documents.

Written from the manifests alone, of every source of the config that has one (so preparing sources one at a time with
``--only`` ends with a report of all), to ``<output_dir>/preparation_report.md`` with a bar chart
``preparation_report.png`` beside it, and printed; a rerun with nothing to do leaves an existing report as it is.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..utils import atomic_write_text
from .readers import describe_location
from .shards import read_manifest

log = logging.getLogger(__name__)
REPORT = "preparation_report.md"
CHART = "preparation_report.png"
REPORT_DOCUMENTS = 20  # per source, the documents holding test items shown (the manifest lists more)
OUTCOMES = ("kept", "filtered", "bad row", "duplicate", "near duplicate", "contaminated")
_COLORS = {"kept": "#4c9a2a", "filtered": "#9e9e9e", "bad row": "#d62728", "duplicate": "#1f77b4",
           "near duplicate": "#7fb3e0", "contaminated": "#ff7f0e"}


def outcome(reason: str) -> str:
    """The report's category of a manifest skip reason."""
    if reason in ("duplicate", "near duplicate", "contaminated"):
        return reason
    if reason.startswith("filtered") or reason.startswith("missing filter field"):
        return "filtered"
    return "bad row"  # blank line, invalid UTF-8 / JSON, missing or non-string text, empty text


def source_counts(manifest: dict) -> dict:
    """Rows by outcome, and tokens kept, of one source's manifest."""
    stats = manifest["stats"]
    counts = {k: 0 for k in OUTCOMES}
    counts["kept"] = sum(stats["documents"].values())
    for reason, n in stats["skipped"].items():
        counts[outcome(reason)] += n
    return {"rows": stats["rows_read"], **counts, "tokens": sum(stats["tokens"].values()),
            "complete": bool(manifest.get("complete"))}


def _pct(n: int, total: int) -> str:
    return f"{n:,} ({100 * n / total:.1f}%)" if total else f"{n:,}"


def render(manifests: dict[str, dict]) -> str:
    lines = ["# Data preparation report", "",
             "| source | rows read | " + " | ".join(OUTCOMES) + " | tokens kept |",
             "|---|---:|" + "---:|" * len(OUTCOMES) + "---:|"]
    for name, m in manifests.items():
        c = source_counts(m)
        flag = "" if c["complete"] else " (unfinished)"
        lines.append(f"| {name}{flag} | {c['rows']:,} | " + " | ".join(_pct(c[k], c["rows"]) for k in OUTCOMES)
                     + f" | {c['tokens']:,} |")
    lines += ["", "Kept documents include the validation split. Filtered: a `filters:` rule; bad row: unreadable, "
              "blank or without text; duplicate / near duplicate: `dedup:`; contaminated: dropped by "
              "`decontaminate: {mode: drop}`."]
    for name, m in manifests.items():
        lines += _bad_row_lines(name, m)
    for name, m in manifests.items():
        lines += _contamination_lines(name, m)
    return "\n".join(lines) + "\n"


def _bad_row_lines(name: str, manifest: dict) -> list[str]:
    """The bad rows the manifest names (the first ``prepare.BAD_ROW_SAMPLE``), where they are and why."""
    sample = manifest["stats"].get("bad_rows")
    if not sample:
        return []
    total = source_counts(manifest)["bad row"]
    out = ["", f"## {name}: bad rows" + (f" (the first {len(sample)} of {total:,})" if total > len(sample) else ""),
           ""]
    out += [f"- {describe_location(b)}: {b['reason']}" for b in sample]
    return out


def _contamination_lines(name: str, manifest: dict) -> list[str]:
    section = manifest.get("contamination")
    settings = manifest.get("settings", {})
    if section is None:
        return [] if "decontaminate" not in settings else ["", f"## {name}: decontamination not recorded yet"]
    mode = section.get("mode", "report")
    what = "kept in the data (mode: report)" if mode == "report" else "found and dropped (mode: drop)"
    out = ["", f"## {name}: benchmark test items found in the documents ({section.get('ngram')}-gram overlap, "
               f"{what})", "", f"Documents with any benchmark n-gram: {section.get('documents', 0):,}", "",
           "| task | test items | contaminated | too short to check |", "|---|---:|---:|---:|"]
    for task, t in sorted(section.get("tasks", {}).items()):
        out.append(f"| {task} | {t['items']:,} | {len(t['contaminated']):,} | {t.get('too_short', 0):,} |")
    return out + _documents_found_lines(section)


def _documents_found_lines(section: dict) -> list[str]:
    """The documents holding test items, where they are and which items (lm-eval ``doc_id``s): the first
    ``REPORT_DOCUMENTS`` of those the manifest lists, and how many more there are."""
    total = section.get("documents", 0)
    if not total:
        return []
    if "documents_found" not in section:
        return ["", "The documents are not listed (prepared by an earlier version; prepare again with --overwrite "
                    "true to list them)."]
    found = section["documents_found"]
    out = ["", "| document | test items it holds |", "|---|---|"]
    out += [f"| {describe_location(d)} | " + "; ".join(f"{t} {', '.join(map(str, i))}" for t, i in d["items"].items())
            + " |" for d in found[:REPORT_DOCUMENTS]]
    more = total - min(len(found), REPORT_DOCUMENTS)
    if more:
        listed = (f"the manifest's contamination.documents_found lists the first {len(found):,}"
                  if len(found) > REPORT_DOCUMENTS else "not listed in the manifest either")
        out += ["", f"... and {more:,} more ({listed}; all {total:,} are counted)."]
    if section.get("listed_from_row"):
        out += ["", f"Documents before row {section['listed_from_row']:,} are counted but not listed: that part of "
                    f"the source was prepared by an earlier version."]
    return out


def chart(manifests: dict[str, dict], path: Path) -> None:
    """Horizontal stacked bars: each source's rows by outcome (share of rows read)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(manifests)
    counts = [source_counts(manifests[n]) for n in names]
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.5 * len(names)))
    left = [0.0] * len(names)
    for k in OUTCOMES:
        share = [100 * c[k] / c["rows"] if c["rows"] else 0 for c in counts]
        ax.barh(names, share, left=left, color=_COLORS[k], label=k)
        left = [a + b for a, b in zip(left, share)]
    ax.set_xlim(0, 100)
    ax.set_xlabel("% of rows read")
    ax.invert_yaxis()
    ax.legend(ncol=3, fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    fig.tight_layout()
    tmp = path.with_name(".tmp-" + path.name)
    fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    tmp.replace(path)


def write_report(out_dir: str | Path, sources: list[str]) -> Path | None:
    """Write (and log) the report of the named sources that have a manifest in ``out_dir``."""
    out_dir = Path(out_dir)
    manifests = {n: m for n in sources if (m := read_manifest(out_dir / n)) is not None}
    if not manifests:
        return None
    text = render(manifests)
    path = out_dir / REPORT
    atomic_write_text(path, text)
    chart(manifests, out_dir / CHART)
    log.info("preparation report (%s):\n%s", path, text)
    return path
