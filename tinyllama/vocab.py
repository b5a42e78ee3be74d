"""A tokenizer's coverage of a language, and extending its vocabulary before continued pretraining on that language.

The Llama-2 tokenizer (and the demo's, the same kind: BPE with byte fallback) spells a character it has no token for
as its UTF-8 bytes, ``<0xE5><0xBA><0x8A>`` for 床: three tokens for one character, which costs context length,
compute and quality. TinyLlama's maintainers advised extending the vocabulary for a new language and mixing about
50% of it with SlimPajama (docs/reference.md, "What users asked"; configs/continual/chinese.yaml).

- :func:`coverage`: tokens per character, the share of tokens that are byte-fallback tokens, and the share of
  characters that have no token of their own (with the most frequent of them).
- :func:`extend_vocab`: add the most frequent byte-fallback characters of a sample as new tokens (entries of the BPE
  vocabulary, so they tokenize like every other character), resize the input embeddings and ``lm_head``, set every
  new row to the mean of the existing rows, and save model + tokenizer as one folder that ``init_from`` accepts.
  When the source folder has a ``tokenizer.model``, the same characters are appended to it as pieces with the same
  ids (checked), so SentencePiece-based runtimes (llama.cpp's GGUF conversion, lit_gpt) still tokenize alike.

After extending, prepare the data again with the new tokenizer (scripts/prepare_data.py --tokenizer <folder>), since
shards written with the old one never contain the new ids.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Iterable, Sequence

log = logging.getLogger(__name__)

BYTE_TOKEN = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")
EXTENSION_FILE = "vocab_extension.json"


def read_texts(data: str | os.PathLike, text_field: str = "text", max_docs: int | None = None) -> list[str]:
    """Texts from a .txt file (one document), a .jsonl file (``text_field``), or anything
    :func:`tinyllama.evaluation.load_texts` reads (.json/.parquet/.csv, a folder, a dataset name)."""
    path = Path(data)
    if path.is_file() and path.suffix == ".txt":
        texts = [path.read_text(encoding="utf-8")]
    elif path.is_file() and path.suffix == ".jsonl":
        texts = []
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    if text_field not in row:
                        raise ValueError(f"{path}: no field {text_field!r} in {sorted(row)}; set --text_field")
                    texts.append(row[text_field])
                if max_docs is not None and len(texts) >= max_docs:
                    break
    else:
        from .evaluation import load_texts

        texts = load_texts(data, text_field=text_field, split="train", max_samples=max_docs)
    texts = [t for t in texts if t][:max_docs]
    if not texts:
        raise ValueError(f"{data}: no non-empty texts")
    return texts


def _vocab(tokenizer) -> dict[str, int]:
    return tokenizer.get_vocab()


def byte_token_ids(tokenizer) -> set[int]:
    return {i for t, i in _vocab(tokenizer).items() if BYTE_TOKEN.match(t)}


def coverage(tokenizer, texts: Sequence[str], top: int = 20) -> dict:
    """How ``tokenizer`` encodes ``texts`` (special tokens left out; whitespace is not counted as characters)."""
    vocab = _vocab(tokenizer)
    byte_ids = byte_token_ids(tokenizer)
    if not byte_ids:
        log.warning("the tokenizer has no <0xNN> byte tokens: byte-fallback counts will be 0")
    chars = collections.Counter(c for t in texts for c in t if not c.isspace())
    n_chars = sum(chars.values())
    n_tokens = n_bytes = 0
    for t in texts:
        ids = tokenizer(t, add_special_tokens=False)["input_ids"]
        n_tokens += len(ids)
        n_bytes += sum(1 for i in ids if i in byte_ids)
    missing = {c: n for c, n in chars.items() if c not in vocab}
    return {
        "tokenizer": getattr(tokenizer, "name_or_path", None),
        "vocab_size": len(tokenizer),
        "documents": len(texts),
        "characters": n_chars,
        "tokens": n_tokens,
        "tokens_per_character": n_tokens / max(n_chars, 1),
        "byte_fallback_tokens": n_bytes,
        "byte_fallback_rate": n_bytes / max(n_tokens, 1),
        "distinct_characters": len(chars),
        "characters_without_token": len(missing),
        "character_occurrences_without_token": sum(missing.values()),
        "share_of_characters_without_token": sum(missing.values()) / max(n_chars, 1),
        "most_frequent_without_token": [[c, n] for c, n in sorted(missing.items(), key=lambda x: (-x[1], x[0]))[:top]],
    }


def new_characters(tokenizer, texts: Iterable[str], max_new: int, min_count: int = 1) -> list[str]:
    """The most frequent characters of ``texts`` that the tokenizer spells in bytes (no token of their own), at
    least ``min_count`` times, at most ``max_new`` of them, most frequent first (ties in code-point order)."""
    vocab = _vocab(tokenizer)
    counts = collections.Counter(c for t in texts for c in t if not c.isspace() and c not in vocab)
    ranked = sorted((c for c, n in counts.items() if n >= min_count), key=lambda c: (-counts[c], c))
    return ranked[:max_new]


def _added_tokenizer(tokenizer, new_tokens: Sequence[str], out_dir: Path):
    """Save ``tokenizer`` to ``out_dir`` with ``new_tokens`` (single characters) appended to its BPE vocabulary;
    returns the reloaded tokenizer and the new ids."""
    from transformers import AutoTokenizer

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model = spec.get("model", {})
    if model.get("type") != "BPE":
        raise ValueError(f"extend_vocab handles BPE tokenizers (Llama-2, the demo's); this one is {model.get('type')}")
    bad = [t for t in new_tokens if len(t) != 1 or t.isspace()]
    if bad:
        raise ValueError(f"new tokens must be single non-space characters (BPE symbols), got {bad[:10]}")
    vocab = model["vocab"]
    present = [t for t in new_tokens if t in vocab]
    if present:
        raise ValueError(f"already in the vocabulary: {present[:10]}")
    next_id = max([*vocab.values(), *(t["id"] for t in spec.get("added_tokens", []))]) + 1
    ids = {}
    for t in new_tokens:
        vocab[t] = ids[t] = next_id
        next_id += 1
    from .tokenizer import SENTENCEPIECE_FILE, extend_sentencepiece_model, sentencepiece_file_of

    source_model = sentencepiece_file_of(tokenizer)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    stale = out_dir / SENTENCEPIECE_FILE  # a sentencepiece model would still hold the old vocabulary
    if stale.exists():
        stale.unlink()
    reloaded = AutoTokenizer.from_pretrained(str(out_dir))
    if source_model is not None:  # the same pieces appended to it, so that it still gives tokenizer.json's ids
        extend_sentencepiece_model(source_model, list(new_tokens), reloaded, out_dir / SENTENCEPIECE_FILE)
    wrong = [t for t in new_tokens if reloaded.convert_tokens_to_ids(t) != ids[t]
             or reloaded.tokenize("a" + t)[-1] != t]
    if wrong or len(reloaded) != len(tokenizer) + len(new_tokens):
        raise RuntimeError(f"the saved tokenizer in {out_dir} does not use the new tokens ({wrong[:5]}); its class "
                           f"{type(reloaded).__name__} may rebuild the vocabulary from another file")
    return reloaded, ids


def extend_vocab(model_path: str | os.PathLike, out_dir: str | os.PathLike, new_tokens: Sequence[str],
                 tokenizer_path: str | os.PathLike | None = None, pad_to_multiple_of: int | None = 64) -> dict:
    """Add ``new_tokens`` to the tokenizer, grow the model's input embeddings and ``lm_head`` to the new size
    (rounded up to ``pad_to_multiple_of``), initialise every new row with the mean of the existing rows, and save
    both to ``out_dir`` (a model folder for ``init_from``). Returns what was done (also in vocab_extension.json)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .utils import atomic_dir, atomic_write_text

    if not new_tokens:
        raise ValueError("no new tokens to add (every character of the sample already has a token?)")
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_path or model_path))
    model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=torch.float32)
    old_rows = model.get_input_embeddings().weight.shape[0]
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        new_tok, ids = _added_tokenizer(tokenizer, list(new_tokens), tmp)
        needed = max(len(new_tok), old_rows)
        rows = needed if not pad_to_multiple_of else -(-needed // pad_to_multiple_of) * pad_to_multiple_of
        with torch.no_grad():
            means = [m.weight[:old_rows].mean(dim=0) for m in _embedding_modules(model)]
            model.resize_token_embeddings(rows, mean_resizing=False)
            for m, mean in zip(_embedding_modules(model), means):
                m.weight[old_rows:] = mean
        model.config.vocab_size = rows
        model.save_pretrained(tmp, safe_serialization=True)
        source_meta = Path(model_path) / "training_metadata.json"
        if source_meta.is_file():  # the weights' history (tokens seen) stays readable for evaluation plots
            shutil.copy2(source_meta, tmp / source_meta.name)
        info = {"source_model": str(model_path), "source_tokenizer": str(tokenizer_path or model_path),
                "added_tokens": list(new_tokens), "first_new_id": min(ids.values()),
                "tokenizer_size": len(new_tok), "old_rows": old_rows, "new_rows": rows,
                "pad_to_multiple_of": pad_to_multiple_of,
                "initialisation": "every new row of the input embeddings and lm_head = the mean of the old rows"}
        atomic_write_text(tmp / EXTENSION_FILE, json.dumps(info, indent=2, ensure_ascii=False))
    log.info("added %d tokens (ids %d..%d); embeddings %d -> %d rows; saved %s", len(new_tokens),
             min(ids.values()), max(ids.values()), old_rows, rows, out_dir)
    return info


def _embedding_modules(model) -> list:
    """The input embedding, and lm_head when it is a separate matrix (TinyLlama's are untied)."""
    inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    return [inp] if out is None or out.weight is inp.weight else [inp, out]


def format_coverage(rows: Sequence[dict]) -> str:
    """A small table: one column per tokenizer."""
    keys = [("vocab size", "vocab_size", "{:,}"), ("documents", "documents", "{:,}"),
            ("characters (no spaces)", "characters", "{:,}"), ("tokens", "tokens", "{:,}"),
            ("tokens per character", "tokens_per_character", "{:.3f}"),
            ("byte-fallback tokens", "byte_fallback_rate", "{:.2%}"),
            ("characters without a token", "share_of_characters_without_token", "{:.2%}"),
            ("distinct chars without a token", "characters_without_token", "{:,}")]
    header = ["", *[Path(str(r["tokenizer"])).name or str(r["tokenizer"]) for r in rows]]
    table = [header] + [[label, *[fmt.format(r[k]) for r in rows]] for label, k, fmt in keys]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
    missing = rows[0]["most_frequent_without_token"]
    if missing:
        lines.append("most frequent characters without a token (first tokenizer): "
                     + " ".join(f"{c}({n})" for c, n in missing))
    return "\n".join(lines)
