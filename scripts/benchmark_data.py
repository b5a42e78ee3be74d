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
Every run of every way is a fresh Python process (see ``in_fresh_process``).
It is a benchmark, not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import itertools
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _cpu_seconds(children: bool = True) -> float:
    """CPU time of this process (all its threads) and, unless told not to, of its finished child processes."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    cpu = own.ru_utime + own.ru_stime
    if children:
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu += kids.ru_utime + kids.ru_stime
    return cpu


def cpu_name() -> str:
    """The CPU's model name, for the machine line of the benchmark tables."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _python_files(root: Path, skip_site_packages: bool = False):
    """The ``.py`` files under ``root`` in sorted order, without tests, each file's text once (identical files, such
    as the many empty ``__init__.py``, are kept once by content)."""
    seen = set()
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(root).parts
        if any(part in ("test", "tests") for part in rel) or (skip_site_packages and "site-packages" in rel):
            continue
        try:
            text = p.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        digest = hashlib.sha1(text.encode("utf-8", "replace")).digest()
        if len(text) < 200 or digest in seen:
            continue
        seen.add(digest)
        yield text


def _docstrings(source: str) -> str:
    """The module, class and function docstrings of one Python file, as one prose document ("" if few)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return ""
    docs = [ast.get_docstring(n, clean=True) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
    text = "\n\n".join(d for d in docs if d and len(d) >= 80)
    return text if len(text) >= 500 else ""


def _corpus_documents():
    """(set name, text) of distinct documents from what this Python install ships, offline and deterministic, no
    document repeated (a repeated corpus would flatter whichever way shares one BPE cache across more of it).

    Three streams, mixed by bytes (about 45% prose, 50% code, 5% math and Chinese), so any prefix is a mix:
    English prose (the reference manual's topics, the installed packages' descriptions, then the docstrings of
    every other installed ``.py`` file), Python code (the standard library, then the other half of the installed
    ``.py`` files: no text is both a code document and a prose one) and the demo's math and Chinese. Every 20th code
    file is labelled as SlimPajama's GitHub subset, which the filter drops. The installed packages (pinned by
    requirements.txt) give a few hundred MB; the stream ends when they are used up."""
    import sysconfig
    from importlib import metadata

    from tinyllama.demo_corpus import build_demo, prose_documents

    site = Path(sysconfig.get_paths()["purelib"])

    def prose():
        yield from prose_documents()
        for dist in sorted(metadata.distributions(), key=lambda d: d.metadata["Name"] or ""):
            text = dist.metadata.get_payload() or ""
            if len(text) > 500:
                yield text
        for text in itertools.islice(_python_files(site), 1, None, 2):  # the odd installed files' docstrings
            yield _docstrings(text)

    def code():
        yield from _python_files(Path(sysconfig.get_paths()["stdlib"]), skip_site_packages=True)
        yield from itertools.islice(_python_files(site), 0, None, 2)  # the even installed files

    def other():
        paths = build_demo()
        for key in ("proof_pile_2", "skypile"):
            for line in paths[key].open(encoding="utf-8"):
                yield json.loads(line)["text"]

    streams = [("RedPajamaBook", prose(), 0.45), ("code", code(), 0.50), ("RedPajamaC4", other(), 0.05)]
    written = [0.0] * len(streams)
    live = list(range(len(streams)))
    n_code = 0
    while live:
        i = min(live, key=lambda j: written[j] / streams[j][2])  # the stream furthest below its share
        text = next(streams[i][1], None)
        if text is None:
            live.remove(i)
            continue
        if not text:
            continue
        name = streams[i][0]
        if name == "code":
            name = "RedPajamaGithub" if n_code % 20 == 0 else "RedPajamaStackExchange"
            n_code += 1
        written[i] += len(text)
        yield name, text


def build_corpus(path: Path, megabytes: float) -> list[str]:
    """A SlimPajama-shaped jsonl of up to ``megabytes`` MB (see ``_corpus_documents``); returns the documents that
    a pipeline keeps."""
    kept, size = [], 0
    with open(path, "w", encoding="utf-8") as f:
        for set_name, text in _corpus_documents():
            line = json.dumps({"text": text, "meta": {"redpajama_set_name": set_name}}, ensure_ascii=False) + "\n"
            f.write(line)
            size += len(line.encode("utf-8"))
            if set_name != "RedPajamaGithub":
                kept.append(text)
            if size >= megabytes * 1e6:
                break
    return kept


def bench_raw(tokenizer: str, texts: list[str], max_chars: int) -> tuple[float, float, int, float]:
    """Seconds to encode every text (Rust threads on all cores), and to also read the ids into Python (what any
    Python consumer must do; ``Encoding.ids`` builds a list), the number of tokens, and the CPU seconds of the
    encoding. With ``max_chars`` > 0 the texts are first cut into the pieces the pipeline encodes (``split_text``,
    outside the timing), and encoded in two calls, first pieces and the rest (with the continuation variant of the
    tokenizer): the same work as the pipeline's, which is what its overhead is measured against. With 0, whole
    documents: a document is then one BPE word for the Llama-2 tokenizer (Metaspace without split), and the cost
    of very long ones (generated code files of megabytes) grows faster than their length."""
    from tokenizers import Tokenizer

    from tinyllama.data.tokenize import continuation_tokenizer, split_text

    tok = Tokenizer.from_file(str(Path(tokenizer) / "tokenizer.json"))
    batches = [(tok, texts)]
    if max_chars > 0:
        cont = Tokenizer.from_str(continuation_tokenizer(tok.to_str()))
        pieces = [split_text(t, max_chars) for t in texts]
        batches = [(tok, [p[0] for p in pieces]), (cont, [q for p in pieces for q in p[1:]])]
    tok.encode_batch_fast(texts[:64], add_special_tokens=False)  # warm up the thread pool
    c0, t0 = _cpu_seconds(), time.perf_counter()
    encs = [t.encode_batch_fast(b, add_special_tokens=False) for t, b in batches]
    t1, cpu = time.perf_counter(), _cpu_seconds() - c0
    tokens = sum(len(e.ids) for part in encs for e in part)
    return t1 - t0, time.perf_counter() - t0, tokens, cpu


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


def in_fresh_process(way: str, *args) -> dict:
    """Run one way once in a new Python process and return what it measured. A long-lived process slows down run
    after run (the raw encoder lost 30-40% over five runs in one process, idle machine), and ``datasets``'
    ``map(num_proc=N)`` leaves TOKENIZERS_PARALLELISM=false in the C environment, which would put every later
    in-process Rust encoding on one thread; a fresh process per run compares like with like (the pipeline's worker
    processes are fresh anyway)."""
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps([way, *map(str, args)])],
                          capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"benchmark way {way!r} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def child(spec: str) -> None:
    way, *args = json.loads(spec)
    # Imports before any timing, in every way alike (about 2 s once per command, not part of a way's speed).
    import datasets  # noqa: F401
    from tqdm.auto import tqdm  # noqa: F401
    from transformers import AutoTokenizer  # noqa: F401

    from tinyllama.data.prepare import prepare_data  # noqa: F401

    c0, m0 = _cpu_seconds(), _cpu_seconds(children=False)  # (TQDM_DISABLE comes from the parent's environment)
    if way == "raw":
        dt, dt_ids, tokens, cpu = bench_raw(args[0], json.loads(Path(args[1]).read_text(encoding="utf-8")),
                                            int(args[2]))
        out = {"dt": dt, "dt_ids": dt_ids, "tokens": tokens, "size": None, "cpu": cpu}
    elif way == "pipeline":
        dt, tokens, size = bench_pipeline(args[0], Path(args[1]), Path(args[2]), int(args[3]))
        # cpu_main: the main process alone (reading, batching, writing): the serial part of the pipeline
        out = {"dt": dt, "tokens": tokens, "size": size, "cpu": _cpu_seconds() - c0,
               "cpu_main": _cpu_seconds(children=False) - m0}
    else:
        dt, tokens, size = bench_run_clm(args[0], Path(args[1]), Path(args[2]), int(args[3]), int(args[4]))
        out = {"dt": dt, "tokens": tokens, "size": size, "cpu": _cpu_seconds() - c0}
    print(json.dumps(out))

TARGET_TOKENS = 950e9  # SlimPajama (without its GitHub part) + Starcoderdata, in Llama-2 tokens (docs/data.md)


def print_scaling(workers: list[int], mb: float, small_mb: float, times: dict, cpu: dict, cpu_main: dict,
                  results: dict) -> None:
    """Throughput against the number of workers, and a model for larger machines from the measured costs.

    Per MB of text in steady state (the 1% run subtracted, medians over the repetitions) the workers spend ``c``
    CPU seconds (parsing, splitting, encoding) and the main process ``m`` (reading lines, sending batches, receiving
    ids, writing shards), which is serial. On N cores with N workers the pipeline runs at
    ``min(N / (c + m), 1 / m)`` MB/s: the cores' capacity shared by all the work, capped where the main process is
    busy all the time. Comparing the model with the measured rows on this machine checks it; the projection then
    gives the hours for ``TARGET_TOKENS`` at the measured tokens per MB, fixed cost included."""
    ws = [w for w in workers if w > 0]
    if not ws:
        return
    med = statistics.median
    big = mb - small_mb
    rows, costs = [], {}
    for w in ws:
        rate = med(big / (p - f) for p, f in zip(times[f"pipeline-{w}"], times[f"small-{w}"]))
        m = (med(cpu_main[f"pipeline-{w}"]) - med(cpu_main[f"small-{w}"])) / big
        c = (med(cpu[f"pipeline-{w}"]) - med(cpu[f"small-{w}"])) / big - m
        costs[w] = (c, m)
        rows.append((w, rate, c, m))
    c, m = costs[max(ws)]  # the costs with every core busy, as on a big machine
    print("\nscaling (steady state, MB of text per second; c, m: worker and main-process CPU seconds per MB):")
    print("| num_workers | measured MB/s | per worker | c | m | model MB/s |")
    print("|---|---|---|---|---|---|")
    for w, rate, cw, mw in rows:
        print(f"| {w} | {rate:.2f} | {rate / w:.2f} | {cw:.3f} | {mw:.4f} | {min(w / (c + m), 1 / m):.2f} |")
    tokens_per_mb = results[f"pipeline-{max(ws)}"][0] / mb
    fixed = med(times[f"small-{max(ws)}"])
    print(f"model: min(N / ({c:.3f} + {m:.4f}), 1 / {m:.4f}) MB/s on N cores (the main process caps it at "
          f"{1 / m:.0f} MB/s); {tokens_per_mb / 1e6:.3f}M tokens per MB of this corpus; fixed cost {fixed:.1f} s")
    print(f"| cores | model MB/s | hours for {TARGET_TOKENS / 1e9:.0f}B tokens |")
    print("|---|---|---|")
    for n in (2, 8, 16, 32, 64, 128):
        rate = min(n / (c + m), 1 / m)
        hours = (fixed + TARGET_TOKENS / tokens_per_mb / rate) / 3600
        print(f"| {n} | {rate:.1f} | {hours:,.1f} |")


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
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child)
    os.environ.setdefault("TQDM_DISABLE", "1")
    work = Path(tempfile.mkdtemp(prefix="bench-data-"))
    try:
        corpus = work / "corpus.jsonl"
        texts = build_corpus(corpus, args.mb)
        from tinyllama.data.prepare import PrepareConfig

        max_chars = PrepareConfig.__dataclass_fields__["max_chars_per_piece"].default  # what the pipeline uses
        cores = len(os.sched_getaffinity(0))
        mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
        print(f"machine: {cpu_name()}, {len(os.sched_getaffinity(0))} cores available; python "
              f"{platform.python_version()}; load average before: {os.getloadavg()[0]:.1f}")
        print(f"corpus: {corpus.stat().st_size / 1e6:.1f} MB jsonl, {len(texts)} documents kept ({mb:.1f} MB of "
              f"text), tokenizer {args.tokenizer}")
        texts_file = work / "texts.json"  # what the raw way encodes: the documents a pipeline keeps
        texts_file.write_text(json.dumps(texts), encoding="utf-8")

        # the pipeline's fixed cost (tokenizer load, worker start-up) is measured on the first 1% of the corpus
        lines = corpus.read_text(encoding="utf-8").splitlines(keepends=True)[: max(2, len(texts) // 100)]
        small = work / "small.jsonl"
        small.write_text("".join(lines), encoding="utf-8")
        small_mb = sum(len(json.loads(x)["text"].encode("utf-8")) for x in lines
                       if json.loads(x)["meta"]["redpajama_set_name"] != "RedPajamaGithub") / 1e6
        # The machine may be shared: every way runs --repeat times, interleaved, each run in a fresh process.
        times: dict[str, list[float]] = {}
        cpu: dict[str, list[float]] = {}  # CPU seconds, the way's process and its workers
        cpu_main: dict[str, list[float]] = {}  # CPU seconds of the pipeline's main process alone
        results: dict[str, tuple[int, int | None]] = {}

        def record(key: str, m: dict) -> None:
            times.setdefault(key, []).append(m["dt"])
            cpu.setdefault(key, []).append(m["cpu"])
            if "cpu_main" in m:
                cpu_main.setdefault(key, []).append(m["cpu_main"])
            results[key] = (m["tokens"], m["size"])

        for r in range(args.repeat):
            m = in_fresh_process("raw", args.tokenizer, texts_file, max_chars)
            record("raw", m)
            times.setdefault("raw_ids", []).append(m["dt_ids"])
            results["raw_ids"] = results["raw"]
            if r == 0:  # whole documents, for information (once: it is not what the ratios are taken against)
                record("raw_whole", in_fresh_process("raw", args.tokenizer, texts_file, 0))
            for w in args.workers:
                out = work / f"out-{w}-{r}"
                record(f"pipeline-{w}", in_fresh_process("pipeline", args.tokenizer, corpus, out, w))
                record(f"small-{w}", in_fresh_process("pipeline", args.tokenizer, small, work / f"s-{w}-{r}", w))
                if r < args.repeat - 1:
                    shutil.rmtree(out)
            if not args.skip_run_clm:
                record("run_clm", in_fresh_process("run_clm", args.tokenizer, corpus, work / f"hf-cache-{r}", cores,
                                                   args.seq_len))
                shutil.rmtree(work / f"hf-cache-{r}")
        # Throughput ratios are taken per repetition (each way against the raw run just before it, under about the
        # same load), then the median over repetitions; "seconds" is the fastest run of each way.
        names = {"raw": f"raw tokenizer: `encode_batch_fast` on the pipeline's pieces (documents cut at "
                        f"{max_chars} characters), all cores",
                 "raw_ids": "raw tokenizer + reading the ids (`[e.ids for e in encodings]`)",
                 "raw_whole": "raw tokenizer on whole documents (one run, for information)",
                 "run_clm": f"run_clm.py way: `datasets` json, `filter`, `map(tokenizer)`, `map(group_texts)`, "
                            f"num_proc={cores}"}
        print(f"\n| way | seconds (best of {args.repeat}) | MB text/s | tokens/s | throughput vs raw (median of "
              f"paired runs) | CPU seconds (median) | CPU work vs raw | bytes/token on disk |")
        print("|---|---|---|---|---|---|---|---|")
        keys = (["raw", "raw_ids", "raw_whole"] + [f"pipeline-{w}" for w in args.workers]
                + (["run_clm"] if "run_clm" in times else []))
        for key in keys:
            dt = min(times[key])
            tokens, size = results[key]
            name = names.get(key) or f"pipeline: `prepare_data`, num_workers={key.split('-', 1)[1]}"
            ratio = statistics.median(r / t for r, t in zip(times["raw"], times[key]))
            per_token = f"{size / tokens:.2f}" if size else "-"
            c = statistics.median(cpu.get(key, cpu["raw"]))
            work_ratio = f"{100 * c / statistics.median(cpu['raw']):.0f}%" if key != "raw_ids" else "-"
            if key == "raw_whole":
                tokens = results["raw"][0]  # (the same text: the ratio is in MB/s; its own count differs slightly)
            print(f"| {name} | {dt:.1f} | {mb / dt:.2f} | {tokens / dt:,.0f} | {100 * ratio:.0f}% | "
                  f"{c:.1f} | {work_ratio} | {per_token} |")
        for w in args.workers:
            steady = [((mb - small_mb) / (p - f)) / (mb / r)
                      for r, p, f in zip(times["raw"], times[f"pipeline-{w}"], times[f"small-{w}"])]
            print(f"\npipeline num_workers={w}, steady state (its fixed cost, tokenizer load and worker start-up, "
                  f"{statistics.median(times[f'small-{w}']):.1f}s, measured on 1% of the corpus and subtracted): "
                  f"{100 * statistics.median(steady):.0f}% of raw (median of paired runs; "
                  f"each: {', '.join(f'{100 * x:.0f}%' for x in steady)}); CPU work without the fixed cost: "
                  f"{100 * (statistics.median(cpu[f'pipeline-{w}']) - statistics.median(cpu[f'small-{w}'])) / statistics.median(cpu['raw']) * mb / (mb - small_mb):.0f}% of raw's")
        print_scaling(args.workers, mb, small_mb, times, cpu, cpu_main, results)
        print(f"load average after: {os.getloadavg()[0]:.1f}")
        print("all runs (s): " + ", ".join(f"{k} {[round(t, 1) for t in v]}" for k, v in times.items()))
        (work / f"out-{args.workers[0]}-{args.repeat - 1}").rename(work / "out")
        shutil.copytree(work / "out" / "bench", work / "out" / "bench2")  # a second source for a 2-way mixture
        for stride, what in ((1, "consecutive indices"), (7919, "scattered indices")):
            rate = bench_loader(work / "out", args.seq_len, stride)
            print(f"loader: MixtureDataset[i] (2 sources, seq_len {args.seq_len}, one process, {what}): "
                  f"{rate / 1e6:.1f}M tokens/s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
