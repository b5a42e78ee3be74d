"""Which evaluation items a model's training data held: read back from the ``"contamination"`` sections that data
preparation writes into each source's ``manifest.json`` (``tinyllama/data/decontaminate.py``), for the report's
marks (``scoreboard.py``).

The training data of a model is found in one of two ways:

- given: one or more prepared data folders (``evaluation/report.py --data_dir DIR``: every
  ``DIR/<source>/manifest.json``);
- automatically: the ``training_metadata.json`` that the pretraining loop writes into each export records the
  data folder and the mixture; sources with a weight above zero count, and a model initialised from an earlier
  stage's export or checkpoint (``init_from``) adds that stage's training data, and so on back.

Per task, the contaminated items are the union over the sources (item indices, so an item found in two sources
counts once); a group task (mmlu) sums its leaf tasks. Sources prepared in ``drop`` mode did not train on the
documents they found, so their items are not counted as seen (they are listed apart). A source prepared without
decontamination, or against other suites, makes the task "not checked", never clean.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Iterable

from .layout import TRAINING_METADATA_FILE

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
SECTION = "contamination"


@dataclasses.dataclass
class TaskCount:
    """One task's contamination in a model's training data (``seen`` is what the score rests on)."""

    items: int
    seen: int  # items found in training documents that were trained on (mode report)
    dropped: int  # items found only in documents left out (mode drop)
    too_short: int  # items with fewer than n words: not checkable
    checked: bool  # every source of the training data was checked against this task


@dataclasses.dataclass
class TrainingData:
    """The prepared sources a model was trained on, and what could not be checked."""

    sources: list[Path] = dataclasses.field(default_factory=list)  # source folders (with manifest.json)
    unknown: list[str] = dataclasses.field(default_factory=list)  # training data that cannot be checked, and why
    _sections: dict = dataclasses.field(default_factory=dict, repr=False)  # source -> its contamination section

    def add_source(self, folder: Path) -> None:
        folder = Path(folder)
        if folder in self.sources:
            return
        manifest = folder / MANIFEST
        if not manifest.is_file():
            self.unknown.append(f"{folder}: no {MANIFEST} (not a prepared source)")
            return
        self.sources.append(folder)
        section = json.loads(manifest.read_text(encoding="utf-8")).get(SECTION)
        if section:
            self._sections[folder] = section

    def known_tasks(self) -> set[str]:
        return {t for sec in self._sections.values() for t in sec["tasks"]}

    def ngram_sizes(self) -> list[int]:
        """The n of the n-gram checks the sources were prepared with (the report's footnotes name it)."""
        return sorted({sec["ngram"] for sec in self._sections.values()})

    def unchecked_sources(self) -> list[Path]:
        return [s for s in self.sources if s not in self._sections]

    def describe(self) -> str:
        parts = []
        for s in self.sources:
            sec = self._sections.get(s)
            parts.append(f"{s} ({sec['ngram']}-grams, {sec['mode']}, suites {', '.join(sec['suites'])})" if sec
                         else f"{s} (not checked: prepared without decontamination)")
        return "; ".join(parts + [f"not checked: {u}" for u in self.unknown])

    def count(self, leaves: Iterable[str]) -> TaskCount | None:
        """The union over sources of the items found, summed over ``leaves`` (the lm-eval tasks of one column);
        None when no source was checked against them."""
        leaves = list(leaves)
        items = seen = dropped = too_short = 0
        checked = not self.unknown and not self.unchecked_sources() and bool(self.sources)
        any_data = False
        for leaf in leaves:
            found, lost, n, short = set(), set(), None, 0
            for sec in self._sections.values():
                entry = sec["tasks"].get(leaf)
                if entry is None:
                    checked = False
                    continue
                any_data = True
                n, short = entry["items"], max(short, entry["too_short"])
                (found if sec["mode"] == "report" else lost).update(entry["contaminated"])
            if n is None:
                checked = False
                continue
            items += n
            too_short += short
            seen += len(found)
            dropped += len(lost - found)
        if not any_data:
            return TaskCount(items=0, seen=0, dropped=0, too_short=0, checked=False) if self.sources or self.unknown \
                else None
        return TaskCount(items=items, seen=seen, dropped=dropped, too_short=too_short, checked=checked)


def _positive(weight) -> bool:
    if isinstance(weight, dict):
        return any(isinstance(weight.get(k), (int, float)) and weight.get(k) > 0 for k in ("weight", "start_weight"))
    return isinstance(weight, (int, float)) and weight > 0


def from_data_dirs(paths: Iterable[str | os.PathLike]) -> TrainingData:
    """Every source (``<DIR>/<source>/manifest.json``) of each prepared data folder, or a source folder itself."""
    data = TrainingData()
    for p in map(Path, paths):
        if (p / MANIFEST).is_file():
            data.add_source(p)
            continue
        found = sorted(m.parent for m in p.glob(f"*/{MANIFEST}")) if p.is_dir() else []
        if not found:
            raise FileNotFoundError(f"--data_dir {p}: no prepared source in it (no {p}/*/{MANIFEST})")
        for s in found:
            data.add_source(s)
    return data


def _metadata_of(model: Path) -> dict | None:
    """The training metadata of a model folder, or of a checkpoint folder (through its run's exports)."""
    model = Path(model)
    meta = model / TRAINING_METADATA_FILE
    if meta.is_file():
        data = json.loads(meta.read_text(encoding="utf-8"))
        if data.get("data_dir") is not None or not data.get("source_checkpoint"):
            return data
        model = Path(data["source_checkpoint"])  # exported offline from a checkpoint: ask its run's other exports
    if model.parent.name == "checkpoints":
        exports = model.parent.parent / "export"
        for candidate in [exports / model.name] + sorted(exports.glob("*"), reverse=True):
            f = candidate / TRAINING_METADATA_FILE
            if f.is_file():
                data = json.loads(f.read_text(encoding="utf-8"))
                if data.get("data_dir") is not None:
                    return data
    return None


def from_training_metadata(model: str | os.PathLike) -> TrainingData | None:
    """The training data recorded in a model folder's ``training_metadata.json`` (with every earlier stage's, via
    ``init_from``); None when the model records none (a Hub model, an export written before the data folder was
    recorded): nothing is then claimed either way."""
    model = Path(model)
    first = _metadata_of(model) if model.is_dir() else None
    if first is None or first.get("data_dir") is None:
        return None
    data, meta, seen = TrainingData(), first, set()
    while meta is not None:
        data_dir = Path(meta["data_dir"])
        mixture = meta.get("mixture") or {}
        if not data_dir.is_dir():
            data.unknown.append(f"training data folder {data_dir} not found")
        else:
            for name, weight in mixture.items():
                if _positive(weight):
                    data.add_source(data_dir / name)
        init_from = meta.get("init_from")
        if not init_from or init_from in seen:
            break
        seen.add(init_from)
        meta = _metadata_of(Path(init_from)) if Path(init_from).is_dir() else None
        if meta is None or meta.get("data_dir") is None:
            data.unknown.append(f"initialised from {init_from}, whose training data is not recorded")
            break
    return data


def leaf_task_names(task: str, known: Iterable[str]) -> list[str]:
    """The lm-eval tasks of a report column: the task itself when the manifests know it, else its leaf tasks
    (a group such as mmlu; lm-eval's task index is built only then)."""
    known = set(known)
    if task in known or not known:
        return [task]
    from .offline import leaf_tasks
    from .suites import lm_eval_task_index

    try:
        return leaf_tasks(task, lm_eval_task_index())
    except ValueError:
        return [task]
