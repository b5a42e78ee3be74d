"""Benchmark decontamination's per-document cost on one core (see docs/benchmarks.md).

    python scripts/benchmark_decontaminate.py [--mb 20] [--items 20000] [--item_words 60] [--ngram 13] [--repeat 3]

The training text is benchmark_data.py's corpus (English prose, Python code, the demo's math and Chinese, built
offline from what the Python install ships). The test index is built from ``--items`` synthetic evaluation items
of ``--item_words`` words each, drawn at random (seeded) from the corpus's own vocabulary: about the size of the
commonsense suite (some 20,000 items), with the same word distribution as the text but no planted overlap. In one
process, on one core, after a warm-up pass (the word-hash cache of a long-running worker is warm):

  1. ``text_ngrams``: normalise, hash the words and the n-grams (the work deduplication shares);
  2. ``TestIndex.find``: the same plus the lookup in the index;
and the ratio of the two, i.e. what the lookup adds. It is a benchmark, not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import pickle
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tinyllama.data.decontaminate import TestIndex  # noqa: E402
from tinyllama.data.ngrams import text_ngrams, words  # noqa: E402


def _benchmark_data():
    spec = importlib.util.spec_from_file_location("benchmark_data", REPO / "scripts" / "benchmark_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def timed(fn, texts, repeat: int) -> float:
    """Best wall time of ``repeat`` passes of ``fn`` over ``texts``."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for t in texts:
            fn(t)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mb", type=float, default=20, help="corpus size in MB of jsonl (default 20)")
    p.add_argument("--items", type=int, default=20000)
    p.add_argument("--item_words", type=int, default=60)
    p.add_argument("--ngram", type=int, default=13)
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        texts = _benchmark_data().build_corpus(Path(tmp) / "corpus.jsonl", a.mb)
    mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    n_words = sum(len(words(t)) for t in texts)  # (also warms the word-hash cache)
    rng = random.Random(0)
    vocab = sorted({w for t in texts[:2000] for w in words(t)})
    items = {"synthetic": [" ".join(rng.choices(vocab, k=a.item_words)) for _ in range(a.items)]}
    start = time.perf_counter()
    index = TestIndex.build(items, a.ngram)
    build_s = time.perf_counter() - start
    pickled = len(pickle.dumps(index))
    for t in texts:  # warm-up: the word-hash cache, as in a long-running worker
        index.find(t)
    t_ngrams = timed(lambda t: text_ngrams(t, a.ngram), texts, a.repeat)
    t_find = timed(index.find, texts, a.repeat)
    hits = sum(bool(index.find(t)) for t in texts)
    print(f"machine: {platform.processor() or platform.machine()}, Python {platform.python_version()}, one core")
    print(f"text: {len(texts):,} documents, {mb:.1f} MB, {n_words:,} words; index: {index.describe()}; "
          f"built in {build_s:.1f} s, pickled {pickled / 1e6:.1f} MB; documents with a hit: {hits}")
    print()
    print("| step | seconds (best of %d) | documents/s | MB/s | words/s | vs text_ngrams |" % a.repeat)
    print("|---|---|---|---|---|---|")
    for name, s in ((f"text_ngrams (n={a.ngram})", t_ngrams), ("TestIndex.find (text_ngrams + lookup)", t_find)):
        print(f"| {name} | {s:.2f} | {len(texts) / s:,.0f} | {mb / s:.2f} | {n_words / s:,.0f} | "
              f"{t_ngrams / s:.0%} |")


if __name__ == "__main__":
    main()
