"""Reading raw corpora row by row, from local files or a Hub dataset streamed with ``datasets``, with filters.

Every row read ends as either a document (its text) or a skip reason that the manifest counts: a bad row never
stops a run and is never silently lost. Problems with the source as a whole (missing path, no file matched, the text
field absent from the data, a Hub id while offline) raise at once, before any tokenization.

Local ``jsonl`` is read line by line here rather than with ``datasets``' JSON loader, because that loader fails a
whole file on one line of invalid UTF-8 or JSON, and cannot seek: a resumed run seeks to the byte offset recorded
in the manifest instead of reading the file again from its start.
"""

from __future__ import annotations

import glob
import gzip
import io
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator, Literal, Optional, get_args

from ..config import check_mapping
from ..environment import offline
from ..utils import is_hub_id

Format = Literal["auto", "hub", "jsonl", "json", "parquet", "txt"]
FORMATS = get_args(Format)
LOCAL_FORMATS = FORMATS[2:]
_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", ".txt": "txt"}
_COMPRESSION = (".gz", ".zst")


@dataclass
class Filter:
    """Keep a row only if ``field`` (dotted path into nested objects) is in ``in_`` / not in ``not_in``. In YAML:
    ``{field: meta.redpajama_set_name, not_in: [RedPajamaGithub]}`` or ``{field: ..., in: [...]}``."""

    field: str
    in_: Optional[list] = None  # the YAML key ``in`` (a Python keyword)
    not_in: Optional[list] = None

    def reason(self, row: dict) -> str | None:
        value = get_field(row, self.field)
        if value is _MISSING:
            return f"missing filter field {self.field}"
        if self.in_ is not None and value not in self.in_:
            return f"filtered: {self.field} not in {self.in_}"
        if self.not_in is not None and value in self.not_in:
            return f"filtered: {self.field} == {value!r}"
        return None

    @classmethod
    def from_dict(cls, raw: Any, where: str, errors: list[str]) -> "Filter | None":
        """One entry of a source's ``filters:``, checked by the config parser (``check_mapping``: unknown keys with
        the closest known one, types); every problem appended to ``errors``."""
        if not isinstance(raw, dict):
            errors.append(f"{where}: expected a mapping with 'field' and 'in' or 'not_in', got {raw!r}")
            return None
        n = len(errors)
        # ``in`` is the YAML key of the field ``in_``: renamed on the way in, and back in the messages
        mapped = {("in_" if k == "in" else f"{k} " if k == "in_" else k): v for k, v in raw.items()}
        values = check_mapping(cls, mapped, f"in {where}", errors)
        errors[n:] = [e.replace("'in_'", "'in'").replace("'in_ '", "'in_'") for e in errors[n:]]
        if not isinstance(values.get("field"), str) or not values["field"]:
            errors.append(f"'field' in {where}: required (the dotted name of the field to test)")
        given = [k for k in ("in", "not_in") if k in raw]
        if len(given) != 1:
            errors.append(f"{where}: give exactly one of 'in' or 'not_in'")
        elif raw[given[0]] is None:
            errors.append(f"'{given[0]}' in {where}: expected a list of values")
        if len(errors) > n:
            return None
        return cls(**values)

    def to_dict(self) -> dict:
        return {"field": self.field, **({"in": self.in_} if self.in_ is not None else {"not_in": self.not_in})}


@dataclass
class SourceEntry:
    """The keys of one source under ``sources:`` in a data config (see docs/data.md), checked and converted by the
    config parser (``tinyllama.config.check_mapping``)."""

    path: str  # Hub dataset id, or a local file, folder or glob
    format: Format = "auto"
    text_field: str = "text"
    filters: Optional[list] = field(default_factory=list)  # mappings, each a Filter (``SourceSpec``: the Filters)
    subset: Optional[str] = None  # Hub: the dataset's config name
    data_dir: Optional[str] = None  # Hub: a sub-folder (e.g. Starcoderdata's per-language "python")
    data_files: Any = None  # Hub: file patterns, passed to datasets.load_dataset
    split: str = "train"
    revision: Optional[str] = None
    max_documents: Optional[int] = None  # stop after this many documents (a smoke test of a real config)
    dedup: Any = None  # this source's own dedup: / decontaminate: (None: the config's top-level value)
    decontaminate: Any = None


@dataclass
class SourceSpec(SourceEntry):
    """One raw corpus: its entry under ``sources:`` and its name (the key, and the folder it is prepared into)."""

    name: str = field(kw_only=True)

    @classmethod
    def from_dict(cls, name: str, spec: Any, errors: list[str]) -> "SourceSpec | None":
        """Build from a YAML mapping, appending every problem to ``errors``: unknown keys (with the closest known
        one) and mistyped values from the config parser, then what types cannot say."""
        where = f"sources.{name}"
        n_errors = len(errors)
        if not isinstance(spec, dict):
            errors.append(f"{where}: expected a mapping with at least 'path', got {spec!r}")
            return None
        values = check_mapping(SourceEntry, spec, f"in {where}", errors)
        if not values.get("path"):
            errors.append(f"'path' in {where}: required (a Hub dataset id or local files)")
        for key in ("text_field", "split"):
            if key in values and not values[key]:
                errors.append(f"'{key}' in {where}: expected a non-empty string")
        md = values.get("max_documents")
        if md is not None and md < 1:
            errors.append(f"'max_documents' in {where}: expected a positive integer, got {md!r}")
        filters = [Filter.from_dict(f, f"{where}.filters[{k}]", errors)
                   for k, f in enumerate(values.get("filters") or [])]  # (``filters:`` left empty: none)
        if len(errors) > n_errors:
            return None
        return cls(name=name, **{**values, "filters": filters})

    KEYS = tuple(f.name for f in fields(SourceEntry))  # the YAML keys, in the manifest's order

    def to_dict(self) -> dict:
        # the screening keys only when given: manifests written before they existed still compare equal
        out = {k: getattr(self, k) for k in self.KEYS if k != "filters"
               and not (k in ("dedup", "decontaminate") and getattr(self, k) is None)}
        out["filters"] = [f.to_dict() for f in self.filters]
        return out


_MISSING = object()


@dataclass(frozen=True)
class Bad:
    """A row that could not be read as an object; counted in the manifest under ``reason``."""

    reason: str


def get_field(row: dict, dotted: str):
    """``row["a"]["b"]`` for ``"a.b"``; a JSON string on the way is parsed (proof-pile-2 stores ``meta`` as one)."""
    value: Any = row
    for part in dotted.split("."):
        if isinstance(value, str) and value[:1] == "{":
            try:
                value = json.loads(value)
            except ValueError:
                return _MISSING
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


# ---- resolving a source ----------------------------------------------------------------------------------------
def _file_format(path: Path) -> str | None:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSION:
        suffixes = suffixes[:-1]
    return _SUFFIXES.get(suffixes[-1]) if suffixes else None


def is_hub(spec: SourceSpec) -> bool:
    if spec.format == "hub":
        return True
    if spec.format != "auto" or Path(spec.path).exists() or glob.has_magic(spec.path):
        return False
    return is_hub_id(spec.path) and _file_format(Path(spec.path)) is None


def local_files(spec: SourceSpec) -> list[tuple[Path, str]]:
    """The files of a local source in a fixed (sorted) order, each with its format; raise if there are none."""
    p = Path(spec.path)
    if glob.has_magic(spec.path):
        files = sorted(Path(f) for f in glob.glob(spec.path, recursive=True) if Path(f).is_file())
        if not files:
            raise FileNotFoundError(f"source '{spec.name}': no file matches {spec.path!r}")
    elif p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and _file_format(f) and not f.name.startswith("."))
        if not files:
            raise FileNotFoundError(f"source '{spec.name}': no .jsonl/.json/.parquet/.txt file under {p}")
    elif p.is_file():
        files = [p]
    else:
        raise FileNotFoundError(f"source '{spec.name}': path not found: {spec.path}")
    out = []
    for f in files:
        fmt = spec.format if spec.format in LOCAL_FORMATS else _file_format(f)
        if fmt is None:
            raise ValueError(f"source '{spec.name}': cannot tell the format of {f} from its name; set format: "
                             f"{'/'.join(LOCAL_FORMATS)}")
        if f.suffix.lower() == ".zst":
            try:
                import zstandard  # noqa: F401
            except ImportError:
                raise ValueError(f"source '{spec.name}': {f} is zstd-compressed: pip install zstandard") from None
        out.append((f, fmt))
    return out


def _open_binary(path: Path):
    if path.suffix.lower() == ".gz":
        return gzip.open(path, "rb")
    if path.suffix.lower() == ".zst":
        import zstandard

        return io.BufferedReader(zstandard.open(path, "rb"))
    return open(path, "rb")


def describe_location(where: dict) -> str:
    """``SourceReader.locate``'s location in words: ``train.jsonl line 7``, ``x.parquet row 3``, ``row 12``."""
    if "file" not in where:
        return f"row {where['row']}"
    if "line" in where:
        return f"{where['file']} line {where['line']}"
    return f"{where['file']} row {where['file_row']}" if "file_row" in where else where["file"]


# ---- rows ------------------------------------------------------------------------------------------------------
@dataclass
class Position:
    """Where reading stopped: the next row to read is row ``row`` of file ``file`` (byte ``offset`` in a jsonl)."""

    file: int = 0
    row: int = 0
    offset: int = 0

    def to_dict(self) -> dict:
        return {"file": self.file, "row": self.row, "offset": self.offset}


@dataclass
class RowParser:
    """Turn a record (a raw jsonl line, or an already decoded row) into ``(text, None)`` or ``(None, skip reason)``.

    Runs in the tokenizer worker processes, so that parsing JSON scales with the workers instead of loading the
    main process, which only reads raw lines and writes shards.
    """

    spec: SourceSpec

    def row(self, record) -> "dict | Bad":
        if isinstance(record, (bytes, bytearray)):
            if not record.strip():
                return Bad("blank line")
            try:
                text = record.decode("utf-8")
            except UnicodeDecodeError:
                return Bad("invalid UTF-8")
            try:
                obj = json.loads(text)
            except ValueError:
                return Bad("invalid JSON")
            if not isinstance(obj, dict):
                return Bad("row is not a JSON object")
            if b"\\ud" in record or b"\\uD" in record:  # an escaped lone surrogate is not valid text
                try:
                    json.dumps(obj, ensure_ascii=False).encode("utf-8")
                except UnicodeEncodeError:
                    return Bad("invalid UTF-8")
            return obj
        return record

    def parse(self, record) -> tuple[str | None, str | None]:
        row = self.row(record)
        if isinstance(row, Bad):
            return None, row.reason
        spec = self.spec
        text = get_field(row, spec.text_field)
        if text is _MISSING or text is None:
            return None, f"missing field {spec.text_field}"
        if not isinstance(text, str):
            return None, f"{spec.text_field} is not a string"
        for f in spec.filters:
            reason = f.reason(row)
            if reason:
                return None, reason
        if not text:
            return None, "empty text"
        return text, None


class SourceReader:
    """Iterate the records of a source from a position: ``(record, position after it)``, where a record is a raw
    jsonl line (bytes), a decoded row (dict) or a ``Bad`` row; ``RowParser`` makes documents of them."""

    def __init__(self, spec: SourceSpec):
        self.spec = spec
        self.parser = RowParser(spec)
        self._peeking = False
        self._lines: dict[int, bool] = {}  # file index -> a .json file holds JSON lines (not an array)
        self.hub = is_hub(spec)
        if self.hub:
            if not is_hub_id(spec.path) and spec.path not in ("json", "parquet", "text", "csv"):
                raise FileNotFoundError(f"source '{spec.name}': path not found: {spec.path}")
            if offline(datasets=True):
                raise ValueError(
                    f"source '{spec.name}': {spec.path!r} is not a local path, so it would be streamed from the "
                    f"Hugging Face Hub, but offline mode is on (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE). Go online, "
                    f"or point sources.{spec.name}.path at local files")
            self.files: list[tuple[Path, str]] = []
        else:
            self.files = local_files(spec)

    def describe(self) -> str:
        return f"{self.spec.path} (Hub)" if self.hub else f"{self.spec.path} ({len(self.files)} file(s))"

    def locate(self, row: int, pos: Position) -> dict:
        """Where a record is, for a person to find it: ``row``, its 1-based row number in the source (every row
        read counts, files in order), and for local files the ``file`` with the 1-based ``line`` in it (jsonl, and
        JSON lines in a .json file) or ``file_row`` (parquet, a JSON array; a txt file is one row). ``pos`` is the
        position after the record (as ``records`` yields it)."""
        if self.hub:
            return {"row": row}
        path, fmt = self.files[pos.file]
        out = {"row": row, "file": str(path)}
        if fmt == "txt":
            return out
        if fmt == "json" and self._json_lines(pos.file) or fmt == "jsonl":
            return {**out, "line": pos.row}
        return {**out, "file_row": pos.row}

    def _json_lines(self, i: int) -> bool:
        if i not in self._lines:
            with _open_binary(self.files[i][0]) as f:
                self._lines[i] = not f.read(1024).lstrip().startswith(b"[")
        return self._lines[i]

    # -- checks before any work --
    def check(self) -> None:
        """Fail now, naming the file, if the text field or a filter field is not in the data at all."""
        self._peeking = True
        try:
            first = next(self._rows(Position(), peek=True), None)
        finally:
            self._peeking = False
        if first is None:
            raise ValueError(f"source '{self.spec.name}': empty source, no rows in {self.describe()}")
        row, where = first
        row = self.parser.row(row)
        fields = [self.spec.text_field] + [f.field for f in self.spec.filters]
        for name in fields:
            if get_field(row, name) is _MISSING:
                have = ", ".join(sorted(row)) if isinstance(row, dict) else type(row).__name__
                kind = "text_field" if name == self.spec.text_field else "filter field"
                raise ValueError(f"source '{self.spec.name}': {where} has no field '{name}' ({kind}); its fields "
                                 f"are: {have}")

    def records(self, start: Position) -> Iterator[tuple[Any, Position]]:
        return self._rows(start)

    def rows(self, start: Position) -> Iterator[tuple[str | None, str | None, Position]]:
        """``(text or None, skip reason or None, position after the row)``, parsed here."""
        for record, pos in self._rows(start):
            text, reason = self.parser.parse(record)
            yield text, reason, pos

    def _rows(self, start: Position, peek: bool = False) -> Iterator[tuple[Any, Position]]:
        """Yield (record, position after it); with ``peek``, (first good record, where it is) and stop."""
        if self.hub:
            yield from self._hub_rows(start, peek)
            return
        for i in range(start.file, len(self.files)):
            path, fmt = self.files[i]
            at = start if i == start.file else Position(i, 0, 0)
            reader = {"jsonl": self._jsonl, "json": self._json, "parquet": self._parquet, "txt": self._txt}[fmt]
            for row, pos in reader(path, at):
                if peek:
                    if isinstance(self.parser.row(row), Bad):
                        continue  # a bad first row is counted later; look for the first good one
                    yield row, f"{path} row {pos.row}"
                    return
                yield row, pos

    def _jsonl(self, path: Path, at: Position):
        with _open_binary(path) as f:
            if at.offset:
                f.seek(at.offset)
            offset, row = at.offset, at.row
            for line in f:
                offset += len(line)
                row += 1
                yield line, Position(at.file, row, offset)

    def _json(self, path: Path, at: Position):
        if self._json_lines(at.file):
            yield from self._jsonl(path, at)  # JSON lines in a .json file, as datasets accepts too
            return
        try:
            with _open_binary(path) as f:
                rows = json.loads(f.read().decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise ValueError(f"source '{self.spec.name}': {path} is not a valid JSON array ({e})") from None
        for row in range(at.row, len(rows)):
            obj = rows[row]
            yield (obj if isinstance(obj, dict) else Bad("row is not a JSON object")), Position(at.file, row + 1, 0)

    def _parquet(self, path: Path, at: Position):
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        names = pf.schema_arrow.names
        wanted = {f.split(".")[0] for f in [self.spec.text_field] + [f.field for f in self.spec.filters]}
        # only the columns the text and the filters need (all of them when peeking, to name them in an error)
        columns = None if self._peeking else [c for c in names if c in wanted]
        row = 0
        for rg in range(pf.num_row_groups):
            n = pf.metadata.row_group(rg).num_rows
            if row + n <= at.row:  # resuming: skip whole row groups without reading them
                row += n
                continue
            table = pf.read_row_group(rg, columns=columns)
            skip = at.row - row if at.row > row else 0
            row += skip
            for batch in table.slice(skip).to_batches(max_chunksize=4096):
                for obj in batch.to_pylist():
                    row += 1
                    yield obj, Position(at.file, row, 0)

    def _txt(self, path: Path, at: Position):
        if at.row > 0:
            return
        data = path.read_bytes()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            yield Bad("invalid UTF-8"), Position(at.file, 1, 0)
            return
        yield {self.spec.text_field: text}, Position(at.file, 1, 0)

    def _hub_rows(self, start: Position, peek: bool):
        import datasets

        spec = self.spec
        try:
            ds = datasets.load_dataset(spec.path, name=spec.subset, data_dir=spec.data_dir,
                                       data_files=spec.data_files, split=spec.split, revision=spec.revision,
                                       streaming=True)
        except Exception as e:  # not found, gated, no such split/config: say which source, keep the cause
            raise ValueError(f"source '{spec.name}': cannot stream {spec.path!r} from the Hub: "
                             f"{type(e).__name__}: {e}") from None
        if start.row:
            ds = ds.skip(start.row)
        row = start.row
        for obj in ds:
            row += 1
            if peek:
                yield obj, f"{spec.path} row {row}"
                return
            yield obj, Position(0, row, 0)
