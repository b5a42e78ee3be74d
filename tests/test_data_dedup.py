"""Deduplication in data preparation, on a SlimPajama-shaped corpus with planted exact and near duplicates:
every planted copy is removed (to the documented threshold), no distinct document is, the manifest and the
report count them, and the kept set is the same whatever the number of workers and after a kill."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

import tinyllama.data.prepare as prep
from tinyllama.config import ConfigError
from tinyllama.data.dedup import DedupSettings, candidate_probability
from tinyllama.data.ngrams import text_ngrams
from tinyllama.data.prepare import prepare_data
from tinyllama.data.preparation_report import CHART, REPORT

SET = "RedPajamaCommonCrawl"


def _jaccard(a: str, b: str, n: int = 5) -> float:
    x, y = set(text_ngrams(a, n).tolist()), set(text_ngrams(b, n).tolist())
    return len(x & y) / len(x | y)


def _row(text, name=SET):
    return {"text": text, "meta": {"redpajama_set_name": name}}


class Words:
    """Documents of Zipfian pseudo-words (like prose: frequent words shared, 5-grams rarely), deterministic."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        syllables = ["ka", "lo", "mi", "ner", "tu", "sa", "ve", "dor", "pi", "qua", "len", "ri", "zo", "th", "ash"]
        self.vocab = sorted({"".join(self.rng.choice(syllables, size=self.rng.integers(1, 4))) for _ in range(4000)})
        p = 1.0 / np.arange(1, len(self.vocab) + 1)
        self.p = p / p.sum()

    def words(self, n: int) -> list[str]:
        return [str(w) for w in self.rng.choice(self.vocab, size=n, p=self.p)]

    @staticmethod
    def lines(ws: list[str], per: int = 200) -> list[str]:
        return [" ".join(ws[i:i + per]) for i in range(0, len(ws), per)]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """40 distinct documents (1000 words, 5 lines each) and, after them, planted copies in the SlimPajama schema."""
    gen = Words(0)
    words, lines = gen.words, gen.lines

    distinct = [lines(words(1000)) for _ in range(40)]
    texts = ["\n".join(d) for d in distinct]
    rows = [_row(t) for t in texts]
    kept = list(texts)

    def edited(k, every):
        ws = texts[k].split()
        for i in range(every // 2, len(ws), every):
            ws[i] = "EDITED"
        return "\n".join(lines(ws))

    dup = {
        "duplicate": [texts[3],  # verbatim
                      texts[5].upper().replace(" ", "  ", 50).replace("\n", ", \n")],  # case, spaces, punctuation
        "near duplicate": [edited(7, 250),  # 4 words of 1000 changed
                           "\n".join(distinct[9][2:] + distinct[9][:2])],  # lines reordered
    }
    related = [edited(11, 8),  # one word in 8 changed: similar, but far below the threshold
               distinct[13][0] + "\n" + "\n".join(lines(words(800)))]  # shares a 200-word line (boilerplate)
    for t in related:
        rows.append(_row(t))
        kept.append(t)
    rows += [_row(t) for t in dup["duplicate"] + dup["near duplicate"]]
    rows.insert(20, _row(texts[0], "RedPajamaGithub"))  # filtered first: a filter runs before dedup
    lines_out = [json.dumps(r).encode() for r in rows]
    lines_out.insert(30, b'{"text": "truncated json')
    path = tmp_path_factory.mktemp("dedup_raw") / "train.jsonl"
    path.write_bytes(b"\n".join(lines_out) + b"\n")
    return {"path": path, "kept": kept, "dup": dup, "related": related, "originals": texts}


def _config(tmp_path, planted, demo_paths, name="cfg", **over):
    cfg = {"tokenizer": str(demo_paths["tokenizer"]), "output_dir": str(tmp_path / "out"), "shard_tokens": 6000,
           "batch_rows": 5, "validation_documents": 0, "num_workers": 0, "dedup": True,
           "sources": {"web": {"path": str(planted["path"]),
                               "filters": [{"field": "meta.redpajama_set_name", "not_in": ["RedPajamaGithub"]}]}}}
    cfg.update(over)
    path = tmp_path / f"{name}.yaml"
    tmp_path.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cfg))
    return ["--config", str(path)]


def _kept_texts(folder: Path, tok) -> list[str]:
    manifest = json.loads((folder / "manifest.json").read_text())
    out = []
    for k, _ in enumerate(manifest["splits"]["train"]):
        tokens = np.fromfile(folder / "train" / f"shard-{k:05d}.bin", dtype=manifest["dtype"])
        starts = np.fromfile(folder / "train" / f"shard-{k:05d}.idx", dtype="<u4").astype(np.int64)
        out += [tok.decode(d[1:]) for d in np.split(tokens, starts[1:])]
    return out


def _shards(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("shard-*"))}


def test_planted_duplicates_are_removed_and_nothing_else(tmp_path, planted, demo_paths, demo_tokenizer):
    s = DedupSettings()
    b, r = s.bands()
    # the planted pairs are where the documentation says they are on the S-curve
    o = planted["originals"]
    near = [_jaccard(o[7], planted["dup"]["near duplicate"][0]), _jaccard(o[9], planted["dup"]["near duplicate"][1])]
    assert min(near) >= 0.95 and candidate_probability(min(near), b, r) > 0.99
    far = [_jaccard(o[11], planted["related"][0]), _jaccard(o[13], planted["related"][1])]
    assert max(far) < 0.6 and candidate_probability(max(far), b, r) < 0.01

    out = prepare_data(_config(tmp_path, planted, demo_paths))
    folder = out / "web"
    assert _kept_texts(folder, demo_tokenizer) == planted["kept"]  # in order, every distinct document, once
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["stats"]["skipped"] == {"duplicate": 2, "near duplicate": 2, "invalid JSON": 1,
                                            "filtered: meta.redpajama_set_name == 'RedPajamaGithub'": 1}
    assert manifest["settings"]["dedup"] == s.to_dict()
    report = (out / REPORT).read_text()
    row = next(line for line in report.splitlines() if line.startswith("| web"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:] == ["48", "42 (87.5%)", "1 (2.1%)", "1 (2.1%)", "2 (4.2%)", "2 (4.2%)", "0 (0.0%)",
                         f"{manifest['stats']['tokens']['train']:,}"]
    assert (out / CHART).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the same kept set, byte for byte, with two worker processes
    out2 = prepare_data(_config(tmp_path / "w2", planted, demo_paths, num_workers=2))
    assert _shards(out2 / "web") == _shards(folder)

    # exact only: the near duplicates stay
    out3 = prepare_data(_config(tmp_path / "exact", planted, demo_paths, dedup={"near": False}))
    skipped = json.loads((out3 / "web" / "manifest.json").read_text())["stats"]["skipped"]
    assert skipped.get("duplicate") == 2 and "near duplicate" not in skipped


@pytest.mark.parametrize("kill_at", ["manifest write after the index commit", "mid-shard"])
def test_kill_and_rerun_gives_the_same_kept_set(tmp_path, planted, demo_paths, monkeypatch, kill_at):
    whole = prepare_data(_config(tmp_path / "whole", planted, demo_paths))
    args = _config(tmp_path / "killed", planted, demo_paths)
    calls = {"n": 0}

    class Killed(BaseException):
        pass

    if kill_at.startswith("manifest"):
        real = prep.write_manifest

        def write_manifest(folder, manifest):
            calls["n"] += 1
            if calls["n"] == 4:  # the dedup index has committed rows the manifest will not record
                raise Killed()
            real(folder, manifest)

        monkeypatch.setattr(prep, "write_manifest", write_manifest)
    else:
        real_screen = prep.SourceScreen.decide

        def decide(self, *args):
            calls["n"] += 1
            if calls["n"] == 7:
                raise Killed()
            return real_screen(self, *args)

        monkeypatch.setattr(prep.SourceScreen, "decide", decide)
    with pytest.raises(Killed):
        prepare_data(args)
    monkeypatch.undo()
    killed = tmp_path / "killed" / "out" / "web"
    assert not json.loads((killed / "manifest.json").read_text())["complete"]
    prepare_data(args)
    assert _shards(killed) == _shards(whole / "web")
    m1, m2 = (json.loads((f / "manifest.json").read_text()) for f in (killed, whole / "web"))
    assert m1["stats"] == m2["stats"]


def test_dedup_settings_are_checked_and_recorded(tmp_path, planted, demo_paths):
    with pytest.raises(ConfigError) as e:  # keys and types by the config parser, ranges beside them: all at once
        prepare_data(_config(tmp_path, planted, demo_paths, dedup={"threshold": 1.5, "thresold": 0.7, "ngram": 0,
                                                                   "near": "maybe"}))
    assert sorted(e.value.errors) == sorted([
        "'threshold' in dedup: expected a number between 0 and 1 (exclusive), got 1.5",
        "unknown key 'thresold' in dedup; did you mean 'threshold'?",
        "'ngram' in dedup: expected an integer >= 1, got 0", "'near' in dedup: expected true or false, got 'maybe'"])
    with pytest.raises(ConfigError) as e:  # the decontamination keys too, in the same message
        prepare_data(_config(tmp_path, planted, demo_paths, decontaminate={"suites": ["comonsense"], "mode": "cut",
                                                                           "n_gram": 8}))
    msg = str(e.value)
    assert "unknown evaluation suite or task 'comonsense' (did you mean 'commonsense'?)" in msg
    assert "'mode' in decontaminate: expected one of 'report', 'drop', got 'cut'" in msg
    assert "unknown key 'n_gram' in decontaminate; did you mean 'ngram'?" in msg
    with pytest.raises(ConfigError, match="sources.web.dedup"):
        prepare_data(_config(tmp_path, planted, demo_paths, sources={"web": {"path": str(planted["path"]),
                                                                             "dedup": "often"}}))
    prepare_data(_config(tmp_path, planted, demo_paths, sources={"web": {"path": str(planted["path"])}},
                         dedup={"threshold": 0.7}))
    # on the command line, a YAML value: the same settings, so the finished source is not prepared again
    args = _config(tmp_path, planted, demo_paths, sources={"web": {"path": str(planted["path"])}})
    prepare_data(args + ["--dedup", "{threshold: 0.7}"])
    with pytest.raises(ValueError, match=r"prepared with other settings \(dedup\)"):
        prepare_data(_config(tmp_path, planted, demo_paths, sources={"web": {"path": str(planted["path"])}}))


def test_band_collisions_below_the_threshold_are_kept(tmp_path, demo_paths):
    """Short documents sharing a template (the demo's proof-pile-2 lemmas) collide in an LSH band well below the
    threshold; the signature check keeps them."""
    from tinyllama.data.dedup import DedupIndex, Deduplicator

    s = DedupSettings()
    d = Deduplicator(s)
    texts = list(dict.fromkeys(json.loads(line)["text"] for line in demo_paths["proof_pile_2"].open()))  # distinct
    keys = [d.keys(t) for t in texts]
    first: dict[int, int] = {}
    below = []
    for i, (_, bands, _) in enumerate(keys):
        hits = {first[b] for b in bands if b in first}
        below += [(j, i) for j in hits if _jaccard(texts[j], texts[i]) < s.threshold - 0.1]
        for b in bands:
            first.setdefault(b, i)
    assert below  # banding alone would drop these
    index = DedupIndex.open(tmp_path, s, 0)
    verdicts = index.screen(keys, list(range(len(texts))), [None] * len(texts))
    assert all(verdicts[i] is None for _, i in below)
    index.close()


def test_the_report_covers_every_prepared_source_of_the_config(tmp_path, planted, demo_paths):
    """Sources prepared one at a time (--only) end with one report of both; a no-op rerun leaves it alone."""
    sources = {name: {"path": str(planted["path"])} for name in ("first", "second")}
    args = _config(tmp_path, planted, demo_paths, sources=sources, dedup={"near": False})
    out = prepare_data(args + ["--only", "first"])
    rows = [line.split("|")[1].strip() for line in (out / REPORT).read_text().splitlines() if line.startswith("| ")]
    assert rows[1:] == ["first"]
    prepare_data(args + ["--only", "second"])
    text = (out / REPORT).read_text()
    assert "| first |" in text and "| second |" in text
    mtime = (out / REPORT).stat().st_mtime_ns
    prepare_data(args)  # nothing to do
    assert (out / REPORT).stat().st_mtime_ns == mtime
