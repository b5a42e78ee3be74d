"""Screening documents during preparation: deduplication (``dedup.py``) and benchmark decontamination
(``decontaminate.py``), configured by the ``dedup:`` and ``decontaminate:`` keys of a data config.

The work is split in two so that the result does not depend on the number of worker processes:
``Screener.screen(texts)`` runs in the tokenizer workers (a document's dedup keys and benchmark n-gram hits; the
costly part), and ``SourceScreen.decide`` runs in the main process, in input order (the first of two duplicates is
the one kept), with the dedup index on disk and the per-task contamination tally that goes into the manifest.
Order of the checks: contaminated (when mode is drop), exact duplicate, near duplicate; a dropped document adds
nothing to the dedup index.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Optional

from .. import environment
from ..config import optional_step
from .dedup import DedupIndex, DedupSettings, Deduplicator
from .ngrams import ngram_hashes, normalize, word_hashes


@dataclass(frozen=True)
class DecontaminationSettings:
    """``decontaminate:`` in a data config (see docs/data.md)."""

    # what to check: each a suite (evaluation/suites/<name>.yaml: all its tasks) or an lm-eval task name, read as
    # EVAL_TASKS is (tinyllama.evaluation.suites.resolve_tasks)
    suites: tuple[str, ...] = ("commonsense",)
    ngram: int = 13  # words per n-gram (13: the GPT-3 paper's convention, also lm-eval's)
    mode: Literal["report", "drop"] = "report"  # report: count and keep; drop: leave the document out
    eval_data_dir: Optional[str] = None  # local copies of the tasks' data (default: the EVAL_DATA_DIR environment var)

    @classmethod
    def parse(cls, where: str, value: Any, errors: list[str]) -> "DecontaminationSettings | None":
        """``true`` (defaults), ``false``/absent (None: off), or a mapping of the fields; every problem appended to
        ``errors``. Keys and types are checked by the config parser, the names and the range here."""
        n = len(errors)
        if isinstance(value, dict) and isinstance(value.get("suites"), str):  # one name, or "a,b" as in EVAL_TASKS
            from ..evaluation.suites import split_names

            value = {**value, "suites": split_names(value["suites"])}
        values = optional_step(cls, value, where, errors)
        if values is None:
            return None
        s = cls(**values)
        if not s.suites or not all(s.suites):
            errors.append(f"'suites' in {where}: expected a list of evaluation suites or tasks, "
                          f"got {value['suites']!r}")
        else:
            from ..evaluation.suites import resolve_tasks

            try:
                resolve_tasks(s.suites)
            except (ValueError, OSError) as e:  # unknown names (all in one message), a broken suite file
                errors.append(f"'suites' in {where}: {e}")
        if s.ngram < 1:
            errors.append(f"'ngram' in {where}: expected an integer >= 1, got {s.ngram!r}")
        if len(errors) > n:
            return None
        return dataclasses.replace(s, eval_data_dir=s.eval_data_dir or environment.eval_data_dir())

    def to_dict(self) -> dict:
        d = asdict(self)
        d["suites"] = list(self.suites)
        return d


@dataclass(frozen=True)
class ScreenSpec:
    """What a worker needs to screen one source's documents (pickled once per worker, with the encoder spec)."""

    dedup: DedupSettings | None
    bands: tuple[int, int] | None
    decontaminate: DecontaminationSettings | None
    index: Any = None  # decontaminate.TestIndex


class Screener:
    """Worker side: per document, its dedup keys (or None) and its benchmark hits (a list of (task, item))."""

    def __init__(self, spec: ScreenSpec):
        self.spec = spec
        self.dedup = Deduplicator(spec.dedup, spec.bands) if spec.dedup is not None else None
        self.index = spec.index if spec.decontaminate is not None else None

    def screen(self, texts: list[str]) -> tuple[list | None, list | None]:
        """The text of each document is normalised and its words hashed once, for both steps."""
        keys = [] if self.dedup is not None else None
        hits = [] if self.index is not None else None
        need_hashes = hits is not None or self.dedup.settings.near  # (exact-only dedup hashes the text alone)
        for text in texts:
            normalized = normalize(text)
            hashes = word_hashes(normalized.split()) if need_hashes else None
            if keys is not None:
                keys.append(self.dedup.keys_from(normalized, hashes))
            if hits is not None:
                hits.append(self.index.find_ngrams(ngram_hashes(hashes, self.index.n)))
        return keys, hits


class SourceScreen:
    """Main-process side for one source: the dedup index and the contamination tally, decided in input order."""

    def __init__(self, spec: ScreenSpec, folder: Path, manifest: dict):
        self.spec = spec
        rows = manifest["stats"]["rows_read"]
        self.index = DedupIndex.open(folder, spec.dedup, rows) if spec.dedup is not None else None
        self.tally = None
        if spec.decontaminate is not None:
            from .decontaminate import ContaminationTally

            saved = manifest.get("contamination")
            self.tally = (ContaminationTally.from_dict(saved, spec.index) if saved else
                          ContaminationTally.for_index(spec.index, spec.decontaminate.mode,
                                                       list(spec.decontaminate.suites)))
            if saved and "documents_found" not in saved:  # half prepared by a version that did not list them
                self.tally.listed_from_row = rows + 1

    def decide(self, screened: tuple[list | None, list | None], rows: list[int],
               locate: Callable[[int], dict] | None = None) -> list[str | None]:
        """Per document of a batch (in order): None to keep it, or the reason it is dropped. ``rows``: the documents'
        0-based row numbers in the source; ``locate(k)``: where document ``k`` of the batch is
        (``SourceReader.locate``), recorded for the documents that hold test items."""
        keys, hits = screened
        n = len(rows)
        drop_contaminated = self.spec.decontaminate is not None and self.spec.decontaminate.mode == "drop"
        verdicts: list[str | None] = [("contaminated" if drop_contaminated and hits[i] else None) for i in range(n)]
        if self.index is not None:
            verdicts = self.index.screen(keys, rows, verdicts)
        if self.tally is not None:
            for i in range(n):
                if hits[i] and verdicts[i] in (None, "contaminated"):
                    self.tally.add(hits[i], locate(i) if locate is not None else {"row": rows[i] + 1})
        return verdicts

    def commit(self, manifest: dict, rows: int) -> None:
        """Before the manifest is written: the dedup index's additions durable, the tally into the manifest."""
        if self.index is not None:
            self.index.commit(rows)
        if self.tally is not None:
            manifest["contamination"] = self.tally.to_dict()

    def close(self) -> None:
        if self.index is not None:
            self.index.close()


def index_fingerprint(index) -> str:
    """sha256 of a ``decontaminate.TestIndex``: its n, tasks, item counts and n-gram arrays."""
    h = hashlib.sha256(repr((index.n, list(index.tasks), index.items.tolist(), index.too_short.tolist())).encode())
    for a in (index.hashes, index.starts, index.task_idx, index.item_idx):
        h.update(a.tobytes())
    return h.hexdigest()
