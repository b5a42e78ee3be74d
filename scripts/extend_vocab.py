"""Extend a model's vocabulary with the characters of a new language it spells in bytes, for continued pretraining.

    python scripts/extend_vocab.py --model outputs/demo-v1.1/basic/export/final \
        --data data/demo/raw/skypile/train.jsonl --out outputs/demo-v1.1/basic-zh-vocab
    python scripts/extend_vocab.py --model outputs/tinyllama-v1.1/basic/export/final --data zh.jsonl \
        --max_new 5000 --min_count 20 --out outputs/tinyllama-v1.1/basic-zh-vocab

Takes the most frequent characters of the sample that have no token of their own (at least --min_count times, at
most --max_new; or exactly the characters of --tokens FILE, one per line), adds them to the tokenizer's BPE
vocabulary, grows the input embeddings and lm_head (rounded up to --pad_to_multiple_of rows), sets every new row to
the mean of the old rows, and saves model + tokenizer to --out. Then: prepare the data with --tokenizer <out>, and
start the continual stage with --init_from <out> --tokenizer <out> (configs/continual/chinese.yaml, docs/stages.md).
Prints the sample's coverage before and after.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tinyllama.utils import entry_point, setup_logging


@entry_point
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="model folder (an export) or Hub id")
    p.add_argument("--tokenizer", default=None, help="tokenizer (default: the model's)")
    p.add_argument("--data", required=True, help="a sample of the new language: .txt, .jsonl, ...")
    p.add_argument("--text_field", default="text")
    p.add_argument("--max_docs", type=int, default=None)
    p.add_argument("--max_new", type=int, default=1000, help="at most this many new tokens")
    p.add_argument("--min_count", type=int, default=1, help="only characters seen at least this often")
    p.add_argument("--tokens", default=None, help="a file of characters to add, one per line (instead of choosing)")
    p.add_argument("--pad_to_multiple_of", type=int, default=64, help="embedding rows rounded up (0: no rounding)")
    p.add_argument("--out", required=True, help="where the extended model + tokenizer go")
    a = p.parse_args(argv)
    setup_logging()
    from transformers import AutoTokenizer

    from tinyllama.vocab import coverage, extend_vocab, format_coverage, new_characters, read_texts

    texts = read_texts(a.data, a.text_field, a.max_docs)
    tok = AutoTokenizer.from_pretrained(a.tokenizer or a.model)
    if a.tokens:
        new = [line.strip("\n") for line in Path(a.tokens).read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        new = new_characters(tok, texts, a.max_new, a.min_count)
    info = extend_vocab(a.model, a.out, new, a.tokenizer, a.pad_to_multiple_of or None)
    print(f"added {len(new)} tokens; embedding rows {info['old_rows']} -> {info['new_rows']}; saved {a.out}")
    before = coverage(tok, texts)
    after = coverage(AutoTokenizer.from_pretrained(a.out), texts)
    before["tokenizer"], after["tokenizer"] = "before", "after"
    print(format_coverage([before, after]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
