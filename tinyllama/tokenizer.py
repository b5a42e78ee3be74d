"""SentencePiece-exact fast tokenizers: one tokenization from the data to every runtime.

TinyLlama's pretraining data was tokenized with SentencePiece (the Llama-2 ``tokenizer.model``; lit_gpt's Tokenizer
uses it when the folder has one), so a checkpoint has only ever seen SentencePiece's ids. The fast (Rust) tokenizer
that transformers uses must give the same ids, or continued pretraining, fine-tuning and inference feed the model
token sequences it never saw, silently. transformers 5.24's own conversion of the Llama-2 ``tokenizer.model``
(``LlamaTokenizer.from_pretrained`` on a folder holding it) does not: it disagreed with SentencePiece on 167 of 168
standard-library files and 181 of 191 prose documents (docs/data.md, "Tokenizer fidelity": figures and command).

- :func:`fast_tokenizer_from_sentencepiece` builds a fast tokenizer from a SentencePiece BPE ``tokenizer.model`` that
  reproduces SentencePiece's ids; :func:`save_tokenizer_folder` saves it (with ``tokenizer.model`` copied in) as a
  folder that ``AutoTokenizer.from_pretrained`` loads unchanged.
- :func:`compare_with_sentencepiece` measures how far a fast tokenizer is from SentencePiece on some texts.
- :func:`check_tokenizer` is the guard data preparation runs before writing any shard
  (``tinyllama.data.prepare.check_preparation_tokenizer`` gives it the first documents of each source).
"""

from __future__ import annotations

import collections
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

log = logging.getLogger(__name__)

SENTENCEPIECE_FILE = "tokenizer.model"
# ``TokenizersBackend`` (alias ``PreTrainedTokenizerFast``) loads tokenizer.json as it is. A model-specific class
# such as ``LlamaTokenizer`` has its own ``__init__``: transformers 5.24 then keeps only the vocabulary and merges of
# tokenizer.json and rebuilds the rest (a ``Metaspace`` pre-tokenizer, no normalizer), which loses the
# SentencePiece-exact normalizer below (models/auto/tokenization_auto.py, TokenizersBackend.convert_to_native_format).
TOKENIZER_CLASS = "TokenizersBackend"
CONVERT_HINT = "python scripts/convert_tokenizer.py {source} --out <new folder>"


def load_proto(model_file: str | os.PathLike):
    """The SentencePiece ``ModelProto`` of ``model_file`` (pieces, scores, types, trainer and normalizer specs)."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(Path(model_file).read_bytes())
    return proto


def fast_tokenizer_from_sentencepiece(model_file: str | os.PathLike, model_max_length: int = 2048,
                                      chat_template: str | None = None, pad_token: str | None = None):
    """A transformers fast tokenizer that encodes like ``SentencePieceProcessor(model_file).encode`` (plus BOS).

    The BPE model (vocabulary in SentencePiece's id order, byte fallback, user-defined pieces kept whole) comes from
    transformers' own ``SpmConverter.build_tokenizer_from_spm_proto``, with the merges of :func:`score_ranked_merges`.

    The normalizer is written here: Llama-2's legacy ``Prepend("▁")`` + ``Replace(" ", "▁")``, no pre-tokenizer.
    SentencePiece's ``add_dummy_prefix`` prepends '▁' to every text, even one that starts with a space
    (' leading' -> '▁', '▁leading'); a ``Metaspace`` pre-tokenizer with prepend_scheme 'first' (what
    ``LlamaTokenizer`` builds) does not. With the merges below but that pre-tokenizer, on Llama-2's model, 33 of 191
    prose documents and 4 of the 28 ``EDGE_CASES`` still differed (0 of 168 code files; measured 2026-12-02 on the
    ``builtin_sample``). transformers' builder gets this right too (it doubles a leading '▁' before its
    ``Metaspace``), but data preparation encodes the pieces of a long document after the first without the
    start-of-text marker (``tinyllama.data.tokenize.continuation_tokenizer`` drops a ``Prepend``), which a doubled
    '▁' would break.
    """
    from tokenizers import AddedToken, Regex, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import SpmConverter

    proto = load_proto(model_file)
    spec, norm = proto.trainer_spec, proto.normalizer_spec
    if spec.model_type != 2:  # TrainerSpec.ModelType: UNIGRAM = 1, BPE = 2
        raise ValueError(f"{model_file}: a SentencePiece {spec.ModelType.Name(spec.model_type)} model; this "
                         f"converter handles BPE models (Llama-2, TinyLlama, the demo)")
    unsupported = [name for name, bad in [
        ("a precompiled normalization rule (e.g. nmt_nfkc)", bool(norm.precompiled_charsmap)),
        ("remove_extra_whitespaces", norm.remove_extra_whitespaces),
        ("escape_whitespaces false", not norm.escape_whitespaces),
        ("treat_whitespace_as_suffix", spec.treat_whitespace_as_suffix)] if bad]
    if unsupported:
        raise ValueError(f"{model_file}: normalizer settings this converter does not reproduce: "
                         f"{', '.join(unsupported)} (Llama-2's model uses identity normalization)")
    vocab = {piece.piece: i for i, piece in enumerate(proto.pieces)}
    if len(vocab) != len(proto.pieces):
        raise ValueError(f"{model_file}: duplicate pieces")
    tok = SpmConverter.build_tokenizer_from_spm_proto(proto=proto, vocab=vocab, merges=score_ranked_merges(proto),
                                                      legacy=True)

    norms = [normalizers.Prepend("▁")] if norm.add_dummy_prefix else []
    tok.normalizer = normalizers.Sequence(norms + [normalizers.Replace(" ", "▁")])
    user_defined = [p.piece for p in proto.pieces if p.type == p.USER_DEFINED]
    tok.pre_tokenizer = None if not user_defined else pre_tokenizers.Split(
        Regex("|".join(re.escape(p) for p in sorted(user_defined, key=len, reverse=True))), behavior="isolated")

    # <unk> (UNKNOWN) and the CONTROL pieces (<s>, </s>) are special tokens, as in Llama's tokenizer. SentencePiece
    # itself never matches them in text ('<s>' in a document is spelled in characters); a fast tokenizer does.
    specials = [p.piece for p in proto.pieces if p.type in (p.UNKNOWN, p.CONTROL)]
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    bos = spec.bos_piece if spec.bos_id >= 0 else None
    if bos is not None:  # Llama: BOS before every sequence (and before the second of a pair), no EOS
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, spec.bos_id)])
    kwargs = {"unk_token": spec.unk_piece if spec.unk_id >= 0 else None, "bos_token": bos,
              "eos_token": spec.eos_piece if spec.eos_id >= 0 else None,
              "pad_token": pad_token or (spec.pad_piece if spec.pad_id >= 0 else None)}
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, model_max_length=model_max_length, clean_up_tokenization_spaces=False,
        **{k: v for k, v in kwargs.items() if v is not None})
    if chat_template:
        fast.chat_template = chat_template
    return fast


def score_ranked_merges(proto) -> list[tuple[str, str]]:
    """The merges of a SentencePiece BPE model in the order SentencePiece applies them.

    SentencePiece BPE merges, at each step, the adjacent pair whose merged piece has the highest score, and among
    equal scores the leftmost pair (``SymbolPairComparator`` in sentencepiece's bpe_model.cc). A ``tokenizers`` BPE
    merges the pair of lowest rank (list position), then the leftmost. So the list must be in descending score:
    ``LlamaTokenizer.from_pretrained`` on a bare ``tokenizer.model`` orders it by the id of the merged piece
    (``generate_merges`` without scores), which puts Llama-2's whitespace pieces '▁▁', '▁▁▁', ... (score -1e9:
    merged last) first; 167 of 168 standard-library files then encoded differently from SentencePiece.

    Ties are why this is written here rather than taken from ``SpmConverter.build_tokenizer_from_spm_proto`` (which
    breaks them by piece id). A ranked list cannot say "leftmost among equals"; Llama-2's ties are its 15
    whitespace-run pieces, all at -1e9, and on a run of spaces SentencePiece's leftmost rule grows the leftmost piece
    first, which ranking the longer left part first reproduces. Measured once on runs of 1-100 spaces in 7 contexts
    and the 76 demo-corpus code files, with the demo model re-scored like Llama-2: 78 of the 700 runs (and 35 of the 76
    files) differed with ties broken by id, none with the longer left part first; tests/test_tokenizer.py keeps
    both checks. (On Llama-2's own model both orders agreed on everything measured.)
    Only NORMAL pieces merge: byte, control and user-defined pieces are never the result of a merge.
    """
    normal = {p.piece: p.score for p in proto.pieces if p.type == p.NORMAL}
    ranked = []
    for piece, score in normal.items():
        for k in range(1, len(piece)):
            left, right = piece[:k], piece[k:]
            if left in normal and right in normal:
                ranked.append((-score, -len(left), len(right), left, right))
    return [(left, right) for *_, left, right in sorted(ranked)]


def save_tokenizer_folder(model_file: str | os.PathLike, out_dir: str | os.PathLike, model_max_length: int = 2048,
                          chat_template: str | None = None, pad_token: str | None = None,
                          check_texts: Sequence[str] = ()) -> Path:
    """Write a SentencePiece-exact tokenizer folder: ``tokenizer.model`` (copied), ``tokenizer.json``,
    ``tokenizer_config.json`` (and the chat template); check that ``AutoTokenizer`` loads it back unchanged and, on
    ``check_texts``, gives SentencePiece's ids (else raise and write nothing). Returns ``out_dir``."""
    from transformers import AutoTokenizer

    from .utils import atomic_dir

    model_file, out_dir = Path(model_file), Path(out_dir)
    fast = fast_tokenizer_from_sentencepiece(model_file, model_max_length, chat_template, pad_token)
    if check_texts:
        result = compare_with_sentencepiece(fast, model_file, check_texts)
        if not result.exact:
            raise TokenizerMismatch(f"{model_file}: the converted tokenizer does not reproduce SentencePiece on the "
                                    f"check texts (nothing written): {result.summary()}")
    with atomic_dir(out_dir) as tmp:
        fast.save_pretrained(tmp)
        config_path = tmp / "tokenizer_config.json"
        config = json.loads(config_path.read_text(encoding="utf-8"))
        if config.get("tokenizer_class") != TOKENIZER_CLASS:
            raise RuntimeError(f"save_pretrained wrote tokenizer_class {config.get('tokenizer_class')!r}, expected "
                               f"{TOKENIZER_CLASS!r} (which loads tokenizer.json unchanged)")
        shutil.copyfile(model_file, tmp / SENTENCEPIECE_FILE)
        reloaded = AutoTokenizer.from_pretrained(str(tmp))
        if reloaded.backend_tokenizer.to_str() != fast.backend_tokenizer.to_str():
            raise RuntimeError(f"AutoTokenizer does not load {out_dir} unchanged (it loaded a "
                               f"{type(reloaded).__name__}); transformers may have rebuilt it from tokenizer.model")
    return out_dir


# ---- carrying tokenizer.model along -------------------------------------------------------------------------------


def sentencepiece_file_of(tokenizer) -> Path | None:
    """The ``tokenizer.model`` of the folder (or Hub id, if cached) that ``tokenizer`` (a loaded tokenizer, or its
    name) was loaded from, if any."""
    source = str(tokenizer if isinstance(tokenizer, (str, os.PathLike)) else getattr(tokenizer, "name_or_path", "")
                 or "")
    if not source:
        return None
    path = Path(source) / SENTENCEPIECE_FILE
    if path.is_file():
        return path
    if not Path(source).exists():  # a Hub id: transformers downloaded tokenizer.model when its class asked for it
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(source, SENTENCEPIECE_FILE)
        except Exception:  # not a valid repo id
            return None
        if isinstance(cached, str) and Path(cached).is_file():
            return Path(cached)
    return None


def save_tokenizer(tokenizer, out_dir: str | os.PathLike) -> Path | None:
    """``tokenizer.save_pretrained(out_dir)``, then :func:`copy_sentencepiece_model`."""
    tokenizer.save_pretrained(out_dir)
    return copy_sentencepiece_model(tokenizer, out_dir)


def copy_sentencepiece_model(tokenizer, out_dir: str | os.PathLike) -> Path | None:
    """Copy the ``tokenizer.model`` of the folder ``tokenizer`` was loaded from into ``out_dir`` (if it has one).

    transformers 5.24's ``TokenizersBackend.save_pretrained`` writes tokenizer.json and tokenizer_config.json only,
    so every export would lose the SentencePiece model that llama.cpp's GGUF conversion and lit_gpt read. It is
    copied only while the tokenizer still has exactly its pieces (an extended vocabulary would make it stale).
    Returns the copied file, or None."""
    out_dir = Path(out_dir)
    source = sentencepiece_file_of(tokenizer)
    if source is None or (out_dir / SENTENCEPIECE_FILE).exists():
        return None
    proto = load_proto(source)
    vocab = tokenizer.get_vocab()
    if len(tokenizer) != len(proto.pieces) or any(vocab.get(p.piece) != i for i, p in enumerate(proto.pieces)):
        log.warning("%s not copied to %s: the tokenizer (%d tokens) no longer matches it (%d pieces)",
                    source, out_dir, len(tokenizer), len(proto.pieces))
        return None
    shutil.copyfile(source, out_dir / SENTENCEPIECE_FILE)
    return out_dir / SENTENCEPIECE_FILE


def extend_sentencepiece_model(model_file: str | os.PathLike, new_pieces: Sequence[str], fast_tokenizer,
                               out_file: str | os.PathLike) -> Path | None:
    """Write ``model_file`` with ``new_pieces`` (single characters, appended to a fast tokenizer's BPE vocabulary
    with the next ids: tinyllama/vocab.py) appended as NORMAL pieces, so that SentencePiece keeps giving the fast
    tokenizer's ids; check that on a probe and return ``out_file``, or log why not and write nothing (None).

    A single character is never the result of a merge, so no merge changes; SentencePiece's BPE looks every
    character up in its pieces before falling back to bytes, so the character becomes its piece. The score (below
    every other piece) only matters for merges, of which it takes part in none."""
    proto = load_proto(model_file)
    have = {p.piece for p in proto.pieces}
    if any(len(c) != 1 or c in have for c in new_pieces):
        raise ValueError(f"new pieces must be single characters not in {model_file}")
    low = min((p.score for p in proto.pieces), default=0.0)
    first_id = len(proto.pieces)
    for k, c in enumerate(new_pieces):
        piece = proto.pieces.add()
        piece.piece, piece.score, piece.type = c, low - 1 - k, piece.NORMAL
    if proto.trainer_spec.vocab_size:
        proto.trainer_spec.vocab_size = len(proto.pieces)
    out_file = Path(out_file)
    out_file.write_bytes(proto.SerializeToString())
    probe = ["".join(new_pieces), " " + " ".join(new_pieces) + " ab12 \n\t  x😀", f"a{new_pieces[0]}b"]
    result = compare_with_sentencepiece(fast_tokenizer, out_file, probe)
    ids = [fast_tokenizer.convert_tokens_to_ids(c) for c in new_pieces]
    if not result.exact or ids != list(range(first_id, first_id + len(new_pieces))):
        out_file.unlink()
        log.warning("%s dropped: extended with the new pieces it still does not encode like the fast tokenizer "
                    "(%s); only tokenizer.json is saved", SENTENCEPIECE_FILE, result.summary())
        return None
    log.info("%s extended with %d pieces (ids %d..%d)", SENTENCEPIECE_FILE, len(new_pieces), first_id,
             first_id + len(new_pieces) - 1)
    return out_file


# ---- measuring agreement ---------------------------------------------------------------------------------------


@dataclass
class Agreement:
    """How a fast tokenizer's ids compare with SentencePiece's on some texts (no BOS/EOS on either side)."""

    documents: int = 0
    differing_documents: int = 0
    tokens_sentencepiece: int = 0
    tokens_fast: int = 0
    differing_tokens: int = 0  # SentencePiece tokens the fast side lacks (multiset difference, per document)
    first_difference: dict | None = None  # document index, then the pieces of each side around the first difference
    differing_indices: list[int] = field(default_factory=list)

    @property
    def exact(self) -> bool:
        return self.differing_documents == 0

    @property
    def document_rate(self) -> float:
        return self.differing_documents / max(self.documents, 1)

    @property
    def token_count_difference(self) -> float:
        """(fast tokens - SentencePiece tokens) / SentencePiece tokens."""
        return (self.tokens_fast - self.tokens_sentencepiece) / max(self.tokens_sentencepiece, 1)

    def summary(self) -> str:
        text = (f"{self.differing_documents} of {self.documents} documents differ ({self.document_rate:.1%}); "
                f"{self.differing_tokens} of {self.tokens_sentencepiece} SentencePiece tokens differ; token count "
                f"{self.tokens_fast} vs {self.tokens_sentencepiece} ({self.token_count_difference:+.3%})")
        if self.first_difference:
            d = self.first_difference
            text += (f"\n  first difference, document {d['document']} at token {d['position']} "
                     f"(text {d['text']!r}):\n    sentencepiece: {d['sentencepiece']}\n    fast:          {d['fast']}")
        return text


def sentencepiece_processor(model_file: str | os.PathLike):
    import sentencepiece

    return sentencepiece.SentencePieceProcessor(model_file=str(model_file))


def compare_with_sentencepiece(fast_tokenizer, sp, texts: Sequence[str]) -> Agreement:
    """Encode ``texts`` with both (``sp``: a ``SentencePieceProcessor`` or a ``tokenizer.model`` path) and count
    the documents and tokens where the ids differ; keep the first difference, as pieces, for the message."""
    if isinstance(sp, (str, os.PathLike)):
        sp = sentencepiece_processor(sp)
    backend = getattr(fast_tokenizer, "backend_tokenizer", fast_tokenizer)  # a transformers or a tokenizers object
    texts = list(texts)
    expected = sp.encode(texts)
    got = [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]
    result = Agreement(documents=len(texts))
    for i, (a, b) in enumerate(zip(expected, got)):
        result.tokens_sentencepiece += len(a)
        result.tokens_fast += len(b)
        if a == b:
            continue
        result.differing_documents += 1
        result.differing_indices.append(i)
        result.differing_tokens += sum((collections.Counter(a) - collections.Counter(b)).values())
        if result.first_difference is None:
            pos = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            lo = max(pos - 2, 0)
            offsets = backend.encode(texts[i], add_special_tokens=False).offsets
            start = offsets[lo][0] if lo < len(offsets) else len(texts[i])
            result.first_difference = {
                "document": i, "position": pos, "text": texts[i][start:start + 40],
                "sentencepiece": [sp.id_to_piece(t) for t in a[lo:pos + 6]],
                "fast": [backend.id_to_token(t) for t in b[lo:pos + 6]]}
    return result


# What breaks converters: indentation, runs of spaces, a leading space (SentencePiece's dummy prefix is added even
# then), tabs, newlines, Chinese, emoji and rare characters (byte fallback), digits (split one by one).
EDGE_CASES = [
    "def f(x):\n    if x:\n        return x ** 2  # comment\n\treturn 0\n",
    "a  b   c    d", " leading", "  two leading", "trailing  ", " ", "  ", "\n", "\t\tx", "x\n\n\n  y",
    "床前明月光，疑是地上霜。举头望明月，低头思故乡。", "emoji 😀🎉 and ☃ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 龘", "12345 + 6.78 = 12351.78; 2024-01-01",
    "ünïcödé naïve café", "x\u3000y\u00a0z\u200bw", "<0x41> ▁ ▁▁ literal",
] + [t for n in (3, 7, 11, 17, 21, 33) for t in ("x" + " " * n + "y", "\n" + " " * n + "return")]


# ---- the guard of data preparation ------------------------------------------------------------------------------


def differing_tokens(vocab_a: dict[str, int], vocab_b: dict[str, int]) -> list[str]:
    """The tokens (of either vocabulary, sorted) that the two token -> id maps give different ids, or only one has:
    empty when two tokenizers share a vocabulary (what a distillation teacher and its student must)."""
    return sorted(t for t in set(vocab_a) | set(vocab_b) if vocab_a.get(t) != vocab_b.get(t))


class TokenizerMismatch(ValueError):
    """A fast tokenizer does not encode like the SentencePiece model it comes with."""


def check_tokenizer(name: str, texts: Sequence[str], tokenizer=None) -> Agreement | None:
    """Compare the fast tokenizer ``name`` (a folder or Hub id; ``tokenizer``: it already loaded, a transformers or
    ``tokenizers`` object) with the ``tokenizer.model`` it comes with on ``texts``; raise :class:`TokenizerMismatch`
    (one message: the rate, the first differing pieces, the fix) if any ids differ.

    Returns ``None``, checking nothing, when there is no ``tokenizer.model`` (in the folder, or for a Hub id in the
    local cache, where transformers puts it when the tokenizer's class reads it)."""
    model_file = sentencepiece_file_of(name)
    if model_file is None:
        log.info("tokenizer %s: no %s beside it; SentencePiece agreement not checked", name, SENTENCEPIECE_FILE)
        return None
    if tokenizer is None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(name)
    result = compare_with_sentencepiece(tokenizer, model_file, [t for t in texts if t])
    if not result.exact:
        raise TokenizerMismatch(
            f"tokenizer {name!r}: its fast tokenizer (tokenizer.json, what preparation uses) and its "
            f"{SENTENCEPIECE_FILE} give different ids on a sample of the data: {result.summary()}\n"
            f"TinyLlama and Llama-2 were pretrained on SentencePiece's ids: data prepared with this tokenizer.json "
            f"would not match what the checkpoint saw. Fix: write a SentencePiece-exact tokenizer folder with `"
            f"{CONVERT_HINT.format(source=name)}` and prepare with --tokenizer <new folder> (and use that folder in "
            f"training and inference too); or set `tokenizer_check: false` in the data config to prepare with this "
            f"tokenizer.json anyway.")
    log.info("tokenizer %s: tokenizer.json agrees with its %s on %d sampled documents (%d tokens)", name,
             SENTENCEPIECE_FILE, result.documents, result.tokens_sentencepiece)
    return result
