"""Benchmark the data layer against the tokenizer's raw speed and the usual Hugging Face way (see docs/benchmarks.md).

    python scripts/benchmark_data.py [--mb 12] [--tokenizer data/demo/tokenizer] [--workers 2 0] [--repeat 5]

On the same text and the same cores it prints:
  1. raw: the tokenizer's own batch encoding (``Tokenizer.encode_batch_fast`` on every document in memory, Rust
     threads on all cores), the upper bound for any pipeline;
  2. pipeline: ``prepare_data`` end to end (read a SlimPajama-shaped jsonl, drop its GitHub rows, split long
     documents, tokenize in worker processes, write shards + index + manifest), and bytes per token on disk;
  3. run_clm: transformers' ``run_clm.py`` example way (``datasets`` json -> ``filter`` -> batched ``map`` of the
     tokenizer -> ``map(group_texts)`` into blocks), and its bytes per token in the datasets cache;
  4. the ratios, and the loader (``MixtureDataset.__getitem__``) read speed in tokens/s on one core.
Throughput is in MB of kept text per second (and tokens per second): the same text, whatever each way tokenizes.
It is a benchmark, not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def build_corpus(path: Path, megabytes: float) -> list[str]:
    """A SlimPajama-shaped jsonl of about ``megabytes`` MB from the demo corpus (prose, code, math, Chinese; each
    copy numbered so no two documents are identical), with its GitHub rows; returns the documents that a pipeline
    keeps."""
    import pyarrow.parquet as pq

    from tinyllama.demo import build_demo

    paths = build_demo()
    rows = [json.loads(line) for line in paths["slimpajama"].open(encoding="utf-8")]
    rows += [{"text": t, "meta": {"redpajama_set_name": "RedPajamaGithub"}}
             for t in pq.read_table(paths["starcoderdata"]).column("content").to_pylist()[::10]]  # dropped
    rows += [{"text": t, "meta": {"redpajama_set_name": "RedPajamaStackExchange"}}
             for t in pq.read_table(paths["starcoderdata"]).column("content").to_pylist()]
    for key in ("proof_pile_2", "skypile"):
        rows += [{"text": json.loads(line)["text"], "meta": {"redpajama_set_name": "RedPajamaC4"}}
                 for line in paths[key].open(encoding="utf-8")]
    kept, size, copy = [], 0, 0
    with open(path, "w", encoding="utf-8") as f:
        while size < megabytes * 1e6:
            for r in rows:
                text = f"[{copy}] {r['text']}"
                line = json.dumps({"text": text, "meta": r["meta"]}, ensure_ascii=False) + "\n"
                f.write(line)
                size += len(line.encode("utf-8"))
                if r["meta"]["redpajama_set_name"] != "RedPajamaGithub":
                    kept.append(text)
            copy += 1
    return kept


def bench_raw(tokenizer: str, texts: list[str]) -> tuple[float, int]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(tokenizer) / "tokenizer.json"))
    tok.encode_batch_fast(texts[:64], add_special_tokens=False)  # warm up the thread pool
    t0 = time.perf_counter()
    encs = tok.encode_batch_fast(texts, add_special_tokens=False)
    dt = time.perf_counter() - t0
    return dt, sum(len(e.ids) for e in encs)


def bench_pipeline(tokenizer: str, corpus: Path, out: Path, workers: int) -> tuple[float, int, int]:
    from tinyllama.data.prepare import prepare_data

    cfg = {"tokenizer": tokenizer, "output_dir": str(out), "num_workers": workers,
           "sources": {"bench": {"path": str(corpus), "text_field": "text",
                                 "filters": [{"field": "meta.redpajama_set_name", "not_in": ["RedPajamaGithub"]}]}}}
    cfg_path = out.parent / f"{out.name}.yaml"
    cfg_path.write_text(json.dumps(cfg))
    t0 = time.perf_counter()
    prepare_data(["--config", str(cfg_path)])
    dt = time.perf_counter() - t0
    manifest = json.loads((out / "bench" / "manifest.json").read_text())
    tokens = sum(manifest["stats"]["tokens"].values())
    size = sum(p.stat().st_size for p in (out / "bench").rglob("*") if p.is_file())
    return dt, tokens, size


def bench_run_clm(tokenizer: str, corpus: Path, cache: Path, workers: int, block_size: int) -> tuple[float, int, int]:
    """transformers/examples/pytorch/language-modeling/run_clm.py, its data part, with num_proc = workers."""
    import datasets
    from itertools import chain

    from transformers import AutoTokenizer

    datasets.disable_progress_bars()
    tok = AutoTokenizer.from_pretrained(tokenizer)
    t0 = time.perf_counter()
    raw = datasets.load_dataset("json", data_files=str(corpus), split="train", cache_dir=str(cache))
    raw = raw.filter(lambda b: [m["redpajama_set_name"] != "RedPajamaGithub" for m in b["meta"]], batched=True,
                     num_proc=workers)
    tokenized = raw.map(lambda b: tok(b["text"]), batched=True, num_proc=workers, remove_columns=raw.column_names)

    def group_texts(examples):  # as in run_clm.py: concatenate, drop the remainder, labels = input_ids
        concatenated = {k: list(chain(*examples[k])) for k in examples.keys()}
        total = (len(concatenated[list(examples.keys())[0]]) // block_size) * block_size
        result = {k: [t[i: i + block_size] for i in range(0, total, block_size)] for k, t in concatenated.items()}
        result["labels"] = result["input_ids"].copy()
        return result

    lm = tokenized.map(group_texts, batched=True, num_proc=workers)
    dt = time.perf_counter() - t0
    tokens = len(lm) * block_size
    size = sum(os.path.getsize(f["filename"]) for f in lm.cache_files)
    return dt, tokens, size


def bench_loader(data_dir: Path, seq_len: int, stride: int, seconds: float = 4.0) -> float:
    """Tokens/s of ``dataset[i]`` in one process, for consecutive indices (``stride`` 1, what a training step
    reads) or scattered ones (every block a new one, so nothing is reused)."""
    import torch

    from tinyllama.data import MixtureDataset, SourceWeight

    torch.set_num_threads(1)
    ds = MixtureDataset(data_dir, [SourceWeight("bench", 0.7), SourceWeight("bench2", 0.3)], seq_len)
    ds[0]
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for i in range(n, n + 500):
            ds[i * stride]
        n += 500
    return n * (seq_len + 1) / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=12, help="corpus size in MB of jsonl (default 12)")
    parser.add_argument("--tokenizer", default="data/demo/tokenizer", help="fast tokenizer folder")
    parser.add_argument("--workers", type=int, nargs="+", default=[len(os.sched_getaffinity(0))],
                        help="prepare_data num_workers to measure (default: a process per core; 0: in-process, Rust "
                             "threads); run_clm uses num_proc = all cores")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each way, interleaved; the best counts")
    parser.add_argument("--seq_len", type=int, default=2048)
    parser.add_argument("--skip_run_clm", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    work = Path(tempfile.mkdtemp(prefix="bench-data-"))
    try:
        corpus = work / "corpus.jsonl"
        texts = build_corpus(corpus, args.mb)
        cores = len(os.sched_getaffinity(0))
        mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
        print(f"machine: {_cpu_name()}, {len(os.sched_getaffinity(0))} cores available; python "
              f"{platform.python_version()}; load average before: {os.getloadavg()[0]:.1f}")
        print(f"corpus: {corpus.stat().st_size / 1e6:.1f} MB jsonl, {len(texts)} documents kept ({mb:.1f} MB of "
              f"text), tokenizer {args.tokenizer}")
        import transformers  # noqa: F401  (imported once per process; not part of any way's time)

        # the pipeline's fixed cost (tokenizer load, worker start-up) is measured on the first 1% of the corpus
        lines = corpus.read_text(encoding="utf-8").splitlines(keepends=True)[: len(texts) // 100]
        small = work / "small.jsonl"
        small.write_text("".join(lines), encoding="utf-8")
        small_mb = sum(len(json.loads(x)["text"].encode("utf-8")) for x in lines
                       if json.loads(x)["meta"]["redpajama_set_name"] != "RedPajamaGithub") / 1e6
        # The machine may be shared: every way runs --repeat times, interleaved, and the fastest run counts.
        times: dict[str, list[float]] = {}
        results: dict[str, tuple[int, int | None]] = {}
        for r in range(args.repeat):
            dt, tokens = bench_raw(args.tokenizer, texts)
            times.setdefault("raw", []).append(dt)
            results["raw"] = (tokens, None)
            for w in args.workers:
                out = work / f"out-{w}-{r}"
                dt, tokens, size = bench_pipeline(args.tokenizer, corpus, out, w)
                times.setdefault(f"pipeline-{w}", []).append(dt)
                results[f"pipeline-{w}"] = (tokens, size)
                times.setdefault(f"small-{w}", []).append(bench_pipeline(args.tokenizer, small, work / f"s-{w}-{r}",
                                                                           w)[0])
                if r < args.repeat - 1:
                    shutil.rmtree(out)
            if not args.skip_run_clm:
                dt, tokens, size = bench_run_clm(args.tokenizer, corpus, work / f"hf-cache-{r}", cores, args.seq_len)
                times.setdefault("run_clm", []).append(dt)
                results["run_clm"] = (tokens, size)
                shutil.rmtree(work / f"hf-cache-{r}")
        raw_dt = min(times["raw"])
        names = {"raw": "raw tokenizer (encode_batch_fast, all cores)", "run_clm": "run_clm.py way (datasets.map "
                 "+ group_texts, num_proc=%d)" % cores}
        print(f"\n| way | seconds (best of {args.repeat}) | MB text/s | tokens/s | % of raw | bytes/token on disk |")
        print("|---|---|---|---|---|---|")
        for key in ["raw"] + [f"pipeline-{w}" for w in args.workers] + (["run_clm"] if "run_clm" in times else []):
            dt = min(times[key])
            tokens, size = results[key]
            name = names.get(key) or f"pipeline (prepare_data, num_workers={key.split('-', 1)[1]})"
            per_token = f"{size / tokens:.2f}" if size else "-"
            print(f"| {name} | {dt:.1f} | {mb / dt:.2f} | {tokens / dt:,.0f} | {100 * raw_dt / dt:.0f}% | "
                  f"{per_token} |")
        for w in args.workers:
            fixed = min(times[f"small-{w}"])
            steady = (mb - small_mb) / (min(times[f"pipeline-{w}"]) - fixed)
            print(f"\npipeline (num_workers={w}) without its fixed cost ({fixed:.1f}s: tokenizer load, worker start-up; "
                  f"measured on 1% of the corpus): {steady:.2f} MB text/s = {100 * steady / (mb / raw_dt):.0f}% of raw")
        print(f"load average after: {os.getloadavg()[0]:.1f}")
        print("all runs (s): " + ", ".join(f"{k} {[round(t, 1) for t in v]}" for k, v in times.items()))
        for out in work.glob("out-*"):
            out.rename(work / "out")
            break
        shutil.copytree(work / "out" / "bench", work / "out" / "bench2")  # a second source for a 2-way mixture
        for stride, what in ((1, "consecutive indices"), (7919, "scattered indices")):
            rate = bench_loader(work / "out", args.seq_len, stride)
            print(f"loader: MixtureDataset[i] (2 sources, seq_len {args.seq_len}, one process, {what}): "
                  f"{rate / 1e6:.1f}M tokens/s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
