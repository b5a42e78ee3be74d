"""How well a tokenizer covers a language: tokens per character, byte-fallback rate, characters without a token.

    python scripts/tokenizer_coverage.py --data data/demo/raw/skypile/train.jsonl            # the demo tokenizer
    python scripts/tokenizer_coverage.py --tokenizer TinyLlama/TinyLlama_v1.1 --data zh.jsonl \
        --compare outputs/tinyllama-v1.1/basic-zh-vocab --json coverage.json

DATA: a .txt file (one document), a .jsonl file (--text_field), or .json/.parquet/.csv files, a folder of them, or
a dataset name. A byte-fallback tokenizer (Llama-2's) spells a character without a token as its UTF-8 bytes (3
tokens for most Chinese characters); scripts/extend_vocab.py adds such characters. See tinyllama/vocab.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tinyllama.utils import entry_point


@entry_point
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokenizer", default="data/demo/tokenizer", help="tokenizer folder or Hub id")
    p.add_argument("--data", required=True, help="the sample: .txt, .jsonl, ... (see above)")
    p.add_argument("--text_field", default="text")
    p.add_argument("--max_docs", type=int, default=None)
    p.add_argument("--compare", nargs="*", default=[], help="more tokenizers to measure on the same sample")
    p.add_argument("--top", type=int, default=20, help="how many characters without a token to list")
    p.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    a = p.parse_args(argv)
    from transformers import AutoTokenizer

    from tinyllama.vocab import coverage, format_coverage, read_texts

    texts = read_texts(a.data, a.text_field, a.max_docs)
    rows = [coverage(AutoTokenizer.from_pretrained(t), texts, a.top) for t in [a.tokenizer, *a.compare]]
    for r, name in zip(rows, [a.tokenizer, *a.compare]):
        r["tokenizer"] = name
        r["data"] = str(a.data)
    print(format_coverage(rows))
    if a.json:
        Path(a.json).write_text(json.dumps(rows if a.compare else rows[0], indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
