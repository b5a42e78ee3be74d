"""Tokenization for preparation: load a fast tokenizer, fingerprint it, split very long documents, encode batches.

This module is imported by the worker processes, so it imports neither torch nor transformers at module level.

Long documents are split at line boundaries into pieces of at most ``max_chars`` characters before encoding, and the
pieces' ids are concatenated. Two reasons: the Llama-2 fast tokenizer's ``Replace`` normalizer was quadratic in the
length of its input before tokenizers 0.19 (a 400k-character document took over 20 s), and one huge document would
otherwise stall a worker and its whole batch. A piece other than the first must be encoded *without* the
start-of-text marker that SentencePiece-style tokenizers prepend (Llama's ``Prepend("▁")`` normalizer, or a
``Metaspace`` pre-tokenizer), or decoding would put a space at every cut: ``continuation_tokenizer`` derives that
variant, and ``Encoder`` checks at start-up that decoding the concatenation gives back the text.
"""

from __future__ import annotations

import array
import copy
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..environment import offline


@dataclass(frozen=True)
class TokenizerInfo:
    name: str
    hash: str  # sha256 of the backend tokenizer's canonical JSON
    vocab_size: int  # len(tokenizer): every id the tokenizer can produce, added tokens included
    bos_token_id: int | None
    eos_token_id: int | None
    json: str  # the backend tokenizer, serialized (what the workers load)
    continuation_json: str  # the same without its start-of-text marker (``continuation_tokenizer``)

    def to_dict(self) -> dict:
        return {"name": self.name, "hash": self.hash, "vocab_size": self.vocab_size,
                "bos_token_id": self.bos_token_id, "eos_token_id": self.eos_token_id}


def load_tokenizer(name_or_path: str) -> TokenizerInfo:
    """Load a fast tokenizer (local folder or Hub id) and describe it; clear errors for the usual mistakes."""
    from transformers import AutoTokenizer

    local = Path(name_or_path).is_dir()
    try:
        tok = AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as e:
        if local:
            raise ValueError(f"tokenizer {name_or_path!r}: cannot load the folder: {e}") from None
        hint = (" Offline mode is on (HF_HUB_OFFLINE=1) and it is not in the Hugging Face cache: download it once "
                "online, or name a local tokenizer folder." if offline() else
                " Check the Hub id (and `huggingface-cli login` for a gated repo), or name a local tokenizer folder.")
        raise ValueError(f"tokenizer {name_or_path!r}: not a local folder and could not be loaded from the Hub.{hint}"
                         f" If it names a folder still to be made (configs/data/own-corpus.yaml's tokenizers/tinyllama"
                         f" is one), make it first, e.g. the SentencePiece-exact Llama-2 tokenizer TinyLlama was "
                         f"trained with: `python scripts/convert_tokenizer.py TinyLlama/TinyLlama_v1.1 --out "
                         f"{name_or_path}` (docs/data.md, \"Tokenizer fidelity\")") from None
    if not getattr(tok, "is_fast", False):
        raise ValueError(f"tokenizer {name_or_path!r} has no fast (Rust) implementation; preparation needs one")
    text = tok.backend_tokenizer.to_str()
    spec = json.loads(text)  # parsed once, for the hash and the continuation variant (a Llama-2 JSON: 0.1 s)
    canonical = json.dumps(spec, sort_keys=True, ensure_ascii=False)
    return TokenizerInfo(
        name=str(name_or_path),
        hash=hashlib.sha256(canonical.encode("utf-8")).hexdigest(),
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        json=text,
        continuation_json=continuation_tokenizer(spec),
    )


def continuation_tokenizer(tokenizer_json: str | dict) -> str:
    """The same tokenizer without its start-of-text marker, for the pieces of a split document after the first
    (``tokenizer_json``: the serialized tokenizer, or its parsed JSON, which is left unchanged)."""
    spec = json.loads(tokenizer_json) if isinstance(tokenizer_json, str) else dict(tokenizer_json)
    spec["normalizer"] = copy.deepcopy(spec.get("normalizer"))  # only these two parts are changed
    spec["pre_tokenizer"] = copy.deepcopy(spec.get("pre_tokenizer"))

    def normalizer(n):
        if not n:
            return n
        if n.get("type") == "Prepend":
            return None
        if n.get("type") == "Sequence":
            n["normalizers"] = [x for x in (normalizer(m) for m in n["normalizers"]) if x is not None]
        return n

    def pre_tokenizer(p):
        if not p:
            return p
        if p.get("type") == "Metaspace":
            p["prepend_scheme"] = "never"
            p.pop("add_prefix_space", None)
        elif p.get("type") == "ByteLevel":
            p["add_prefix_space"] = False
        elif p.get("type") == "Sequence":
            p["pretokenizers"] = [pre_tokenizer(m) for m in p["pretokenizers"]]
        return p

    spec["normalizer"] = normalizer(spec.get("normalizer"))
    spec["pre_tokenizer"] = pre_tokenizer(spec.get("pre_tokenizer"))
    return json.dumps(spec, ensure_ascii=False)


def split_text(text: str, max_chars: int) -> list[str]:
    """Cut ``text`` into pieces of at most ``max_chars`` characters, after a newline where there is one in reach,
    else before a space, else anywhere; ``"".join(pieces) == text``."""
    if max_chars <= 0 or len(text) <= max_chars:
        return [text]
    pieces, start, n = [], 0, len(text)
    while n - start > max_chars:
        end = start + max_chars
        cut = text.rfind("\n", start, end) + 1  # just after the last newline in reach
        if cut <= start:
            cut = text.rfind(" ", start + 1, end)  # before a space: the space starts the next piece, as it would
            if cut <= start:
                cut = end
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    return pieces


_PROBES = [("Hello world.\n", "  indented line\nnext"), ("a\n", "b c"), ("x", " y"), ("床前明月光，\n", "疑是地上霜。"),
           ("def f():\n", "    return 1\n")]


@dataclass(frozen=True)
class EncoderSpec:
    """Everything an ``Encoder`` is built from: what the main process hands to each worker process, once."""

    tokenizer_json: str
    continuation_json: str | None  # None: documents are never split (max_chars 0)
    bos_id: int | None
    eos_id: int | None
    max_chars: int
    dtype: str
    screens: dict[str, Any] = field(default_factory=dict)  # source name -> screen.ScreenSpec (dedup, decontam.)

    @classmethod
    def of(cls, tok: TokenizerInfo, bos_id: int | None, eos_id: int | None, max_chars: int, dtype: str,
           screens: dict[str, Any] | None = None):
        return cls(tok.json, tok.continuation_json if max_chars > 0 else None, bos_id, eos_id, max_chars, dtype,
                   dict(screens or {}))


class Encoder:
    """Encode batches of documents into one flat id array plus per-document lengths, applying the BOS/EOS policy."""

    def __init__(self, spec: EncoderSpec):
        from tokenizers import Tokenizer

        self.first = Tokenizer.from_str(spec.tokenizer_json)
        self.cont = Tokenizer.from_str(spec.continuation_json) if spec.max_chars > 0 else None
        self.bos = [] if spec.bos_id is None else [spec.bos_id]
        self.eos = [] if spec.eos_id is None else [spec.eos_id]
        self.max_chars = spec.max_chars
        self.dtype = np.dtype(spec.dtype)

    def check_splitting(self) -> None:
        """Raise ValueError if encoding a document in pieces would not decode back to the document."""
        if self.cont is None:
            return
        for a, b in _PROBES:
            ids = self.first.encode(a, add_special_tokens=False).ids
            if self.first.decode(ids) != a:
                continue  # a lossy tokenizer (e.g. NFKC, lowercasing): nothing to compare against
            ids = ids + self.cont.encode(b, add_special_tokens=False).ids
            if self.first.decode(ids) != a + b:
                raise ValueError(
                    f"this tokenizer does not decode a document split at a line boundary back to the document "
                    f"({a + b!r} came back as {self.first.decode(ids)!r}); set max_chars_per_piece: 0 to encode "
                    f"documents whole")

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Return (ids of all documents concatenated, number of ids per document)."""
        firsts, rest, owner = [], [], []
        for d, text in enumerate(texts):
            pieces = split_text(text, self.max_chars)
            firsts.append(pieces[0])
            if len(pieces) > 1:
                rest.extend(pieces[1:])
                owner.extend([d] * (len(pieces) - 1))
        encs = self.first.encode_batch_fast(firsts, add_special_tokens=False)
        cont = self.cont.encode_batch_fast(rest, add_special_tokens=False) if rest else []
        # Collect the ids in output order into one C array: array.extend(list) converts in C, and one conversion
        # to numpy at the end is cheaper than a numpy slice assignment per piece.
        flat = array.array("I")
        lengths = np.empty(len(texts), dtype=np.int64)
        j = 0
        for d, enc in enumerate(encs):
            start = len(flat)
            flat.extend(self.bos)
            flat.extend(enc.ids)
            while j < len(owner) and owner[j] == d:
                flat.extend(cont[j].ids)
                j += 1
            flat.extend(self.eos)
            lengths[d] = len(flat) - start
        out = np.frombuffer(flat, dtype=np.uint32)
        out = out.astype(self.dtype) if self.dtype != out.dtype else out.copy()
        return out, lengths


def encode_records(encoder: Encoder, parser, records: list, screener=None) -> tuple:
    """Parse and filter raw records (``readers.RowParser``), encode the documents: (ids, lengths, skip reason or
    None per record, what ``screener`` (``screen.Screener``) says of each document or None)."""
    texts, reasons = [], []
    for record in records:
        text, reason = parser.parse(record)
        reasons.append(reason)
        if reason is None:
            texts.append(text)
    screened = screener.screen(texts) if screener is not None else None
    if not texts:
        return np.empty(0, dtype=encoder.dtype), np.empty(0, dtype=np.int64), reasons, screened
    ids, lengths = encoder.encode(texts)
    return ids, lengths, reasons, screened


# ---- worker-process side ----------------------------------------------------------------------------------------
# A worker gets a queue from its initializer and takes one EncoderSpec from it (the main process puts one per
# worker, see prepare._WorkerPool): the spec (a Llama-2 tokenizer is about 2.5 MB of JSON with its continuation
# variant) crosses the process boundary once per worker, not once per batch.
_WORKER: dict = {}


def init_worker(specs) -> None:
    # One Rust thread per worker process: the pool provides the parallelism, rayon on top would oversubscribe.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _WORKER["specs"] = specs


def _worker_encoder() -> Encoder:
    if "encoder" not in _WORKER:
        spec = _WORKER["specs"].get()
        _WORKER["encoder"] = Encoder(spec)
        _WORKER["screens"] = spec.screens
        _WORKER["screeners"] = {}
    return _WORKER["encoder"]


def _worker_screener(source: str | None):
    if source is None or source not in _WORKER["screens"]:
        return None
    if source not in _WORKER["screeners"]:
        from .screen import Screener

        _WORKER["screeners"][source] = Screener(_WORKER["screens"][source])
    return _WORKER["screeners"][source]


def load_worker_encoder() -> int:
    """The task each worker is given at start: build its encoder and run the splitting check
    (``Encoder.check_splitting``, whose ValueError reaches the main process) while the main process checks the
    sources; the first batches then find the encoder ready."""
    _worker_encoder().check_splitting()
    return os.getpid()


def encode_in_worker(parser, records: list, source: str | None = None) -> tuple:
    encoder = _worker_encoder()
    return encode_records(encoder, parser, records, _worker_screener(source))
