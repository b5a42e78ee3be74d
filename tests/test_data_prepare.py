"""Data preparation on local fixtures in the real schemas: a SlimPajama-shaped jsonl (text, meta.redpajama_set_name,
GitHub rows to drop) and a Starcoderdata-shaped parquet (content, max_stars_repo_path)."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tinyllama.config import ConfigError
import tinyllama.data.prepare as prep
from tinyllama.data.prepare import prepare_data
from tinyllama.data.tokenize import split_text

REPO = Path(__file__).resolve().parent.parent
GITHUB = "RedPajamaGithub"


def _long_doc(n_lines=2500):
    return "\n".join(f"line {i}: the quick brown fox jumps over the lazy dog {i * 7 % 13}" for i in range(n_lines))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, demo_paths):
    """Raw fixtures: SlimPajama-shaped jsonl with bad rows mixed in, Starcoderdata-shaped parquet (2 files)."""
    root = tmp_path_factory.mktemp("raw")
    demo_rows = [json.loads(line) for line in demo_paths["slimpajama"].open(encoding="utf-8")]
    good = [r for r in demo_rows if r["meta"]["redpajama_set_name"] != GITHUB][:60]
    github = [r for r in demo_rows if r["meta"]["redpajama_set_name"] == GITHUB][:4]
    extra = [
        {"text": _long_doc(), "meta": {"redpajama_set_name": "RedPajamaC4"}},  # ~150k chars: split before encoding
        {"text": "x" * 30000 + " tail with ünïcödé 😀", "meta": {"redpajama_set_name": "RedPajamaBook"}},
        {"text": "  leading spaces, trailing spaces  \n\n\ttab\n", "meta": {"redpajama_set_name": "RedPajamaC4"}},
    ]
    lines = []
    docs = []  # the documents that must come out, in order
    rows = good[:20] + github[:2] + extra + good[20:] + github[2:]
    for k, r in enumerate(rows):
        lines.append(json.dumps(r, ensure_ascii=False).encode())
        if r["meta"]["redpajama_set_name"] != GITHUB:
            docs.append(r["text"])
        if k == 5:
            lines.append(b'{"text": "bad \xff\xfe bytes", "meta": {"redpajama_set_name": "RedPajamaC4"}}')
            lines.append(b'{"text": "truncated json')
            lines.append(b'{"meta": {"redpajama_set_name": "RedPajamaC4"}}')  # no text
            lines.append(b'{"text": "", "meta": {"redpajama_set_name": "RedPajamaC4"}}')
            lines.append(b'{"text": "lone \\ud800 surrogate", "meta": {"redpajama_set_name": "RedPajamaC4"}}')
    sp = root / "slimpajama" / "train.jsonl"
    sp.parent.mkdir()
    sp.write_bytes(b"\n".join(lines) + b"\n")

    code = pq.read_table(demo_paths["starcoderdata"]).to_pylist()[:30]
    sc_dir = root / "starcoderdata" / "python"
    sc_dir.mkdir(parents=True)
    for i, part in enumerate((code[:12], code[12:])):
        pq.write_table(pa.Table.from_pylist(part), sc_dir / f"train-{i:05d}-of-00002.parquet", row_group_size=5)
    return {"slimpajama": sp, "slimpajama_docs": docs, "github": [r["text"] for r in github],
            "starcoderdata": root / "starcoderdata", "starcoderdata_docs": [r["content"] for r in code]}


def _config(tmp_path, corpus, demo_paths, **over):
    cfg = {
        "tokenizer": str(demo_paths["tokenizer"]),
        "output_dir": str(tmp_path / "out"),
        "shard_tokens": 20000,
        "batch_rows": 7,
        "validation_every": 9,
        "validation_documents": 4,
        "max_chars_per_piece": 2000,
        "num_workers": 0,
        "sources": {
            "slimpajama": {"path": str(corpus["slimpajama"]), "text_field": "text",
                           "filters": [{"field": "meta.redpajama_set_name", "not_in": [GITHUB]}]},
            "starcoderdata": {"path": str(corpus["starcoderdata"]), "text_field": "content"},
        },
    }
    cfg.update(over)
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / f"cfg-{len(list(tmp_path.glob('cfg-*')))}.yaml"
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return ["--config", str(path)]


def _documents(folder: Path, split: str):
    """Every document of a prepared split, as id arrays, from the shards and their indexes."""
    manifest = json.loads((folder / "manifest.json").read_text())
    docs = []
    for k, _ in enumerate(manifest["splits"][split]):
        tokens = np.fromfile(folder / split / f"shard-{k:05d}.bin", dtype=manifest["dtype"])
        starts = np.fromfile(folder / split / f"shard-{k:05d}.idx", dtype="<u4").astype(np.int64)
        assert starts[0] == 0 and np.all(np.diff(starts) > 0)
        docs += np.split(tokens, starts[1:])
    return docs


def _tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_prepare_round_trips_documents_drops_github_and_counts_bad_rows(tmp_path, corpus, demo_paths, demo_tokenizer):
    out = prepare_data(_config(tmp_path, corpus, demo_paths))
    tok = demo_tokenizer
    for source, expected in (("slimpajama", corpus["slimpajama_docs"]), ("starcoderdata", corpus["starcoderdata_docs"])):
        folder = out / source
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["complete"] and manifest["dtype"] == "uint16" and manifest["bos"] and not manifest["eos"]
        train, val = _documents(folder, "train"), _documents(folder, "validation")
        # documents 0, 9, 18, 27 (after filtering) are held out; the rest stay in order in train
        val_idx = [d for d in range(len(expected)) if d % 9 == 0][:4]
        assert [tok.decode(d[1:]) for d in val] == [expected[d] for d in val_idx]
        rest = [t for d, t in enumerate(expected) if d not in val_idx]
        decoded = [tok.decode(d[1:]) for d in train]
        assert decoded == rest  # exact text back, nothing lost, nothing duplicated
        for d in train + val:  # BOS policy: one BOS per document, at its start; no EOS
            assert d[0] == tok.bos_token_id and tok.bos_token_id not in d[1:] and tok.eos_token_id not in d
        assert len(manifest["splits"]["train"]) >= 2  # shard_tokens is small: several shards, read back as one
        st = manifest["stats"]
        assert st["documents"] == {"train": len(rest), "validation": len(val_idx)}
        assert st["tokens"]["train"] == sum(len(d) for d in train)
        # on disk: 2 bytes per token plus 4 per document for the index, plus the manifest
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        assert size / (st["tokens"]["train"] + st["tokens"]["validation"]) < 2.1
    for text in corpus["github"]:
        assert text not in corpus["slimpajama_docs"]
    skipped = json.loads((out / "slimpajama" / "manifest.json").read_text())["stats"]["skipped"]
    assert skipped == {f"filtered: meta.redpajama_set_name == '{GITHUB}'": 4, "invalid UTF-8": 2,
                       "invalid JSON": 1, "missing field text": 1, "empty text": 1}
    # each bad row named with its file and 1-based line (the five after the sixth row), not the filtered ones
    bad = json.loads((out / "slimpajama" / "manifest.json").read_text())["stats"]["bad_rows"]
    assert bad == [{"row": line, "file": str(corpus["slimpajama"]), "line": line, "reason": reason} for line, reason in
                   zip(range(7, 12), ["invalid UTF-8", "invalid JSON", "missing field text", "empty text",
                                      "invalid UTF-8"])]
    sc = json.loads((out / "starcoderdata" / "manifest.json").read_text())
    assert sc["stats"]["skipped"] == {} and sc["stats"]["rows_read"] == 30 and "bad_rows" not in sc["stats"]


def test_a_bad_row_is_named_by_file_and_line(tmp_path, corpus, demo_paths, caplog):
    """A bad JSON line in the second file of a folder: the warning, the manifest and the report name that file and
    its 1-based line (with the row in the source); past the sample, bad rows are only counted."""
    from tinyllama.data.preparation_report import REPORT

    folder = tmp_path / "raw"
    folder.mkdir()
    good = [json.dumps({"text": f"document {i} of the first file"}) for i in range(4)]
    (folder / "a.jsonl").write_text("\n".join(good) + "\n")
    lines = [json.dumps({"text": "fine"}), "", '{"text": "truncated', json.dumps({"text": "fine too"})]
    lines += ["not json"] * (prep.BAD_ROW_SAMPLE + 2)
    (folder / "b.jsonl").write_text("\n".join(lines) + "\n")
    with caplog.at_level("WARNING", logger="tinyllama.data.prepare"):
        out = prepare_data(_config(tmp_path, corpus, demo_paths, validation_documents=0,
                                   sources={"s": {"path": str(folder)}}))
    stats = json.loads((out / "s" / "manifest.json").read_text())["stats"]
    assert stats["skipped"] == {"blank line": 1, "invalid JSON": prep.BAD_ROW_SAMPLE + 3}
    assert stats["bad_rows"][:2] == [
        {"row": 6, "file": str(folder / "b.jsonl"), "line": 2, "reason": "blank line"},
        {"row": 7, "file": str(folder / "b.jsonl"), "line": 3, "reason": "invalid JSON"}]
    assert len(stats["bad_rows"]) == prep.BAD_ROW_SAMPLE and stats["bad_rows"][-1]["line"] == prep.BAD_ROW_SAMPLE + 2
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert f"s: {folder / 'b.jsonl'} line 3 skipped: invalid JSON" in warnings
    assert len(warnings) == prep.BAD_ROW_SAMPLE and "further ones are only counted" in warnings[-1]
    report = (out / REPORT).read_text()
    assert f"## s: bad rows (the first {prep.BAD_ROW_SAMPLE} of {prep.BAD_ROW_SAMPLE + 4})" in report
    assert f"- {folder / 'b.jsonl'} line 3: invalid JSON" in report


def test_split_text_keeps_every_character_and_cuts_at_lines():
    text = _long_doc(300) + " " + "y" * 5000 + " end"
    pieces = split_text(text, 1000)
    assert "".join(pieces) == text and all(len(p) <= 1000 for p in pieces)
    assert sum(p.endswith("\n") for p in pieces) >= len(pieces) - 7  # line cuts, except in the long line
    assert split_text("short", 1000) == ["short"] and split_text(text, 0) == [text]


def test_bos_eos_policy_is_applied_per_document(tmp_path, corpus, demo_paths, demo_tokenizer):
    out = prepare_data(_config(tmp_path, corpus, demo_paths, bos=False, eos=True, only=["starcoderdata"],
                               validation_documents=0, max_chars_per_piece=500))
    docs = _documents(out / "starcoderdata", "train")
    tok = demo_tokenizer
    assert len(docs) == 30 and not (out / "starcoderdata" / "validation").exists()
    for d, text in zip(docs, corpus["starcoderdata_docs"]):
        assert d[-1] == tok.eos_token_id and tok.eos_token_id not in d[:-1] and tok.bos_token_id not in d
        assert tok.decode(d[:-1]) == text  # split into 500-character pieces, decodes back exactly


def test_worker_processes_write_the_same_bytes(tmp_path, corpus, demo_paths, monkeypatch):
    pools = []

    class CountedPool(prep._WorkerPool):
        def __init__(self, workers, spec):
            pools.append(workers)
            super().__init__(workers, spec)

    monkeypatch.setattr(prep, "_WorkerPool", CountedPool)
    a = prepare_data(_config(tmp_path / "a", corpus, demo_paths, num_workers=0))
    assert pools == []  # in-process
    for workers in (1, 2):
        b = prepare_data(_config(tmp_path / f"w{workers}", corpus, demo_paths, num_workers=workers))
        assert _tree(a) == _tree(b), workers
    assert pools == [1, 2]  # one pool per run, shared by the run's two sources


def test_interrupted_run_resumes_to_identical_bytes(tmp_path, corpus, demo_paths, monkeypatch):
    # small shards: slimpajama must still be unfinished when the second run is killed at its second manifest write
    reference = _tree(prepare_data(_config(tmp_path / "ref", corpus, demo_paths, shard_tokens=10000)))
    args = _config(tmp_path / "run", corpus, demo_paths, shard_tokens=10000)
    out = tmp_path / "run" / "out"
    # 1) killed between two shards
    real_commit, calls = prep._commit, []

    def failing_commit(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("simulated kill")
        return real_commit(*a, **k)

    monkeypatch.setattr(prep, "_commit", failing_commit)
    with pytest.raises(KeyboardInterrupt):
        prepare_data(args)
    manifest = json.loads((out / "slimpajama" / "manifest.json").read_text())
    assert not manifest["complete"] and len(manifest["splits"]["train"]) == 2
    assert not list(out.rglob(".tmp-*"))  # the half-written shard was removed
    # 2) killed after a shard was renamed but before the manifest listed it: an unlisted shard on disk
    real_write, writes = prep.write_manifest, []

    def failing_write(*a, **k):
        writes.append(1)
        if len(writes) == 2:
            raise KeyboardInterrupt("simulated kill")
        return real_write(*a, **k)

    monkeypatch.setattr(prep, "_commit", real_commit)
    monkeypatch.setattr(prep, "write_manifest", failing_write)
    with pytest.raises(KeyboardInterrupt):
        prepare_data(args)
    manifest = json.loads((out / "slimpajama" / "manifest.json").read_text())
    listed = len(manifest["splits"]["train"])
    assert (out / "slimpajama" / "train" / f"shard-{listed:05d}.bin").exists()  # on disk, not in the manifest
    monkeypatch.setattr(prep, "write_manifest", real_write)
    prepare_data(args)
    assert _tree(out) == reference


def test_killed_process_resumes_without_duplicates(tmp_path, corpus, demo_paths):
    reference = _tree(prepare_data(_config(tmp_path / "ref", corpus, demo_paths)))
    args = _config(tmp_path / "run", corpus, demo_paths)
    out = tmp_path / "run" / "out"
    # a child that commits slowly (so it can be killed mid-run), then SIGKILL: no cleanup code runs
    code = ("import sys, time; import tinyllama.data.prepare as p; c = p._commit\n"
            "def slow(*a, **k):\n    c(*a, **k); time.sleep(0.3)\n"
            f"p._commit = slow; p.prepare_data({args!r})")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.DEVNULL)
    manifest_path = out / "slimpajama" / "manifest.json"
    deadline = time.time() + 60
    try:
        while time.time() < deadline:
            if manifest_path.exists() and len(json.loads(manifest_path.read_text())["splits"]["train"]) >= 2:
                break
            time.sleep(0.02)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait()
    assert not json.loads(manifest_path.read_text())["complete"]
    prepare_data(args)
    assert _tree(out) == reference


def test_rerun_of_a_complete_preparation_only_reads_manifests(tmp_path, corpus, demo_paths, monkeypatch):
    args = _config(tmp_path, corpus, demo_paths)
    out = prepare_data(args)
    before = _tree(out)

    def boom(*a, **k):
        raise AssertionError("a complete rerun must not load the tokenizer")

    monkeypatch.setattr(prep, "load_tokenizer", boom)
    t0 = time.perf_counter()
    assert prepare_data(args) == out
    assert time.perf_counter() - t0 < 1.0 and _tree(out) == before
    # other settings on the same folder: refused, naming the manifest, unless --overwrite
    monkeypatch.undo()
    with pytest.raises(ValueError, match=r"slimpajama/manifest.json: prepared with other settings \(bos"):
        prepare_data(args + ["--bos", "false"])
    assert _tree(out) == before
    prepare_data(args + ["--bos", "false", "--overwrite", "true"])
    assert json.loads((out / "slimpajama" / "manifest.json").read_text())["bos"] is False
    # a damaged shard is named
    shard = out / "starcoderdata" / "train" / "shard-00000.bin"
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(ValueError, match="starcoderdata/train/shard-00000.bin: .* bytes, but"):
        prepare_data(args + ["--bos", "false", "--overwrite", "false"])


def test_demo_config_prepares_the_four_demo_sources(tmp_path, demo_paths, monkeypatch):
    monkeypatch.chdir(REPO)
    out = prepare_data(["--config", "configs/data/demo.yaml", "--output_dir", str(tmp_path / "demo"),
                        "--num_workers", "0"])
    for name in ("slimpajama", "starcoderdata", "proof_pile_2", "skypile"):
        manifest = json.loads((out / name / "manifest.json").read_text())
        assert manifest["complete"] and manifest["stats"]["tokens"]["train"] > 10000
        assert manifest["stats"]["documents"]["validation"] > 0
    assert json.loads((out / "slimpajama" / "manifest.json").read_text())["stats"]["skipped"] == {
        f"filtered: meta.redpajama_set_name == '{GITHUB}'": 12}


# ---- bad input: a clear error naming the file and the cause, before anything is written --------------------------
def _expect(tmp_path, args, exc, pattern):
    with pytest.raises(exc, match=pattern):
        prepare_data(args)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*.bin"))


def test_bad_sources_fail_before_any_work(tmp_path, corpus, demo_paths):
    base = {"path": str(corpus["slimpajama"])}
    cases = [
        ({"path": str(tmp_path / "nope.jsonl")}, FileNotFoundError, "source 'a': path not found: .*nope.jsonl"),
        ({"path": str(tmp_path / "*.parquet")}, FileNotFoundError, r"no file matches"),
        ({**base, "text_field": "body"}, ValueError, r"train.jsonl row 1 has no field 'body' \(text_field\); its "
                                                     r"fields are: meta, text"),
        ({**base, "filters": [{"field": "meta.set", "not_in": ["x"]}]}, ValueError, "no field 'meta.set'"),
        ({"path": "someone/some-dataset"}, ValueError, "offline mode is on"),
    ]
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    cases.append(({"path": str(empty)}, ValueError, "empty source"))
    for spec, exc, pattern in cases:
        # the good source comes first: it must not be started when the second one is bad
        _expect(tmp_path, _config(tmp_path, corpus, demo_paths, sources={"good": base, "a": spec}), exc, pattern)


def test_tokenizer_json_off_its_sentencepiece_model_stops_preparation_before_any_shard(tmp_path, corpus, demo_paths):
    """A folder as transformers 5.24 converts a bare tokenizer.model (LlamaTokenizer: its Metaspace pre-tokenizer
    skips SentencePiece's dummy prefix before a leading space) next to that tokenizer.model: the guard stops with
    the rate, the first differing pieces and the fix; tokenizer_check: false prepares anyway; the demo's exact
    folder passes the same check."""
    import shutil

    from transformers import LlamaTokenizer

    from tinyllama.tokenizer import TokenizerMismatch, check_tokenizer

    bad = tmp_path / "converted_by_transformers"
    bad.mkdir()
    shutil.copy(demo_paths["tokenizer"] / "tokenizer.model", bad / "tokenizer.model")
    LlamaTokenizer.from_pretrained(str(bad)).save_pretrained(bad)
    args = _config(tmp_path, corpus, demo_paths, tokenizer=str(bad))
    with pytest.raises(TokenizerMismatch) as e:
        prepare_data(args)
    message = str(e.value)
    assert re.search(r"[1-9]\d* of \d+ documents differ", message) and "first difference" in message
    pieces = dict(re.findall(r"^ +(sentencepiece|fast): +(\[.*\])$", message, re.M))
    assert pieces["sentencepiece"] != pieces["fast"]  # the first differing pieces, side by side
    assert f"python scripts/convert_tokenizer.py {bad} --out" in message and "tokenizer_check: false" in message
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*.bin"))
    assert prepare_data(args + ["--tokenizer_check", "false"]).is_dir()
    assert list((tmp_path / "out").rglob("*.bin"))
    texts = [json.loads(line)["text"] for line in demo_paths["slimpajama"].open(encoding="utf-8")][:64]
    texts += ["  leading spaces, trailing spaces  \n\n\ttab\n"]
    assert check_tokenizer(str(demo_paths["tokenizer"]), texts).exact


def test_a_missing_tokenizer_folder_names_the_conversion_that_makes_it(tmp_path, corpus, demo_paths, monkeypatch):
    """configs/data/own-corpus.yaml names tokenizers/tinyllama, a folder made by scripts/convert_tokenizer.py: the
    file says so, and so does the error when the folder is not there."""
    config = (REPO / "configs" / "data" / "own-corpus.yaml").read_text()
    assert "tokenizer: tokenizers/tinyllama" in config
    assert "python scripts/convert_tokenizer.py TinyLlama/TinyLlama_v1.1 --out tokenizers/tinyllama" in config
    monkeypatch.chdir(tmp_path)  # (no tokenizers/ folder here)
    _expect(tmp_path, _config(tmp_path, corpus, demo_paths, tokenizer="tokenizers/tinyllama"), ValueError,
            re.escape("`python scripts/convert_tokenizer.py TinyLlama/TinyLlama_v1.1 --out tokenizers/tinyllama`"))


def test_all_rows_filtered_is_an_error_naming_the_counts(tmp_path, corpus, demo_paths):
    spec = {"path": str(corpus["slimpajama"]), "filters": [{"field": "meta.redpajama_set_name", "in": ["nope"]}]}
    with pytest.raises(ValueError, match=r"source 'a': no documents in .*filtered: meta.redpajama_set_name not in"):
        prepare_data(_config(tmp_path, corpus, demo_paths, sources={"a": spec}))


def test_config_errors_are_reported_together(tmp_path, corpus, demo_paths):
    with pytest.raises(ConfigError) as e:
        prepare_data(_config(tmp_path, corpus, demo_paths, shard_tokens=0, only=["zzz"], sources={
            "a": {"path": "x.jsonl", "txt_field": "text"},
            "b": {"path": "y.jsonl", "filters": [{"field": "f", "in": ["x"], "not_in": ["y"]}]},
            "bad/name": {"path": "z"}}))
    msg = str(e.value)
    for part in ("unknown key 'txt_field' in sources.a", "sources.b.filters[0]: give exactly one of", "shard_tokens",
                 "only: no source named 'zzz'", "sources.bad/name"):
        assert part in msg


def test_a_source_entry_is_checked_by_the_config_parser(tmp_path, corpus, demo_paths):
    """A source's keys go through the parser every config uses (tinyllama.config.check_mapping): a misspelt key
    and a mistyped value are both in the one error, the misspelt key with the closest known one; the checks that
    types cannot express (a filter needs exactly one of in / not_in) join them; the filters' keys too."""
    with pytest.raises(ConfigError) as e:
        prepare_data(_config(tmp_path, corpus, demo_paths, sources={
            "a": {"path": str(corpus["slimpajama"]), "txt_field": "text", "max_documents": "many",
                  "filters": [{"field": "meta.redpajama_set_name", "notin": [GITHUB]}]}}))
    errors = e.value.errors
    assert "unknown key 'txt_field' in sources.a; did you mean 'text_field'?" in errors
    assert "'max_documents' in sources.a: expected int, got 'many'" in errors
    assert "unknown key 'notin' in sources.a.filters[0]; did you mean 'not_in'?" in errors
    assert "sources.a.filters[0]: give exactly one of 'in' or 'not_in'" in errors
    assert len(errors) == 4
    # values the parser converts (a number-like string; 'in', a Python keyword, is the YAML key) are accepted,
    # and the manifest records the source as before
    out = prepare_data(_config(tmp_path, corpus, demo_paths, sources={"a": {
        "path": str(corpus["slimpajama"]), "max_documents": "5",
        "filters": [{"field": "meta.redpajama_set_name", "in": ["RedPajamaC4"]}]}}))
    source = json.loads((out / "a" / "manifest.json").read_text())["settings"]["source"]
    assert source == {"path": str(corpus["slimpajama"]), "format": "auto", "text_field": "text", "subset": None,
                      "data_dir": None, "data_files": None, "split": "train", "revision": None, "max_documents": 5,
                      "filters": [{"field": "meta.redpajama_set_name", "in": ["RedPajamaC4"]}]}


def test_vocab_too_large_for_uint16(tmp_path, corpus, demo_paths):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i + 3 for i in range(70000)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>") \
        .save_pretrained(tmp_path / "big")
    raw = tmp_path / "w.jsonl"
    raw.write_text("".join(json.dumps({"text": f"w{i} w{i + 69000} w5"}) + "\n" for i in range(50)))
    args = _config(tmp_path, corpus, demo_paths, tokenizer=str(tmp_path / "big"), max_chars_per_piece=0,
                   sources={"w": {"path": str(raw)}})
    _expect(tmp_path, args + ["--dtype", "uint16"], ValueError, r"dtype: uint16 holds ids below 65536, but "
                                                                 r"tokenizer .*big' has 70003 tokens")
    out = prepare_data(args)  # auto: uint32
    manifest = json.loads((out / "w" / "manifest.json").read_text())
    assert manifest["dtype"] == "uint32"
    ids = np.concatenate(_documents(out / "w", "train"))
    assert ids.max() == 69049 + 3


def test_cli_prints_one_clear_error(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"tokenizer: x\noutput_dir: {tmp_path}/o\nsources: {{a: {{path: {tmp_path}/missing.jsonl}}}}\n")
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "prepare_data.py"), "--config", str(cfg),
                        "--build_demo", ""], capture_output=True, text=True, cwd=REPO,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "error:" in r.stderr
