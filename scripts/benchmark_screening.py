"""Benchmark the cost of deduplication and decontamination in data preparation (see docs/benchmarks.md).

    python scripts/benchmark_screening.py [--mb 20] [--tokenizer data/demo/tokenizer] [--items 20000] [--repeat 3]
                                          [--workers 2]

The training text is benchmark_data.py's corpus (English prose, Python code, the demo's math and Chinese, built
offline from what the Python install ships). The decontamination index is built from ``--items`` synthetic
evaluation items of ``--item_words`` words drawn (seeded) from the corpus's own vocabulary: about the size of the
commonsense suite, the same word distribution as the text, no planted overlap (the clean case, nearly every
document in practice).

1. **Per step, one core** (one process, one thread, after a warm-up pass, best of ``--repeat``), in documents/s:
   what a tokenizer worker does per document (parse the JSON row, tokenize; then dedup keys: normalise, MinHash
   signature, band keys; decontamination: the n-gram lookup), and what the main process does per document (the
   dedup index: SQLite lookups and inserts, in input order; it is serial, so it bounds the scaling).
2. **End to end**: ``prepare_data`` with ``--workers`` worker processes, off and with ``dedup: true``, in MB of text
   per second and as a ratio (each run a fresh process, interleaved).
It is a benchmark, not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one Rust thread: the per-core rate of a worker
os.environ.setdefault("TQDM_DISABLE", "1")

from benchmark_data import cpu_name, build_corpus  # noqa: E402  (the same directory)


def timed(fn, items, repeat: int) -> float:
    """Best wall time of ``repeat`` passes of ``fn`` over ``items`` (after one warm-up pass)."""
    for x in items[: max(1, len(items) // 10)]:
        fn(x)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for x in items:
            fn(x)
        best = min(best, time.perf_counter() - start)
    return best


def per_step(args, lines: list[str], texts: list[str]) -> list[tuple[str, float, str]]:
    from tinyllama.data.decontaminate import TestIndex
    from tinyllama.data.dedup import DedupIndex, DedupSettings, Deduplicator
    from tinyllama.data.ngrams import text_ngrams, words
    from tinyllama.data.screen import DecontaminationSettings, Screener, ScreenSpec
    from tinyllama.data.tokenize import Encoder, EncoderSpec, load_tokenizer

    tok = load_tokenizer(args.tokenizer)
    encoder = Encoder(EncoderSpec.of(tok, tok.bos_token_id, None, 8192, "uint16"))
    dedup = Deduplicator(DedupSettings())
    rng = random.Random(0)
    vocab = sorted({w for t in texts[:2000] for w in words(t)})
    index = TestIndex.build({"synthetic": [" ".join(rng.choices(vocab, k=args.item_words))
                                           for _ in range(args.items)]}, args.ngram)
    keys = [dedup.keys(t) for t in texts]
    both = Screener(ScreenSpec(DedupSettings(), dedup.settings.bands(), DecontaminationSettings(ngram=args.ngram),
                               index))
    batches = [list(range(i, min(i + 512, len(texts)))) for i in range(0, len(texts), 512)]

    def screen_all(_):
        with tempfile.TemporaryDirectory() as tmp:
            db = DedupIndex.open(Path(tmp), DedupSettings(), 0)
            for b in batches:
                db.screen([keys[i] for i in b], b, [None] * len(b))
            db.commit(len(texts))
            db.close()

    r = args.repeat
    rows = [
        ("worker: parse the JSON row", timed(json.loads, lines, r), "json.loads"),
        ("worker: tokenize (Encoder.encode, one thread)", timed(lambda t: encoder.encode([t]), texts, r),
         "the Llama-style BPE of --tokenizer"),
        ("worker: dedup keys (Deduplicator.keys)", timed(dedup.keys, texts, r),
         "normalise, 5-gram hashes, MinHash 128, 9 band keys"),
        ("worker: n-grams alone (text_ngrams, n=13)", timed(lambda t: text_ngrams(t, args.ngram), texts, r),
         "shared ground of both steps"),
        ("worker: decontamination (TestIndex.find)", timed(index.find, texts, r),
         f"{index.describe()}"),
        ("worker: both steps (Screener.screen)", timed(lambda t: both.screen([t]), texts, r),
         "normalising and word hashes shared"),
        ("main process: dedup index (DedupIndex.screen)", timed(screen_all, [None], r), "SQLite, in order"),
    ]
    return rows


def end_to_end(tokenizer: str, corpus: Path, out: Path, workers: int, dedup: bool) -> float:
    cfg = {"tokenizer": tokenizer, "output_dir": str(out), "num_workers": workers, "dedup": dedup,
           "sources": {"bench": {"path": str(corpus), "text_field": "text"}}}
    path = out.parent / f"{out.name}.yaml"
    path.write_text(json.dumps(cfg))
    code = ("import time, sys; from tinyllama.data.prepare import prepare_data; t = time.perf_counter(); "
            "prepare_data(['--config', sys.argv[1]]); print(time.perf_counter() - t)")
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    return float(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mb", type=float, default=20, help="corpus size in MB of jsonl (default 20)")
    p.add_argument("--tokenizer", default="data/demo/tokenizer", help="fast tokenizer folder")
    p.add_argument("--items", type=int, default=20000, help="synthetic evaluation items in the index")
    p.add_argument("--item_words", type=int, default=60)
    p.add_argument("--ngram", type=int, default=13)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)), help="end to end: worker processes")
    p.add_argument("--skip_end_to_end", action="store_true")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        build_corpus(corpus, a.mb)
        lines = corpus.read_text(encoding="utf-8").splitlines()
        texts = [json.loads(x)["text"] for x in lines]
        mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
        print(f"machine: {cpu_name()}, {len(os.sched_getaffinity(0))} cores; python {platform.python_version()}; "
              f"load average before: {os.getloadavg()[0]:.1f}")
        print(f"text: {len(texts):,} documents, {mb:.1f} MB; tokenizer {a.tokenizer}\n")
        rows = per_step(a, lines, texts)
        tokenize = rows[1][1]
        print(f"| step (one core) | seconds (best of {a.repeat}) | documents/s | MB/s | vs tokenizing | what |")
        print("|---|---|---|---|---|---|")
        for name, s, what in rows:
            print(f"| {name} | {s:.2f} | {len(texts) / s:,.0f} | {mb / s:.2f} | {100 * s / tokenize:.0f}% | {what} |")
        if a.skip_end_to_end:
            return
        times: dict[bool, list[float]] = {False: [], True: []}
        for r in range(a.repeat):
            for dedup in (False, True):
                times[dedup].append(end_to_end(a.tokenizer, corpus, Path(tmp) / f"out-{dedup}-{r}", a.workers, dedup))
        print(f"\n| prepare_data, num_workers={a.workers} | seconds (best of {a.repeat}) | MB text/s | "
              f"vs off (median of paired runs) |")
        print("|---|---|---|---|")
        for dedup in (False, True):
            ratio = statistics.median(o / d for o, d in zip(times[False], times[dedup]))
            print(f"| {'dedup: true' if dedup else 'off'} | {min(times[dedup]):.1f} | {mb / min(times[dedup]):.2f} | "
                  f"{100 * ratio:.0f}% |")
        print(f"\nload average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
