"""Prepare raw corpora into packed token shards: read, filter, split long documents, tokenize, write.

``python scripts/prepare_data.py --config configs/data/demo.yaml [--key value ...]``, or in-process
``prepare_data(["--config", ...])``. Each source becomes ``<output_dir>/<source>/`` (format in ``shards.py``).

The flow per source: the main process reads rows and forms batches of documents; worker processes tokenize the
batches (``tokenizers``' Rust encoder, one thread each); the main process writes the results *in input order*, so the
output is byte-identical whatever the number of workers. At most ``4 x workers + 4`` batches are in flight, so memory
is bounded by the batch size, not by the corpus. A shard is closed at the first batch boundary past
``shard_tokens``; the manifest then records the shard and where reading stopped, so a rerun resumes there and
produces the same bytes an uninterrupted run would.
"""

from __future__ import annotations

import collections
import copy
import logging
import multiprocessing
import os
import re
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Optional

import numpy as np

from ..config import parse_config
from ..tokenizer import Agreement, check_tokenizer, sentencepiece_file_of
from ..utils import TMP_PREFIX, RunStopped
from .dedup import INDEX_FILE, DedupSettings
from .preparation_report import REPORT, outcome, write_report
from .readers import Position, SourceReader, SourceSpec, describe_location
from .screen import DecontaminationSettings, ScreenSpec, SourceScreen, index_fingerprint
from .shards import FORMAT, MAX_SHARD_TOKENS, SPLITS, ShardWriter, check_shards, read_manifest, shard_paths, \
    write_manifest
from .tokenize import Encoder, EncoderSpec, TokenizerInfo, encode_in_worker, encode_records, init_worker, \
    load_tokenizer, load_worker_encoder

log = logging.getLogger(__name__)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
SMALL_INPUT_BYTES = 32 * 2**20  # num_workers -1 tokenizes local inputs smaller than this in-process
BAD_ROW_SAMPLE = 20  # bad rows named (file and line) in a warning and in the manifest, per source; the rest counted


@dataclass
class PrepareConfig:
    """Arguments of scripts/prepare_data.py (YAML keys; any can be given as --key value)."""

    tokenizer: str = field(metadata={"help": "fast tokenizer: a Hub id (e.g. TinyLlama/TinyLlama_v1.1, the Llama-2 "
                                             "tokenizer) or a local folder"})
    output_dir: str = field(metadata={"help": "data_dir to write; each source goes to <output_dir>/<source name>/"})
    sources: dict = field(metadata={"help": "source name -> {path, text_field, filters, format, subset, data_dir, "
                                            "data_files, split, revision, max_documents} (see docs/data.md)"})
    only: list[str] = field(default_factory=list, metadata={"help": "prepare only these sources (default: all)"})
    bos: bool = field(default=True, metadata={"help": "start every document with the tokenizer's BOS token "
                                                      "(TinyLlama separated documents with BOS only)"})
    eos: bool = field(default=False, metadata={"help": "end every document with the tokenizer's EOS token"})
    dtype: Literal["auto", "uint16", "uint32"] = field(
        default="auto", metadata={"help": "token storage: auto = uint16 while the vocab fits, else uint32"})
    shard_tokens: int = field(default=2**27, metadata={
        "help": "close a shard at the first batch boundary past this many tokens (a killed run redoes at most one)"})
    validation_every: int = field(default=1000, metadata={
        "help": "held-out split: documents 0, N, 2N, ... of each source (in input order, after filters) ..."})
    validation_documents: int = field(default=1000, metadata={
        "help": "... until this many are held out (0: no validation split)"})
    max_chars_per_piece: int = field(default=8192, metadata={
        "help": "split longer documents at line boundaries before encoding (0: never split)"})
    batch_rows: int = field(default=512, metadata={"help": "rows per batch sent to a tokenizer worker"})
    batch_bytes: int = field(default=500_000, metadata={"help": "... or fewer, to keep a batch under about this "
                                                                  "many bytes of text"})
    num_workers: int = field(default=-1, metadata={
        "help": "tokenizer worker processes: -1 = one per available core (in this process for local inputs under "
                "32 MB), 0 = in this process (Rust threads)"})
    build_demo: Optional[str] = field(default=None, metadata={
        "help": "build the embedded demo corpus into this folder first if it is missing (demo config only)"})
    overwrite: bool = field(default=False, metadata={
        "help": "prepare sources again from scratch even if their folders hold data from other settings"})
    tokenizer_check: bool = field(default=True, metadata={
        "help": "when the tokenizer comes with a tokenizer.model, stop unless its tokenizer.json gives the same ids "
                "on the first 64 documents of each source (TinyLlama was pretrained on SentencePiece's ids)"})
    dedup: Any = field(default=None, metadata={
        "help": "drop exact and near duplicates within each source: true (defaults) or {exact, near, threshold, "
                "ngram, num_perm, seed} (docs/data.md); a source's own dedup: key overrides it. Off by default"})
    decontaminate: Any = field(default=None, metadata={
        "help": "find evaluation test items in the documents (13-gram overlap): true (defaults) or "
                "{suites (suite or task names, as EVAL_TASKS), ngram, mode: report|drop, eval_data_dir} "
                "(docs/data.md); a source's own key overrides it. Off by default"})

    def validate(self) -> list[str]:
        errors: list[str] = []
        self._specs = []
        self._screening: dict[str, tuple[DedupSettings | None, DecontaminationSettings | None]] = {}
        if not self.sources:
            errors.append("sources: give at least one source")
        for name, spec in (self.sources or {}).items():
            if not _NAME.match(str(name)):
                errors.append(f"sources.{name}: a source name becomes a folder name: use letters, digits, _ . -")
                continue
            parsed = SourceSpec.from_dict(str(name), spec, errors)
            if parsed is not None:
                self._specs.append(parsed)
                self._screening[parsed.name] = self._parse_screening(parsed, errors)
        for name in self.only:
            if name not in (self.sources or {}):
                errors.append(f"only: no source named '{name}' (sources: {', '.join(self.sources or {})})")
        if not 1 <= self.shard_tokens <= MAX_SHARD_TOKENS // 2:
            errors.append(f"shard_tokens: must be between 1 and {MAX_SHARD_TOKENS // 2}, got {self.shard_tokens}")
        if self.validation_every < 1:
            errors.append(f"validation_every: must be >= 1, got {self.validation_every}")
        if self.validation_documents < 0:
            errors.append(f"validation_documents: must be >= 0, got {self.validation_documents}")
        if self.max_chars_per_piece < 0:
            errors.append(f"max_chars_per_piece: must be >= 0 (0 = never split), got {self.max_chars_per_piece}")
        if self.batch_rows < 1 or self.batch_bytes < 1:
            errors.append("batch_rows and batch_bytes: must be >= 1")
        if self.num_workers < -1:
            errors.append(f"num_workers: -1 (all cores), 0 (in process) or a count, got {self.num_workers}")
        return errors

    def _parse_screening(self, spec: SourceSpec, errors: list[str]):
        import yaml

        for key in ("dedup", "decontaminate"):  # from the command line: --dedup true, --dedup '{threshold: 0.7}'
            if isinstance(getattr(self, key), str):
                setattr(self, key, yaml.safe_load(getattr(self, key)))
        own = f"sources.{spec.name}."
        dedup = DedupSettings.parse(own + "dedup" if spec.dedup is not None else "dedup",
                                    self.dedup if spec.dedup is None else spec.dedup, errors)
        decon = DecontaminationSettings.parse(own + "decontaminate" if spec.decontaminate is not None
                                              else "decontaminate",
                                              self.decontaminate if spec.decontaminate is None else spec.decontaminate,
                                              errors)
        return dedup, decon

    def screening(self, spec: SourceSpec) -> tuple[DedupSettings | None, DecontaminationSettings | None]:
        """The source's effective (dedup, decontamination) settings; None where the step is off."""
        self.source_specs()
        return self._screening[spec.name]

    def source_specs(self) -> list[SourceSpec]:
        if not hasattr(self, "_specs"):
            errors = self.validate()
            if errors:
                raise ValueError("; ".join(errors))
        return [s for s in self._specs if not self.only or s.name in self.only]

    def settings(self, spec: SourceSpec, dtype: str) -> dict:
        """Everything that determines a source's token streams and document boundaries (compared on a rerun)."""
        out = {"source": spec.to_dict(), "tokenizer": self.tokenizer, "bos": self.bos, "eos": self.eos,
               "dtype": dtype, "validation_every": self.validation_every,
               "validation_documents": self.validation_documents, "max_chars_per_piece": self.max_chars_per_piece}
        dedup, decon = self.screening(spec)  # only when on: earlier manifests (no such keys) still compare equal
        if dedup is not None:
            out["dedup"] = dedup.to_dict()
        if decon is not None:
            out["decontaminate"] = {k: v for k, v in decon.to_dict().items() if k != "eval_data_dir"}
        return out

    def layout(self) -> dict:
        """What only decides where shards are cut: changing it changes file boundaries, never the token streams
        that readers see (which concatenate the shards), so it may differ between a run and its resumption."""
        return {"shard_tokens": self.shard_tokens, "batch_rows": self.batch_rows, "batch_bytes": self.batch_bytes}


def check_preparation_tokenizer(name: str, tokenizer_json: str, readers: list[SourceReader],
                                per_source: int = 64) -> Agreement | None:
    """The guard preparation runs before writing anything: ``tokenizer.check_tokenizer`` on the first
    ``per_source`` documents of each source, encoded with the serialized fast tokenizer the workers will use."""
    import itertools

    from tokenizers import Tokenizer

    if sentencepiece_file_of(name) is None:
        return check_tokenizer(name, [])  # logs that nothing is checked
    texts = []
    for reader in readers:
        rows = reader.rows(Position())
        texts += itertools.islice((text for text, _, _ in rows if text), per_source)
        rows.close()
    return check_tokenizer(name, texts, Tokenizer.from_str(tokenizer_json))


def prepare_data(args: list[str] | None = None) -> Path:
    """The command line in-process: parse ``[--config FILE] [--key value ...]``, prepare, return output_dir.

    A rerun with everything complete only reads the manifests and returns.
    """
    (cfg,) = parse_config(PrepareConfig, args)
    return prepare_sources(cfg)


def _dtype_for(cfg: PrepareConfig, vocab_size: int | None) -> str:
    if cfg.dtype != "auto":
        return cfg.dtype
    return "uint16" if vocab_size is not None and vocab_size <= 2**16 else "uint32"


def _settings_diff(old: dict, new: dict) -> list[str]:
    return [k for k in new if old.get(k) != new[k]]


def _is_done(cfg: PrepareConfig, spec: SourceSpec, folder: Path) -> bool:
    """True if ``folder`` holds a complete preparation with these settings and its shards match (cheap)."""
    manifest = read_manifest(folder)
    if manifest is None or not manifest.get("complete"):
        return False
    expected = cfg.settings(spec, manifest["dtype"] if cfg.dtype == "auto" else cfg.dtype)
    if _settings_diff(manifest["settings"], expected) or cfg.overwrite:
        return False
    check_shards(folder, manifest)
    return True


def prepare_sources(cfg: PrepareConfig) -> Path:
    """Prepare every selected source of ``cfg`` (resuming or skipping what is done); return the output folder."""
    out = Path(cfg.output_dir)
    specs = cfg.source_specs()
    todo = [s for s in specs if not _is_done(cfg, s, out / s.name)]
    if not todo:
        log.info("all %d source(s) already prepared in %s", len(specs), out)
        if not (out / REPORT).is_file():  # (a no-op rerun stays cheap: the report of the run that finished stands)
            write_report(out, list(cfg.sources))
        return out

    if cfg.build_demo:
        from ..demo_corpus import build_demo

        build_demo(cfg.build_demo)

    # ---- every check that can fail, before any work: cheap ones first ----
    readers = {spec.name: SourceReader(spec) for spec in todo}  # missing paths, Hub ids while offline
    workers = _worker_count(cfg, readers)
    pool = None
    try:
        tok = load_tokenizer(cfg.tokenizer)
        dtype = _dtype_for(cfg, tok.vocab_size)
        if tok.vocab_size > np.iinfo(dtype).max + 1:
            raise ValueError(f"dtype: {dtype} holds ids below {np.iinfo(dtype).max + 1}, but tokenizer "
                             f"{cfg.tokenizer!r} has {tok.vocab_size} tokens; use dtype: uint32 (or auto)")
        for flag, tid in (("bos", tok.bos_token_id), ("eos", tok.eos_token_id)):
            if getattr(cfg, flag) and tid is None:
                raise ValueError(f"{flag}: true, but tokenizer {cfg.tokenizer!r} has no {flag.upper()} token")
        for spec in todo:
            folder = out / spec.name
            manifest = read_manifest(folder)
            if manifest is not None and not cfg.overwrite:
                diff = _settings_diff(manifest["settings"], cfg.settings(spec, dtype))
                if manifest["tokenizer"]["hash"] != tok.hash:
                    diff.append("tokenizer (same name, different content)")
                if diff:
                    raise ValueError(f"{folder / 'manifest.json'}: prepared with other settings ({', '.join(diff)});"
                                     f" use --overwrite true to prepare '{spec.name}' again from scratch, or another "
                                     f"output_dir")
            readers[spec.name].check()  # the text and filter fields are in the data; the source is not empty
        if cfg.tokenizer_check:  # tokenizer.json gives its tokenizer.model's ids (SentencePiece), else stop
            check_preparation_tokenizer(cfg.tokenizer, tok.json, [readers[spec.name] for spec in todo])
        screens = _screen_specs(cfg, todo)  # the evaluation suites' test items are read here (decontamination)
        for spec in todo:
            _check_screen_resume(out / spec.name, screens.get(spec.name))
        encoder_spec = EncoderSpec.of(tok, tok.bos_token_id if cfg.bos else None,
                                      tok.eos_token_id if cfg.eos else None, cfg.max_chars_per_piece, dtype, screens)
        encoder = None
        if workers > 0:
            # The workers start once every cheap check has passed, and build their encoders (and run the splitting
            # check) while this process waits. One pool serves every source of the run: the fixed cost is paid once
            # per run, not once per source.
            pool = _WorkerPool(workers, encoder_spec)
        else:
            encoder = Encoder(encoder_spec)  # built once per run, for every source
            encoder.check_splitting()
        if pool is not None:
            pool.wait_ready()  # raises the workers' splitting check's ValueError, if any

        # ---- the config, the tokenizer and the sources are checked; nothing is written yet ----

        for spec in todo:
            prepare_source(cfg, spec, readers[spec.name], tok, dtype, out / spec.name, encoder, pool,
                           screens.get(spec.name))
    finally:
        if pool is not None:
            pool.shutdown()
    write_report(out, list(cfg.sources))  # every source of the config with a manifest, not only --only
    return out


def _screen_specs(cfg: PrepareConfig, specs: list[SourceSpec]) -> dict[str, ScreenSpec]:
    """Per source with dedup or decontamination on, what its workers need (test items loaded once per setting)."""
    out: dict[str, ScreenSpec] = {}
    indexes: dict = {}
    for spec in specs:
        dedup, decon = cfg.screening(spec)
        if dedup is None and decon is None:
            continue
        index = None
        if decon is not None:
            key = (decon.suites, decon.ngram, decon.eval_data_dir)
            if key not in indexes:
                from .decontaminate import TestIndex, load_test_items

                items = load_test_items(list(decon.suites), decon.eval_data_dir)
                indexes[key] = TestIndex.build(items, decon.ngram)
            index = indexes[key]
        out[spec.name] = ScreenSpec(dedup, dedup.bands() if dedup is not None else None, decon, index)
    return out


def _index_fingerprint(screen: ScreenSpec | None) -> str | None:
    if screen is None or screen.decontaminate is None:
        return None
    return index_fingerprint(screen.index)


def _check_screen_resume(folder: Path, screen: ScreenSpec | None) -> None:
    """A half-prepared source resumes only against the same benchmark items it was checked against so far."""
    manifest = read_manifest(folder)
    if manifest is None or manifest.get("complete") or not manifest["stats"]["rows_read"]:
        return
    old, new = manifest.get("decontamination_index"), _index_fingerprint(screen)
    if old != new:
        raise ValueError(f"{folder / 'manifest.json'}: this source was partly prepared against other benchmark test "
                         f"items (the evaluation data changed); resuming would check its documents unevenly: prepare "
                         f"it again with --overwrite true, or restore the evaluation data")


def _worker_count(cfg: PrepareConfig, readers: dict[str, SourceReader]) -> int:
    if cfg.num_workers != -1:
        return cfg.num_workers
    small = all(not r.hub for r in readers.values()) and sum(
        f.stat().st_size for r in readers.values() for f, _ in r.files) < SMALL_INPUT_BYTES
    if small:  # a small local input (the demo) is done before worker processes would have started
        return 0
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


_WORKER_DIED = ("a tokenizer worker process died (killed from outside, most often by the out-of-memory killer: lower "
                "num_workers or batch_bytes); every shard in the manifest is whole: run the same command again to "
                "resume")


class _WorkerPool:
    """The tokenizer worker processes of a run, each given the encoder spec once, shut down once at the end."""

    def __init__(self, workers: int, spec: EncoderSpec):
        # spawn, not fork: the parent may hold threads (pyarrow, torch) that a fork would copy mid-lock.
        ctx = multiprocessing.get_context("spawn")
        self.workers = workers
        # The spec goes through a queue, not the initializer's arguments: multiprocessing writes a spawned child's
        # arguments into a pipe and blocks until the child has started and read them, so megabytes of tokenizer
        # there would start the workers one after the other (seconds for a hundred workers); through the queue they
        # start at once and each takes its copy when it is up.
        self.specs = ctx.Queue()
        self.specs.cancel_join_thread()  # a copy left unread (a worker died first) must not hold this process's exit
        for _ in range(workers):
            self.specs.put(spec)
        # concurrent.futures, not multiprocessing.Pool: when a worker dies (the out-of-memory killer), Pool loses its
        # task and waits forever; the executor fails every pending result with BrokenProcessPool instead.
        self.executor = ProcessPoolExecutor(workers, mp_context=ctx, initializer=init_worker, initargs=(self.specs,))
        # The executor starts a process per submitted task while none is idle: one start-up task per worker starts
        # them all now; each builds its encoder and runs the splitting check.
        self.ready = [self.executor.submit(load_worker_encoder) for _ in range(workers)]

    def wait_ready(self) -> None:
        try:
            for f in self.ready:
                f.result()  # raises the splitting check's ValueError, if any
        except BrokenProcessPool:
            raise RunStopped(_WORKER_DIED) from None

    def submit(self, *args):
        return self.executor.submit(*args)

    def shutdown(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
        self.specs.close()


# ---- one source ------------------------------------------------------------------------------------------------
@dataclass
class _State:
    """Where reading stands, what was counted; snapshotted into each batch for the manifest."""

    position: Position = field(default_factory=Position)
    rows: int = 0
    documents: int = 0  # documents accepted so far (train + validation), the validation selector's counter
    skipped: collections.Counter = field(default_factory=collections.Counter)
    bad_rows: list = field(default_factory=list)  # the first BAD_ROW_SAMPLE bad rows: where, and why

    def snapshot(self) -> dict:
        return {"position": self.position.to_dict(), "rows": self.rows, "documents": self.documents,
                "skipped": dict(sorted(self.skipped.items())), "bad_rows": list(self.bad_rows)}


@dataclass
class _Batch:
    records: list  # raw rows (jsonl lines) or decoded rows, parsed in the worker
    positions: list[Position]  # where reading stands after each record
    last: bool = False


def _batches(cfg: PrepareConfig, reader: SourceReader, start: Position) -> Iterator[_Batch]:
    text_field = reader.spec.text_field
    records, positions, size = [], [], 0
    for record, pos in reader.records(start):
        records.append(record)
        positions.append(pos)
        if isinstance(record, (bytes, bytearray)):
            size += len(record)
        elif isinstance(record, dict) and isinstance(record.get(text_field), str):
            size += len(record[text_field])
        if len(records) >= cfg.batch_rows or size >= cfg.batch_bytes:
            yield _Batch(records, positions)
            records, positions, size = [], [], 0
    yield _Batch(records, positions, last=True)


def _encoded(batches: Iterator[_Batch], parser, encoder: Encoder | None, pool: "_WorkerPool | None", source: str,
             screener=None):
    """(batch, (ids, lengths, reasons)) in input order, at most ``4 x workers + 4`` batches in flight: results are
    taken in order, so the window must let the other workers go on while one is slow (preempted on a shared machine,
    or given a batch of long documents)."""
    if pool is None:
        for b in batches:
            yield b, encode_records(encoder, parser, b.records, screener)
        return
    pending: collections.deque = collections.deque()
    try:
        for b in batches:
            pending.append((b, pool.submit(encode_in_worker, parser, b.records, source)))
            while len(pending) > 4 * pool.workers + 4:
                b0, r = pending.popleft()
                yield b0, r.result()
        while pending:
            b0, r = pending.popleft()
            yield b0, r.result()
    except BrokenProcessPool:  # (from submit or result, whichever comes first after the death)
        raise RunStopped(_WORKER_DIED) from None


def _clean(folder: Path, manifest: dict) -> None:
    """Remove what a killed run may have left: temporary files, and shards the manifest does not list."""
    for split in SPLITS:
        d = folder / split
        if not d.is_dir():
            continue
        listed = {shard_paths(folder, split, k)[i].name
                  for k in range(len(manifest["splits"].get(split, []))) for i in (0, 1)}
        for p in d.iterdir():
            if p.name.startswith(TMP_PREFIX) or p.name not in listed:
                p.unlink()
    for p in folder.glob(f"{TMP_PREFIX}*"):
        p.unlink() if p.is_file() else shutil.rmtree(p, ignore_errors=True)


def _commit(folder: Path, manifest: dict, writers: dict[str, ShardWriter], state: dict, complete: bool,
            screen: SourceScreen | None = None) -> None:
    """Close the open shards and record them, with the reading position, in the manifest (atomically). The dedup
    index commits first: a kill between the two leaves it ahead of the manifest, which ``DedupIndex.open`` undoes."""
    if screen is not None:
        screen.commit(manifest, state["rows"])
    for split, w in writers.items():
        entry = w.close()
        if entry is not None:
            manifest["splits"][split].append(entry)
    manifest["complete"] = complete
    manifest["resume"] = state["position"]
    stats = manifest["stats"]
    stats["rows_read"] = state["rows"]
    stats["skipped"] = state["skipped"]
    if state["bad_rows"]:  # (only when there are: a clean source's manifest is as before)
        stats["bad_rows"] = state["bad_rows"]
    for split in SPLITS:
        stats["documents"][split] = sum(e["documents"] for e in manifest["splits"][split])
        stats["tokens"][split] = sum(e["tokens"] for e in manifest["splits"][split])
    write_manifest(folder, manifest)


def prepare_source(cfg: PrepareConfig, spec: SourceSpec, reader: SourceReader, tok: TokenizerInfo, dtype: str,
                   folder: Path, encoder: Encoder | None, pool: "_WorkerPool | None",
                   screen_spec: ScreenSpec | None = None) -> dict:
    """Prepare one source with ``encoder`` in this process, or with the worker ``pool``; ``screen_spec``: its
    deduplication and decontamination, if on."""
    manifest = read_manifest(folder)
    if manifest is not None and cfg.overwrite:
        log.info("%s: --overwrite: removing the previous preparation", spec.name)
        for split in SPLITS:
            shutil.rmtree(folder / split, ignore_errors=True)
        (folder / "manifest.json").unlink()
        manifest = None
    if manifest is None:
        for p in folder.glob(INDEX_FILE + "*"):  # a dedup index without its manifest belongs to no run
            p.unlink()
    if manifest is None:
        manifest = {
            "format": FORMAT, "source": spec.name, "complete": False, "dtype": dtype,
            "tokenizer": tok.to_dict(), "bos": cfg.bos, "eos": cfg.eos,
            "validation": f"documents 0, {cfg.validation_every}, {2 * cfg.validation_every}, ... (counted after "
                          f"filters, in input order), at most {cfg.validation_documents}",
            "settings": cfg.settings(spec, dtype),
            "layout": cfg.layout(),
            "resume": Position().to_dict(),
            "stats": {"rows_read": 0, "documents": {s: 0 for s in SPLITS}, "tokens": {s: 0 for s in SPLITS},
                      "skipped": {}},
            "splits": {s: [] for s in SPLITS},
        }
        fingerprint = _index_fingerprint(screen_spec)
        if fingerprint is not None:
            manifest["decontamination_index"] = fingerprint
        folder.mkdir(parents=True, exist_ok=True)
    elif manifest.get("complete"):
        return manifest
    _clean(folder, manifest)
    check_shards(folder, manifest)

    state = _State(position=Position(**manifest["resume"]), rows=manifest["stats"]["rows_read"],
                   documents=sum(manifest["stats"]["documents"].values()),
                   skipped=collections.Counter(manifest["stats"]["skipped"]),
                   bad_rows=list(manifest["stats"].get("bad_rows", [])))
    resumed = state.rows > 0
    writers = {s: ShardWriter(folder, s, np.dtype(dtype), len(manifest["splits"][s])) for s in SPLITS}
    log.info("%s: %s %s -> %s", spec.name, "resuming" if resumed else "reading", reader.describe(), folder)
    from tqdm.auto import tqdm

    t0, new_tokens = time.perf_counter(), 0
    limit = spec.max_documents
    screen = SourceScreen(screen_spec, folder, manifest) if screen_spec is not None else None
    screener = None
    if screen_spec is not None and pool is None:
        from .screen import Screener

        screener = Screener(screen_spec)
    bar = tqdm(desc=spec.name, unit=" docs", disable=None, file=sys.stderr, initial=state.documents)
    try:
        for batch, (ids, lengths, reasons, screened) in _encoded(_batches(cfg, reader, state.position),
                                                                 reader.parser, encoder, pool, spec.name, screener):
            # the dedup and decontamination verdicts of the encoded documents, decided in input order
            if screen is not None:
                docs = [i for i, r in enumerate(reasons) if r is None]
                doc_rows = [state.rows + i for i in docs]  # (0-based)
                verdicts = iter(screen.decide(screened, doc_rows, lambda k, docs=docs, rows=doc_rows, b=batch:
                                              reader.locate(rows[k] + 1, b.positions[docs[k]])))
            # account for the rows in input order: skip reasons, the validation selection, the document limit
            keep, val, done = [], [], False
            for reason, pos in zip(reasons, batch.positions):
                state.rows += 1
                state.position = pos
                if reason is not None and outcome(reason) == "bad row" and len(state.bad_rows) < BAD_ROW_SAMPLE:
                    where = reader.locate(state.rows, pos)
                    state.bad_rows.append({**where, "reason": reason})
                    log.warning("%s: %s skipped: %s%s", spec.name, describe_location(where), reason,
                                "" if len(state.bad_rows) < BAD_ROW_SAMPLE else
                                f" (the first {BAD_ROW_SAMPLE} bad rows are named; further ones are only counted)")
                if reason is None and screen is not None:
                    reason = next(verdicts)
                    if reason is not None:
                        keep.append(False)
                if reason is not None:
                    state.skipped[reason] += 1
                    continue
                keep.append(True)
                d = state.documents
                state.documents += 1
                val.append(cfg.validation_documents > 0 and d % cfg.validation_every == 0
                           and d // cfg.validation_every < cfg.validation_documents)
                if limit and state.documents >= limit:
                    done = True
                    break
            if len(val) < len(lengths):  # documents dropped by the screens, or past the document limit
                mask = np.zeros(len(lengths), dtype=bool)
                mask[:len(keep)] = keep
                ids = ids[np.repeat(mask, lengths)]
                lengths = lengths[mask]
            if len(lengths):
                val = np.array(val, dtype=bool)
                if val.any():
                    tok_mask = np.repeat(val, lengths)
                    writers["validation"].add(ids[tok_mask], lengths[val])
                    writers["train"].add(ids[~tok_mask], lengths[~val])
                else:
                    writers["train"].add(ids, lengths)
                new_tokens += len(ids)
                bar.update(len(lengths))
                bar.set_postfix(tokens=f"{new_tokens:.3g}", refresh=False)
            last = batch.last or done
            if last or writers["train"].tokens >= cfg.shard_tokens:
                if last and state.documents == 0:
                    raise ValueError(f"source '{spec.name}': no documents in {reader.describe()} (rows read: "
                                     f"{state.rows}; skipped: {dict(state.skipped) or 'none'})")
                _commit(folder, manifest, writers, state.snapshot(), complete=last, screen=screen)
            if last:
                break
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    finally:
        bar.close()
        if screen is not None:
            screen.close()
    dt = time.perf_counter() - t0
    st = manifest["stats"]
    log.info("%s: %d train + %d validation documents, %d + %d tokens (%d new in %.1fs, %.0f tokens/s); skipped: %s",
             spec.name, st["documents"]["train"], st["documents"]["validation"], st["tokens"]["train"],
             st["tokens"]["validation"], new_tokens, dt, new_tokens / max(dt, 1e-9), st["skipped"] or "none")
    return copy.deepcopy(manifest)


def prepare_from_config(path_or_args: str | os.PathLike | list[str]) -> Path:
    """``prepare_from_config("configs/data/demo.yaml")`` or with a list of command-line arguments."""
    if isinstance(path_or_args, (str, os.PathLike)):
        return prepare_data(["--config", str(path_or_args)])
    return prepare_data(list(path_or_args))


def load_config(path: str | os.PathLike) -> PrepareConfig:
    """Parse and check a data config file (every problem at once), without preparing anything."""
    (cfg,) = parse_config(PrepareConfig, ["--config", str(path)])
    return cfg
