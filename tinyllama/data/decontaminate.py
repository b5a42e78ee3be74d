"""Benchmark decontamination: which evaluation items occur in a training document.

Three parts, used by ``prepare.py``:

- :func:`load_test_items`: the text of every item lm-eval scores, for each task named (a suite of
  ``evaluation/suites/*.yaml`` for all its tasks, or a task name: ``evaluation.suites.resolve_tasks``, the reading
  ``EVAL_TASKS`` gets), read through lm-eval's own task definitions, from the Hugging Face cache or
  from local files in the ``EVAL_DATA_DIR`` layout that ``evaluation/run_lm_eval.sh`` reads;
- :class:`TestIndex`: the items' word n-grams (``ngrams.py``: normalised, uint64 hashes) as sorted numpy arrays,
  built once, pickled once to each worker process; :meth:`TestIndex.find` gives the (task, item) pairs that a
  training document shares an n-gram with;
- :class:`ContaminationTally`: hits summed over documents into the ``"contamination"`` section of a source's
  ``manifest.json`` (``evaluation/report.py`` reads it back to mark the scores that rest on seen items).

The rule is GPT-3's (Brown et al. 2020, appendix C) and lm-eval's (``lm_eval/decontamination``): an item is
contaminated when any one of its 13-grams (after normalisation) occurs in a training document, with one exception:
an n-gram that several items of one task share (a templated stem: "Which of the following ... is the best ...") is
no evidence for any one of them, so an item is found only on an n-gram of its own (one that no other item of its
task has). An item all of whose n-grams other items of its task share (a duplicate, or an item inside another) is
found only by a document that holds every one of its n-grams. An item with fewer than n words has no n-gram and
cannot be checked: it is counted as ``too_short``, never as clean.

No torch or transformers here, and lm-eval is imported only inside :func:`load_test_items`: worker processes import
this module for :class:`TestIndex` alone.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .ngrams import normalize, text_ngrams

log = logging.getLogger(__name__)

DEFAULT_NGRAM = 13  # GPT-3's and lm-eval's n
MODES = ("report", "drop")
DOCUMENTS_LISTED = 1000  # per source, the documents holding test items named in the manifest (all are counted)


# ------------------------------------------------------------------------------------------------ test items
def _first(value):
    return value[0] if isinstance(value, (list, tuple)) and value else value


def item_text(task, doc) -> str:
    """The text of one evaluation item: the whole example as lm-eval scores it (the prompt and the gold answer),
    plus lm-eval's decontamination query when that holds words the example does not.

    Why the whole example: GPT-3 checked every test example in full (context and completion), and a training
    document that holds the question with its answer is exactly the leak that inflates a score. lm-eval's own
    ``doc_to_decontamination_query`` is often a single field (PIQA's goal, OpenBookQA's question stem), mostly
    shorter than 13 words, so alone it would leave most items of those tasks unchecked. It is still added when it
    is not part of the example (WinoGrande's sentence with its blank: the example fills the blank in), so that
    every n-gram lm-eval would check is checked too. Only the gold choice of a multiple-choice item is included
    (distractors are not what the item teaches). Template words ("Question:", "Answer:") are part of the prompt:
    an n-gram spanning them matches only text in that format, and n-grams inside the content match anywhere.
    """
    ctx = task.doc_to_text(doc)
    target = task.doc_to_target(doc)
    delim = getattr(task.config, "target_delimiter", " ") or " "
    output_type = getattr(task, "OUTPUT_TYPE", None) or getattr(task.config, "output_type", None)
    if output_type == "loglikelihood_rolling":
        whole = str(_first(target))
    elif output_type == "multiple_choice":
        choices = task.doc_to_choice(doc)
        if isinstance(ctx, int):  # "multiple input" (WinoGrande): the choices are contexts, the target continues
            whole = f"{choices[ctx]}{delim}{_first(target)}"
        else:
            gold = _first(target)
            if isinstance(gold, int) and 0 <= gold < len(choices):
                gold = choices[gold]
            whole = f"{ctx}{delim}{gold}"
    else:  # generate_until, loglikelihood: the prompt and the reference answer
        whole = f"{ctx}{delim}{_first(target)}"
    query = _decontamination_query(task, doc)
    if query and normalize(str(query)) not in normalize(whole):
        whole += "\n\n" + str(query)
    return whole


def _decontamination_query(task, doc) -> str | None:
    """lm-eval's ``doc_to_decontamination_query`` of a task that sets ``should_decontaminate``, else None.

    lm-eval 0.4.13 passes a rendered Jinja template through ``ast.literal_eval`` (ARC's
    ``"Question: {{question}}\nAnswer:"`` then fails with a SyntaxError); such a template is rendered here."""
    try:
        if not task.should_decontaminate():
            return None
        query = task.doc_to_decontamination_query(doc)
    except (AttributeError, NotImplementedError):
        return None
    except (SyntaxError, ValueError):
        from lm_eval.utils import apply_template

        query = apply_template(task.config.doc_to_decontamination_query, doc)
    return None if query is None else str(_first(query))


def _suite_tasks(names: Sequence[str]):
    """The tasks named (``evaluation.suites.resolve_tasks``, as ``EVAL_TASKS`` reads them: a suite's name for all
    its tasks, or a task name), each lm-eval task once (humaneval is in two suites), with shots set to 0: only the
    split that is scored is read, so no few-shot split file is needed."""
    from ..evaluation.suites import resolve_tasks

    return [dataclasses.replace(t, num_fewshot=0) for t in resolve_tasks(names)]


def load_test_items(suites: list[str], eval_data_dir: str | os.PathLike | None) -> dict[str, list[str]]:
    """``{lm-eval task: [item text, ...]}`` for every (leaf) task named in ``suites`` (suites and task names, read by
    ``evaluation.suites.resolve_tasks``), in the order named, groups (mmlu) expanded. Items are ``task.eval_docs``
    (the test split when the task has one, else validation: the split lm-eval scores), in lm-eval's order, so item
    ``i`` is ``doc_id`` ``i`` of lm-eval's samples files; the text of each is :func:`item_text`.

    ``eval_data_dir``: a folder in the layout of ``EVAL_DATA_DIR`` (``<dir>/<task>/<split>.jsonl|parquet|...``,
    see docs/evaluation.md), read through the same generated task YAMLs as ``evaluation/run_lm_eval.sh``;
    None reads lm-eval's usual data source (the Hub, or the Hugging Face cache offline). Every task that has
    no local data or cannot be loaded is named in one ValueError, before any item is read.
    """
    if not suites:
        raise ValueError("decontamination needs at least one evaluation suite or task (e.g. ['commonsense'])")
    from ..evaluation.offline import leaf_tasks, write_offline_tasks
    from ..evaluation.suites import lm_eval_task_index

    tasks = _suite_tasks(suites)  # ValueError for an unknown name, listing the suites
    index = lm_eval_task_index()
    names, errors = [], []
    for t in tasks:
        try:
            names += [n for n in leaf_tasks(t.task, index) if n not in names]
        except ValueError as e:
            errors.append(str(e))
    if errors:
        raise ValueError("decontamination: " + "; ".join(errors))
    with tempfile.TemporaryDirectory(prefix="decontaminate-") as tmp:
        include = None
        if eval_data_dir is not None:
            try:
                include = write_offline_tasks(tasks, eval_data_dir, Path(tmp) / "offline_tasks")
            except FileNotFoundError as e:
                raise ValueError(f"decontamination against {', '.join(suites)}: {e}") from None
        from lm_eval.tasks import TaskManager

        # Offline, the generated YAMLs are all it needs (each includes lm-eval's own file by its absolute path):
        # not indexing lm-eval's ~10,000 task files again saves seconds.
        manager = TaskManager(include_path=str(include), include_defaults=False) if include else TaskManager()
        where = (f"local files under {Path(eval_data_dir).resolve()}" if eval_data_dir is not None
                 else "lm-eval's data source (the Hub, or the Hugging Face cache when offline); for local files "
                      "give the evaluation data folder (EVAL_DATA_DIR layout)")
        loaded, errors = {}, []
        for name in names:
            try:
                loaded[name] = manager.load([name])["tasks"][name]
            except Exception as e:  # the datasets/lm-eval error, whatever its class, with the task and the place
                errors.append(f"{name}: cannot be loaded from {where}: {type(e).__name__}: {str(e)[:300]}")
        if errors:
            raise ValueError("decontamination: evaluation tasks not available:\n"
                             + "\n".join(f"  - {e}" for e in errors))
        from tqdm.auto import tqdm

        items = {}
        for name, task in tqdm(loaded.items(), desc="evaluation items", unit="task", total=len(loaded)):
            items[name] = [item_text(task, doc) for doc in task.eval_docs]
            log.info("decontamination: %s: %d items", name, len(items[name]))
    return items


# ------------------------------------------------------------------------------------------------ the index
@dataclasses.dataclass
class TestIndex:
    """The n-grams of every evaluation item, as arrays (compact, and cheap to pickle to worker processes).

    ``hashes`` holds each distinct n-gram hash once, sorted; the (task, item) pairs that contain ``hashes[k]`` are
    ``task_idx[starts[k]:starts[k + 1]]`` / ``item_idx[...]`` (an n-gram can occur in several items); ``shared`` marks
    the entries whose n-gram another item of the same task has too (not evidence for the item). ``whole_keys`` (task
    << 32 | item, sorted) are the items that have only such n-grams, ``whole_ngrams`` how many each has: such an
    item is found by a document holding all of them. ``bitmap`` is a
    one-hash Bloom filter of ``hashes`` (bit ``h >> shift`` set; at least 16 bits per n-gram, so about 6% of the
    n-grams of a clean document pass it): most of a document's n-grams are rejected by one gather, and only the rest
    are searched in ``hashes`` (3-4 times faster than searching them all). ``items[t]``
    is the number of items of ``tasks[t]``, ``too_short[t]`` how many of them have fewer than ``n`` words: those
    have no n-gram and cannot be found in any document.
    """

    __test__ = False  # (not a pytest class)

    n: int
    tasks: list[str]
    items: np.ndarray  # int64 per task
    too_short: np.ndarray  # int64 per task
    hashes: np.ndarray  # uint64, unique, sorted
    starts: np.ndarray  # int64, len(hashes) + 1
    task_idx: np.ndarray  # int32
    item_idx: np.ndarray  # int32
    bitmap: np.ndarray  # uint8, packed bits
    shift: int
    shared: np.ndarray  # bool per entry of task_idx / item_idx
    whole_keys: np.ndarray  # int64, sorted: task << 32 | item of the items with no n-gram of their own
    whole_ngrams: np.ndarray  # int64: their n-gram counts

    @classmethod
    def build(cls, items: dict[str, list[str]], n: int = DEFAULT_NGRAM) -> "TestIndex":
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n-gram size must be an integer >= 1, got {n!r}")
        all_hashes, all_tasks, all_items = [], [], []
        counts, short = [], []
        for t, texts in enumerate(items.values()):
            counts.append(len(texts))
            k_short = 0
            for i, text in enumerate(texts):
                h = np.unique(text_ngrams(text, n))  # an item counts once per n-gram
                if not len(h):
                    k_short += 1
                    continue
                all_hashes.append(h)
                all_tasks.append(np.full(len(h), t, dtype=np.int32))
                all_items.append(np.full(len(h), i, dtype=np.int32))
            short.append(k_short)
        if all_hashes:
            h = np.concatenate(all_hashes)
            order = np.argsort(h, kind="stable")
            h, ti, ii = h[order], np.concatenate(all_tasks)[order], np.concatenate(all_items)[order]
            first = np.flatnonzero(np.r_[True, h[1:] != h[:-1]])
            hashes, starts = h[first], np.r_[first, len(h)].astype(np.int64)
            # the entries of one n-gram are in (task, item) order (a stable sort of items appended in that order):
            # a run of equal (n-gram, task) longer than one is an n-gram several items of that task share
            run = np.cumsum(np.r_[True, (h[1:] != h[:-1]) | (ti[1:] != ti[:-1])]) - 1
            shared = np.bincount(run)[run] > 1
        else:
            hashes, starts = np.empty(0, np.uint64), np.zeros(1, np.int64)
            ti, ii = np.empty(0, np.int32), np.empty(0, np.int32)
            shared = np.empty(0, bool)
        keys = ti.astype(np.int64) << 32 | ii.astype(np.int64)
        item_keys, ngram_counts = np.unique(keys, return_counts=True)
        whole = ~np.isin(item_keys, keys[~shared])
        bits = max(20, int(np.ceil(np.log2(max(1, 16 * len(hashes))))))  # 2**bits >= 16 bits per n-gram
        shift = 64 - bits
        slots = (hashes >> np.uint64(shift)).astype(np.int64)
        bitmap = np.zeros(1 << (bits - 3), np.uint8)
        np.bitwise_or.at(bitmap, slots >> 3, np.left_shift(1, slots & 7).astype(np.uint8))
        return cls(n=n, tasks=list(items), items=np.asarray(counts, np.int64), too_short=np.asarray(short, np.int64),
                   hashes=hashes, starts=starts, task_idx=ti, item_idx=ii, bitmap=bitmap, shift=shift, shared=shared,
                   whole_keys=item_keys[whole], whole_ngrams=ngram_counts[whole].astype(np.int64))

    def find_ngrams(self, ngrams: np.ndarray) -> list[tuple[int, int]]:
        """Like :meth:`find`, for n-gram hashes already computed (``ngrams.text_ngrams(text, self.n)``)."""
        if not len(ngrams) or not len(self.hashes):
            return []
        slots = (ngrams >> np.uint64(self.shift)).astype(np.int64)
        ngrams = ngrams[(self.bitmap[slots >> 3] >> (slots & 7).astype(np.uint8)) & 1 == 1]
        if not len(ngrams):
            return []
        pos = np.searchsorted(self.hashes, ngrams)
        pos[pos == len(self.hashes)] = 0
        hit = np.unique(pos[self.hashes[pos] == ngrams])
        if not len(hit):
            return []
        lo, hi = self.starts[hit], self.starts[hit + 1]
        rows = np.concatenate([np.arange(a, b) for a, b in zip(lo.tolist(), hi.tolist())])
        keys = self.task_idx[rows].astype(np.int64) << 32 | self.item_idx[rows].astype(np.int64)
        shared = self.shared[rows]
        pairs = np.unique(keys[~shared])  # found on an n-gram of its own
        if len(self.whole_keys) and shared.any():  # an item with none: found when the document holds all its n-grams
            candidates, held = np.unique(keys[shared], return_counts=True)  # (one entry per n-gram and item)
            at = np.minimum(np.searchsorted(self.whole_keys, candidates), len(self.whole_keys) - 1)
            whole = (self.whole_keys[at] == candidates) & (self.whole_ngrams[at] == held)
            pairs = np.union1d(pairs, candidates[whole])
        return [(int(p >> 32), int(p & 0xFFFFFFFF)) for p in pairs]

    def find(self, text: str) -> list[tuple[int, int]]:
        """The unique (task index, item index) pairs, sorted, of the items found in ``text``: an item is found when
        the text holds one of its n-grams that no other item of its task has (the GPT-3 / lm-eval rule, less the
        n-grams of a template several items share), or, for an item that has no such n-gram, all of its n-grams.
        Items too short to have an n-gram are never returned (see ``too_short``)."""
        return self.find_ngrams(text_ngrams(text, self.n))

    @property
    def num_ngrams(self) -> int:
        return len(self.hashes)

    def describe(self) -> str:
        whole = (f", {len(self.whole_keys)} with no {self.n}-gram of their own (found only whole)"
                 if len(self.whole_keys) else "")
        return (f"{len(self.tasks)} tasks, {int(self.items.sum())} items ({int(self.too_short.sum())} shorter than "
                f"{self.n} words: not checkable{whole}), {self.num_ngrams} distinct {self.n}-grams")


# ------------------------------------------------------------------------------------------------ the tally
class ContaminationTally:
    """Hits summed over a source's training documents; ``to_dict()`` is the manifest's ``"contamination"``:

        {"ngram": 13, "mode": "report"|"drop", "suites": [...], "documents": <documents with any hit>,
         "tasks": {task: {"items": N, "too_short": K, "contaminated": [sorted item indices]}},
         "documents_found": [{"row": R, "file": F, "line": L, "items": {task: [item indices]}}, ...]}

    In ``drop`` mode the documents counted were left out of the shards, so the items listed were found but not
    trained on; in ``report`` mode they were trained on. ``documents_found`` names the first
    :data:`DOCUMENTS_LISTED` of those documents in input order (``documents`` counts them all), each where
    ``SourceReader.locate`` puts it (``row``: 1-based in the source; ``file`` and ``line`` or ``file_row`` for local
    files) with the items it holds. ``listed_from_row`` (only when set): the source was half prepared by a version
    that did not list documents, so those before that row are counted but not listed.
    """

    def __init__(self, tasks: Sequence[str], items: Sequence[int], too_short: Sequence[int], ngram: int,
                 mode: str, suites: Sequence[str], documents: int = 0,
                 contaminated: dict[str, Iterable[int]] | None = None, documents_found: Sequence[dict] = (),
                 listed_from_row: int | None = None):
        if mode not in MODES:
            raise ValueError(f"decontamination mode must be one of {MODES}, got {mode!r}")
        self.tasks, self.ngram, self.mode, self.suites = list(tasks), int(ngram), mode, list(suites)
        self.items = [int(x) for x in items]
        self.too_short = [int(x) for x in too_short]
        self.documents = int(documents)
        contaminated = contaminated or {}
        self._hits: list[set[int]] = [set(map(int, contaminated.get(t, ()))) for t in self.tasks]
        self.documents_found = [dict(d) for d in documents_found]
        self.listed_from_row = listed_from_row

    @classmethod
    def for_index(cls, index: TestIndex, mode: str, suites: Sequence[str]) -> "ContaminationTally":
        return cls(index.tasks, index.items.tolist(), index.too_short.tolist(), index.n, mode, suites)

    def add(self, hits: Sequence[tuple[int, int]], where: dict | None = None) -> bool:
        """One training document's hits (:meth:`TestIndex.find`), and where it is (listed while fewer than
        :data:`DOCUMENTS_LISTED` are); True when it has any."""
        if not hits:
            return False
        self.documents += 1
        items: dict[str, list[int]] = {}
        for t, i in hits:
            self._hits[t].add(int(i))
            items.setdefault(self.tasks[t], []).append(int(i))
        if where is not None and len(self.documents_found) < DOCUMENTS_LISTED:
            self.documents_found.append({**where, "items": items})
        return True

    def merge(self, other: "ContaminationTally") -> None:
        """Add another tally of the same index (another worker's, or a later part of the source)."""
        if other.tasks != self.tasks or other.ngram != self.ngram:
            raise ValueError("cannot merge contamination tallies of different test sets")
        self.documents += other.documents
        for mine, theirs in zip(self._hits, other._hits):
            mine |= theirs
        found = sorted(self.documents_found + other.documents_found, key=lambda d: d.get("row", 0))
        self.documents_found = found[:DOCUMENTS_LISTED]

    def counts(self) -> dict[str, int]:
        """``{task: number of contaminated items}``."""
        return {t: len(h) for t, h in zip(self.tasks, self._hits)}

    def to_dict(self) -> dict:
        out = {"ngram": self.ngram, "mode": self.mode, "suites": list(self.suites), "documents": self.documents,
               "tasks": {t: {"items": n, "too_short": k, "contaminated": sorted(h)}
                         for t, n, k, h in zip(self.tasks, self.items, self.too_short, self._hits)},
               "documents_found": [dict(d) for d in self.documents_found]}
        if self.listed_from_row is not None:
            out["listed_from_row"] = self.listed_from_row
        return out

    @classmethod
    def from_dict(cls, data: dict, index: TestIndex | None = None) -> "ContaminationTally":
        """A tally restored from a manifest (a resumed run). With ``index``, the test set it was counted against
        must be the one of ``index`` (same n, tasks and item counts), else the counts would mix two test sets.
        A manifest written before documents were listed restores with none listed."""
        tasks = data["tasks"]
        tally = cls(list(tasks), [v["items"] for v in tasks.values()], [v["too_short"] for v in tasks.values()],
                    data["ngram"], data["mode"], data["suites"], data["documents"],
                    {t: v["contaminated"] for t, v in tasks.items()}, data.get("documents_found", ()),
                    data.get("listed_from_row"))
        if index is not None:
            mine = (index.n, list(index.tasks), index.items.tolist(), index.too_short.tolist())
            theirs = (tally.ngram, tally.tasks, tally.items, tally.too_short)
            if mine != theirs:
                raise ValueError(
                    f"the manifest's contamination counts were made against another test set ({tally.ngram}-grams, "
                    f"{dict(zip(tally.tasks, tally.items))}) than now ({index.n}-grams, "
                    f"{dict(zip(index.tasks, index.items.tolist()))}); prepare this source again (overwrite)")
        return tally
