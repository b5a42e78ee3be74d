"""How far fast tokenizers are from a SentencePiece model: a Markdown table per tokenizer and kind of text.

    python scripts/tokenizer_fidelity.py --sentencepiece path/to/tokenizer.model \
        --tokenizer path/to/hf_folder tokenizers/tinyllama-exact [--texts extra.jsonl ...]

For each tokenizer folder (loaded with AutoTokenizer, as every recipe loads it) and each kind of text: documents,
documents whose ids differ from SentencePiece's (no BOS on either side), SentencePiece tokens the fast tokenizer does
not produce (multiset difference per document), and the fast tokenizer's token count relative to SentencePiece's.
The built-in texts need no network: this Python's standard-library modules (code), its reference manual (prose),
the demo corpus's Chinese and math, and edge cases; --texts adds files (.txt, .jsonl with --text_field, ...), one
kind each. Figures: docs/data.md, "Tokenizer fidelity".
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tinyllama.utils import entry_point, setup_logging  # noqa: E402


@entry_point
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sentencepiece", required=True, help="the SentencePiece tokenizer.model (the reference)")
    p.add_argument("--tokenizer", required=True, nargs="+", help="fast tokenizer folders (or Hub ids) to measure")
    p.add_argument("--texts", nargs="*", default=[], help="extra text files, one kind each (name: the file stem)")
    p.add_argument("--text_field", default="text", help="the text field of --texts .jsonl files")
    p.add_argument("--kinds", nargs="*", default=None,
                   help="built-in kinds to use (code prose chinese math 'edge cases'; default: all)")
    p.add_argument("--max_docs", type=int, default=None, help="at most this many documents of each kind")
    a = p.parse_args(argv)
    setup_logging()
    import sentencepiece
    import tokenizers
    import transformers
    from transformers import AutoTokenizer

    from tinyllama.demo_corpus import builtin_sample
    from tinyllama.tokenizer import compare_with_sentencepiece, sentencepiece_processor
    from tinyllama.vocab import read_texts

    if not Path(a.sentencepiece).is_file():
        raise FileNotFoundError(f"--sentencepiece {a.sentencepiece}: no such file")
    sp = sentencepiece_processor(a.sentencepiece)
    sample = builtin_sample(a.max_docs)
    if a.kinds is not None:
        unknown = sorted(set(a.kinds) - set(sample))
        if unknown:
            raise ValueError(f"--kinds: unknown {unknown}; built-in kinds: {sorted(sample)}")
        sample = {k: sample[k] for k in a.kinds}
    for path in a.texts:
        sample[Path(path).stem] = read_texts(path, a.text_field, a.max_docs)
    tokenizers_ = {name: AutoTokenizer.from_pretrained(name) for name in a.tokenizer}

    print(f"SentencePiece model: {a.sentencepiece} ({sp.get_piece_size()} pieces); "
          f"{time.strftime('%Y-%m-%d', time.gmtime())}, {platform.machine()} {platform.system()}, Python "
          f"{platform.python_version()}, transformers {transformers.__version__}, tokenizers "
          f"{tokenizers.__version__}, sentencepiece {sentencepiece.__version__}\n")
    print("| tokenizer (class loaded) | texts | documents | documents differing | SentencePiece tokens differing "
          "| token count vs SentencePiece |")
    print("|---|---|---:|---:|---:|---:|")
    firsts = []
    for name, tok in tokenizers_.items():
        for kind, texts in sample.items():
            r = compare_with_sentencepiece(tok, sp, texts)
            print(f"| {name} ({type(tok).__name__}) | {kind} | {r.documents:,} | {r.differing_documents:,} "
                  f"({r.document_rate:.1%}) | {r.differing_tokens:,} of {r.tokens_sentencepiece:,} | "
                  f"{r.token_count_difference:+.3%} |")
            if r.first_difference and len(firsts) < 4:
                firsts.append((name, kind, r))
    for name, kind, r in firsts:
        d = r.first_difference
        print(f"\n{name}, {kind}, first difference (document {d['document']}, text {d['text']!r}):\n"
              f"    sentencepiece: {d['sentencepiece']}\n    fast:          {d['fast']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
