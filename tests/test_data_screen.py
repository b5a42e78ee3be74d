"""Deduplication and decontamination together, end to end and offline: a SlimPajama-shaped corpus with planted
duplicates and planted benchmark items (from the commonsense suite's tasks, read by lm-eval from local files in the
real schemas) is prepared with both steps on; every planted item is found and reported, nothing else is dropped;
the evaluation report marks the tasks whose items the model's training data holds."""

import json

import numpy as np
import pytest

from test_data_dedup import Words, _kept_texts, _shards
from test_decontaminate import FILLER, _reformat, _result, _row, report  # noqa: F401 (report: a fixture)
from test_eval_run import write_fixtures
from tinyllama.data.decontaminate import load_test_items
from tinyllama.data.prepare import prepare_data
from tinyllama.data.preparation_report import REPORT


@pytest.fixture(scope="module")
def eval_data(tmp_path_factory):
    return write_fixtures(tmp_path_factory.mktemp("eval_data"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, eval_data):
    """30 distinct documents, then: an exact and a near copy of two of them, three documents holding benchmark
    items (one verbatim, two reformatted), and a copy of one of those three."""
    items = load_test_items(["commonsense"], eval_data)
    gen = Words(1)
    distinct = ["\n".join(gen.lines(gen.words(600))) for _ in range(30)]
    planted_items = {"hellaswag": 2, "arc_challenge": 0, "winogrande": 1}
    contaminated = [
        distinct[0][:1500] + "\n" + items["hellaswag"][2] + "\n" + FILLER,
        FILLER + _reformat(items["arc_challenge"][0], 0) + " " + gen.lines(gen.words(300))[0],
        gen.lines(gen.words(300))[0] + "\n" + _reformat(items["winogrande"][1], 1) + "\n" + FILLER,
    ]
    near = distinct[4].split()
    near[100] = near[400] = "CHANGED"
    texts = distinct[:15] + [contaminated[0]] + distinct[15:] + [distinct[2], " ".join(near)] + contaminated[1:] + [
        contaminated[0].upper()]
    path = tmp_path_factory.mktemp("screen_raw") / "train.jsonl"
    path.write_text("".join(json.dumps({"text": t, "meta": {"redpajama_set_name": "RedPajamaC4"}}) + "\n"
                            for t in texts))
    return {"path": path, "distinct": distinct, "contaminated": contaminated, "planted_items": planted_items,
            "order": distinct[:15] + [contaminated[0]] + distinct[15:] + contaminated[1:]}


def _prepare(tmp_path, corpus, eval_data, demo_paths, mode, workers=0):
    cfg = {"tokenizer": str(demo_paths["tokenizer"]), "output_dir": str(tmp_path / mode), "num_workers": workers,
           "validation_documents": 0, "shard_tokens": 5000, "batch_rows": 4, "dedup": True,
           "decontaminate": {"suites": ["commonsense"], "mode": mode, "eval_data_dir": str(eval_data)},
           "sources": {"web": {"path": str(corpus["path"])}}}
    path = tmp_path / f"{mode}.yaml"
    tmp_path.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cfg))
    return prepare_data(["--config", str(path)])


def test_planted_duplicates_and_benchmark_items_are_all_found_and_nothing_else(
        tmp_path, corpus, eval_data, demo_paths, demo_tokenizer, report):  # noqa: F811
    # report mode: the documents with benchmark items stay (and are counted); the copies go
    out = _prepare(tmp_path, corpus, eval_data, demo_paths, "report")
    folder = out / "web"
    assert _kept_texts(folder, demo_tokenizer) == corpus["order"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["stats"]["skipped"] == {"duplicate": 2, "near duplicate": 1}
    section = manifest["contamination"]
    found = {t: v["contaminated"] for t, v in section["tasks"].items() if v["contaminated"]}
    assert found == {t: [i] for t, i in corpus["planted_items"].items()}
    assert section["documents"] == 3 and section["mode"] == "report" and section["ngram"] == 13
    text = (out / REPORT).read_text()
    assert "| hellaswag | 3 | 1 | 0 |" in text and "| piqa | 3 | 0 | 1 |" in text  # piqa's short item: unchecked
    # which documents (kept in report mode): where each is in the source, and the items it holds
    lines = [json.loads(line)["text"] for line in corpus["path"].read_text().splitlines()]
    planted = [(lines.index(doc) + 1, {task: [i]}) for doc, (task, i) in zip(corpus["contaminated"],
                                                                               corpus["planted_items"].items())]
    assert section["documents_found"] == [{"row": r, "file": str(corpus["path"]), "line": r, "items": items}
                                          for r, items in planted]
    for r, items in planted:
        (task, (i,)), = items.items()
        assert f"| {corpus['path']} line {r} | {task} {i} |" in text
    # two worker processes (the test items pickled to each once): the same shards and the same manifest
    out2 = _prepare(tmp_path / "w2", corpus, eval_data, demo_paths, "report", workers=2)
    assert _shards(out2 / "web") == _shards(folder)
    m2 = json.loads((out2 / "web" / "manifest.json").read_text())
    assert m2["contamination"] == section and m2["stats"] == manifest["stats"]

    # drop mode: those documents (and the copy of one) go too, counted as contaminated; the tally still names them
    out_drop = _prepare(tmp_path, corpus, eval_data, demo_paths, "drop")
    assert _kept_texts(out_drop / "web", demo_tokenizer) == corpus["distinct"]
    m_drop = json.loads((out_drop / "web" / "manifest.json").read_text())
    assert m_drop["stats"]["skipped"] == {"contaminated": 4, "duplicate": 1, "near duplicate": 1}
    assert {t: v["contaminated"] for t, v in m_drop["contamination"]["tasks"].items() if v["contaminated"]} == \
        {t: [i] for t, i in corpus["planted_items"].items()}
    copy = len(lines)  # the upper-case copy of the first: dropped as contaminated before it is a duplicate
    assert [d["row"] for d in m_drop["contamination"]["documents_found"]] == [r for r, _ in planted] + [copy]

    # the evaluation report of a model trained on the report-mode data marks exactly the planted tasks
    model = tmp_path / "run" / "export" / "step-000001"
    model.mkdir(parents=True)
    (model / "training_metadata.json").write_text(json.dumps({"step": 1, "tokens_seen": 1000, "data_dir": str(out),
                                                              "mixture": {"web": 1.0}}))
    tasks = [{"task": t, "label": t, "metric": "acc"} for t in ("hellaswag", "arc_challenge", "piqa", "boolq")]
    md, _ = report.build_report([_result(tmp_path, model, tasks)], None)
    assert _row(md, "step-000001")[2:6] == ["50.00 (!1 of 3)", "50.00 (!1 of 3)", "50.00", "50.00"]
    # trained on the drop-mode data: the items were found but not trained on, so no score is marked
    model2 = tmp_path / "run2" / "export" / "step-000001"
    model2.mkdir(parents=True)
    (model2 / "training_metadata.json").write_text(json.dumps({"step": 1, "tokens_seen": 1000,
                                                               "data_dir": str(out_drop), "mixture": {"web": 1.0}}))
    md2, _ = report.build_report([_result(tmp_path / "r2", model2, tasks)], None)
    assert "(!" not in _row(md2, "step-000001")[2] and "(?)" not in md2


def test_one_task_named_is_the_one_task_checked(tmp_path, eval_data, demo_paths):
    """decontaminate: {suites: [arc_easy]}: a task name, as EVAL_TASKS takes it, decontaminates against that task
    alone: its item is found, a hellaswag item in the same corpus is not looked for."""
    from tinyllama.data.ngrams import words

    items = load_test_items(["commonsense"], eval_data)
    arc = next(i for i, text in enumerate(items["arc_easy"]) if len(words(text)) >= 13)
    texts = [FILLER * 3, FILLER + items["arc_easy"][arc] + " " + FILLER, FILLER + items["hellaswag"][2], FILLER * 2]
    raw = tmp_path / "raw.jsonl"
    raw.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    cfg = {"tokenizer": str(demo_paths["tokenizer"]), "output_dir": str(tmp_path / "out"), "num_workers": 0,
           "validation_documents": 0, "decontaminate": {"suites": ["arc_easy"], "eval_data_dir": str(eval_data)},
           "sources": {"web": {"path": str(raw)}}}
    (tmp_path / "c.yaml").write_text(json.dumps(cfg))
    out = prepare_data(["--config", str(tmp_path / "c.yaml")])
    manifest = json.loads((out / "web" / "manifest.json").read_text())
    section = manifest["contamination"]
    assert section["suites"] == ["arc_easy"] and list(section["tasks"]) == ["arc_easy"]
    assert section["tasks"]["arc_easy"]["contaminated"] == [arc] and section["documents"] == 1
    assert manifest["settings"]["decontaminate"] == {"suites": ["arc_easy"], "ngram": 13, "mode": "report"}


def test_a_half_prepared_source_does_not_resume_against_other_test_items(tmp_path, corpus, eval_data, demo_paths,
                                                                          monkeypatch):
    import tinyllama.data.prepare as prep

    calls = {"n": 0}
    real = prep.write_manifest

    def stop_after_two(folder, manifest):
        calls["n"] += 1
        real(folder, manifest)
        if calls["n"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(prep, "write_manifest", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        _prepare(tmp_path, corpus, eval_data, demo_paths, "report")
    monkeypatch.undo()
    rows = [json.loads(line) for line in (eval_data / "hellaswag" / "validation.jsonl").read_text().splitlines()]
    changed = tmp_path / "changed_eval"
    import shutil

    shutil.copytree(eval_data, changed)
    rows[0]["ctx_a"] = "A different context for the first item of the task, long enough to count."
    (changed / "hellaswag" / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = json.loads((tmp_path / "report.yaml").read_text())
    cfg["decontaminate"]["eval_data_dir"] = str(changed)
    (tmp_path / "report.yaml").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="partly prepared against other benchmark test items"):
        prepare_data(["--config", str(tmp_path / "report.yaml")])
    np.testing.assert_equal(len(list((tmp_path / "report" / "web").glob("train/shard-*.bin"))) > 0, True)


def test_documents_found_survive_a_resume_and_are_capped(tmp_path):
    """The documents listed are restored on resume; a source half prepared before they were listed resumes (its
    manifest is not stale) and says from which row the list starts; the manifest lists the first
    DOCUMENTS_LISTED, the report the first REPORT_DOCUMENTS and how many more."""
    from tinyllama.data import decontaminate
    from tinyllama.data.decontaminate import ContaminationTally, TestIndex
    from tinyllama.data.preparation_report import REPORT_DOCUMENTS, render
    from tinyllama.data.screen import DecontaminationSettings, Screener, ScreenSpec, SourceScreen

    item = "the quick brown fox jumps over the lazy dog while the cat watches from the warm windowsill"
    index = TestIndex.build({"toy": [item]}, 13)
    spec = ScreenSpec(None, None, DecontaminationSettings(suites=("commonsense",)), index)
    texts = [FILLER + item, FILLER, FILLER + item.upper()]

    def run(manifest, first_row):
        screen = SourceScreen(spec, tmp_path, manifest)
        rows = list(range(first_row, first_row + len(texts)))
        screen.decide(Screener(spec).screen(texts), rows, lambda k: {"row": rows[k] + 1, "file": "a.jsonl",
                                                                      "line": rows[k] + 1})
        manifest["stats"]["rows_read"] = rows[-1] + 1
        screen.commit(manifest, rows[-1] + 1)
        return json.loads(json.dumps(manifest))  # through the manifest's JSON

    m = run({"stats": {"rows_read": 0}}, 0)
    found = [{"row": 1, "file": "a.jsonl", "line": 1, "items": {"toy": [0]}},
             {"row": 3, "file": "a.jsonl", "line": 3, "items": {"toy": [0]}}]
    assert m["contamination"]["documents_found"] == found and "listed_from_row" not in m["contamination"]
    m = run(m, 3)  # resumed: the list goes on
    assert [d["row"] for d in m["contamination"]["documents_found"]] == [1, 3, 4, 6]
    old = {**m, "contamination": {k: v for k, v in m["contamination"].items() if k != "documents_found"}}
    resumed = run(old, 6)["contamination"]  # written before documents were listed
    assert resumed["documents"] == 6 and resumed["listed_from_row"] == 7
    assert [d["row"] for d in resumed["documents_found"]] == [7, 9]
    assert ContaminationTally.from_dict(resumed, index).to_dict() == resumed

    tally = ContaminationTally.for_index(index, "report", ["commonsense"])
    for row in range(1, decontaminate.DOCUMENTS_LISTED + 51):
        tally.add([(0, 0)], {"row": row})
    section = tally.to_dict()
    assert section["documents"] == decontaminate.DOCUMENTS_LISTED + 50
    assert len(section["documents_found"]) == decontaminate.DOCUMENTS_LISTED
    md = render({"web": {"stats": {"rows_read": 2000, "documents": {"train": 1}, "tokens": {"train": 1},
                                   "skipped": {}}, "complete": True, "contamination": section}})
    assert md.count("| row ") == REPORT_DOCUMENTS and "| row 1 | toy 0 |" in md
    assert (f"... and {section['documents'] - REPORT_DOCUMENTS:,} more (the manifest's "
            f"contamination.documents_found lists the first {decontaminate.DOCUMENTS_LISTED:,}") in md


@pytest.mark.parametrize("mode", ["report", "drop"])
def test_decontamination_alone_keeps_duplicates_and_counts_every_holder(tmp_path, mode):
    """Without dedup, each document holding an item is counted (and in drop mode dropped), copies included."""
    from tinyllama.data.decontaminate import TestIndex
    from tinyllama.data.screen import DecontaminationSettings, Screener, ScreenSpec, SourceScreen

    item = "the quick brown fox jumps over the lazy dog while the cat watches from the warm windowsill"
    index = TestIndex.build({"toy": [item, "too short"]}, 13)
    spec = ScreenSpec(None, None, DecontaminationSettings(suites=("commonsense",), mode=mode), index)
    texts = [FILLER, FILLER + item.upper(), FILLER, FILLER + item.upper()]
    screen = SourceScreen(spec, tmp_path, {"stats": {"rows_read": 0}})
    verdicts = screen.decide(Screener(spec).screen(texts), [0, 1, 2, 3])
    dropped = "contaminated" if mode == "drop" else None
    assert verdicts == [None, dropped, None, dropped]
    manifest = {}
    screen.commit(manifest, 4)
    section = manifest["contamination"]
    assert section["documents"] == 2 and section["tasks"]["toy"] == {"items": 2, "too_short": 1, "contaminated": [0]}
    assert not (tmp_path / "dedup.sqlite").exists()
