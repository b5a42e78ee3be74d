"""Decontamination: evaluation items read through lm-eval's own tasks (local fixture files in the real schemas, as
tests/test_eval_run.py uses), their n-gram index, planted items found (verbatim and reformatted), a clean corpus
clean, the manifest tally, and the report's marks."""

import json
import pickle
import re
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from test_eval_run import FIXTURES, write_fixtures
from tinyllama.data.decontaminate import ContaminationTally, TestIndex, load_test_items
from tinyllama.data.ngrams import words

REPO = Path(__file__).resolve().parent.parent
SUITE_ORDER = ["hellaswag", "openbookqa", "winogrande", "arc_challenge", "arc_easy", "boolq", "piqa"]


@pytest.fixture(scope="module")
def fixture_data(tmp_path_factory):
    return write_fixtures(tmp_path_factory.mktemp("eval_data"))


@pytest.fixture(scope="module")
def items(fixture_data):
    return load_test_items(["commonsense"], fixture_data)


@pytest.fixture(scope="module")
def index(items):
    return TestIndex.build(items, n=13)


# ------------------------------------------------------------------------------------------------ test items
def test_items_are_the_examples_lm_eval_scores(items):
    """Every task of the suite, the split lm-eval scores, in lm-eval's doc order; each item is the prompt (after
    the task's own process_docs / templates) with the gold answer."""
    assert list(items) == SUITE_ORDER
    assert {t: len(v) for t, v in items.items()} == {t: len(rows) for t, (_, rows) in FIXTURES.items()}
    # hellaswag: lm-eval's process_docs built the query ("[title]" cleaned, "he" capitalised); gold ending 3
    assert items["hellaswag"][0] == "Roof shingle removal: A man is sitting on a roof. He starts pulling up roofing on a roof."
    assert items["hellaswag"][2].startswith("Home and Garden: How to clean a grill. Heat the grill.")
    assert items["hellaswag"][2].endswith("Scrub the grates with a brush.")  # lm-eval dropped "[step]"
    # arc: doc_to_text template + the answerKey's choice text (not a distractor)
    assert items["arc_challenge"][0] == (
        "Question: An astronomer observes that a planet rotates faster after a meteorite impact. Which is the most "
        "likely effect of this increase in rotation?\nAnswer: Planetary days will become shorter.")
    assert items["arc_challenge"][1].endswith("Answer: to test the designs safely")  # labels "1"/"2"/"3"
    assert items["openbookqa"][2] == "Predators eat bunnies"
    assert items["piqa"][2].endswith("Answer: You have to defeat Apollo Creed and Clubber Lang first.")
    assert items["boolq"][1].startswith("Property tax -- Property tax or 'house tax'") and items["boolq"][1].endswith("yes")
    # winogrande: the blank filled with the right option, plus lm-eval's decontamination query (the raw sentence)
    assert items["winogrande"][0] == ("Sarah was a much better surgeon than Maria so Sarah always got the harder "
                                      "cases.\n\nSarah was a much better surgeon than Maria so _ always got the "
                                      "harder cases.")
    for rows_task, (_, rows) in FIXTURES.items():  # no distractor of any multiple-choice item is in its text
        if rows_task in ("arc_easy", "arc_challenge", "openbookqa"):
            for text, row in zip(items[rows_task], rows):
                key = row["answerKey"]
                wrong = [c for c, lbl in zip(row["choices"]["text"], row["choices"]["label"]) if lbl != key]
                assert not any(w in text for w in wrong), (rows_task, text)


def test_missing_local_data_is_one_error_naming_each_task_and_the_folder(fixture_data, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(fixture_data, partial)
    shutil.rmtree(partial / "hellaswag")
    shutil.rmtree(partial / "piqa")
    with pytest.raises(ValueError) as e:
        load_test_items(["commonsense"], partial)
    msg = str(e.value)
    assert "hellaswag" in msg and "piqa" in msg and str(partial / "hellaswag") in msg
    assert "arc_easy" not in msg
    with pytest.raises(ValueError, match="unknown evaluation suite or task 'commonsens'"):
        load_test_items(["commonsens"], fixture_data)
    with pytest.raises(ValueError, match="offline data folder not found"):
        load_test_items(["commonsense"], tmp_path / "nowhere")


def test_tasks_are_named_as_eval_tasks_names_them(fixture_data):
    """One reading of evaluation names (evaluation.suites.resolve_tasks) for decontamination and EVAL_TASKS: a
    suite's name means all its tasks, a task name that task alone (with the settings a suite of this repository gives
    it, else any lm-eval task); unknown names get one message listing the suites and saying task names work too."""
    from tinyllama.data.screen import DecontaminationSettings
    from tinyllama.evaluation.suites import load_suite, resolve_tasks, select_tasks

    assert list(load_test_items(["arc_easy"], fixture_data)) == ["arc_easy"]  # a task of a suite, alone
    assert list(load_test_items(["arc_easy", "commonsense"], fixture_data)) == ["arc_easy"] + [
        t for t in SUITE_ORDER if t != "arc_easy"]  # each task once, in the order named
    commonsense, math_code = load_suite("commonsense"), load_suite("math_code")
    assert resolve_tasks(["arc_easy"]) == select_tasks(math_code, "arc_easy") == [commonsense.get("arc_easy")]
    assert [t.task for t in select_tasks(math_code, "commonsense")] == SUITE_ORDER  # EVAL_TASKS=<a suite>
    assert select_tasks(commonsense, "piqa,hellaswag") == [commonsense.get("piqa"), commonsense.get("hellaswag")]
    assert [(t.task, t.num_fewshot) for t in resolve_tasks("mmlu_anatomy")] == [("mmlu_anatomy", 0)]  # lm-eval's
    errors = []
    assert DecontaminationSettings.parse("decontaminate", {"suites": ["arc_easy"]}, errors).suites == ("arc_easy",)
    assert DecontaminationSettings.parse("decontaminate", {"suites": ["arc_esy", "comonsense"]}, errors) is None
    with pytest.raises(ValueError) as e:
        select_tasks(commonsense, "arc_esy,comonsense")
    assert errors == [f"'suites' in decontaminate: {e.value}"]  # the same message in both places, every name
    message = str(e.value)
    assert "'arc_esy' (did you mean 'arc_easy'?)" in message and "'comonsense' (did you mean 'commonsense'?)" in message
    assert "chinese, commonsense, instruct, math_code" in message and "or an lm-eval task name" in message


# ------------------------------------------------------------------------------------------------ the index
def _checkable(items, n=13):
    return [(t, i, text) for t, (name, texts) in enumerate(items.items()) for i, text in enumerate(texts)
            if len(words(text)) >= n]


def test_items_too_short_to_check_are_counted_not_passed(items, index):
    # fewer than 13 words: "Question: dresser / Answer: finish, woodwork" (piqa 1), OBQA's fog (10 words) and
    # predators (3), ARC-Easy's "Which technology was developed most recently? cellular telephone"
    assert dict(zip(index.tasks, index.too_short.tolist())) == {
        "hellaswag": 0, "openbookqa": 2, "winogrande": 0, "arc_challenge": 0, "arc_easy": 1, "boolq": 0, "piqa": 1}
    assert index.items.tolist() == [3] * 7
    short = ("Question: dresser\nAnswer: finish, woodwork Predators eat bunnies There is most likely going to be fog "
             "around: a marsh Question: Which technology was developed most recently?\nAnswer: cellular telephone")
    assert index.find(short) == []  # present, but not checkable: that is what too_short says
    assert TestIndex.build(items, n=3).too_short.sum() == 0  # n is configurable


FILLER = ("The committee met on Tuesday to review the quarterly budget, and after a long discussion about "
          "maintenance costs the members agreed to postpone the vote until the next session. ")


def _reformat(text: str, k: int) -> str:
    """Lightly reformatted: other case, other punctuation, words broken over lines, quotes and markup around."""
    ws = text.split()
    variants = [
        lambda: text.upper(),
        lambda: "\n".join(" ".join(ws[j:j + 3]) for j in range(0, len(ws), 3)),  # hard-wrapped
        lambda: " ".join(w.strip(".,?!:;'\"") for w in ws).lower(),  # punctuation stripped
        lambda: "> " + re.sub(r"([.?!:])", r" \1 !!", text).replace("\n", "\n> "),  # quoted, extra punctuation
        lambda: "<p> " + "  ".join(ws).title() + " </p>",
    ]
    return variants[k % len(variants)]()


def test_planted_items_are_all_found_verbatim_and_reformatted(items, index):
    checkable = _checkable(items)
    assert len(checkable) == 17
    for k, (t, i, text) in enumerate(checkable):
        assert index.find(text) == [(t, i)], (index.tasks[t], i)
        assert index.find(FILLER + text + " " + FILLER) == [(t, i)]
        planted = FILLER + _reformat(text, k) + "\n\n" + FILLER
        assert index.find(planted) == [(t, i)], (index.tasks[t], i, planted)
    # several items in one document, one of them twice: each pair once, sorted
    (t1, i1, a), (t2, i2, b) = checkable[0], checkable[-1]
    assert index.find(f"{b} {FILLER} {a.lower()} {FILLER} {b}") == sorted([(t1, i1), (t2, i2)])


def test_one_shared_13_gram_is_enough_and_12_words_are_not(items, index):
    t, i = index.tasks.index("arc_challenge"), 0
    ws = items["arc_challenge"][0].split()
    middle = ws[3:3 + 13]
    assert index.find(FILLER + " ".join(middle) + " " + FILLER) == [(t, i)]
    assert index.find(FILLER + " ".join(middle[:12]) + " Meanwhile, " + FILLER) == []  # (FILLER starts "The")


def test_a_templated_stem_is_no_evidence_for_any_one_item():
    """A test set whose items share a long stem (each of its 13-grams in all 20 items) and differ in their tails: an
    item is found on an n-gram of its own only, so planting 15 items names exactly those 15 (not all 20), verbatim
    or reformatted, and a document holding only the stem names none. An item all of whose n-grams other items of
    its task have (here a duplicate) is found by a document holding all of them, not by the stem."""
    import random

    rng = random.Random(5)
    vocabulary = ("amber basalt cedar delta ember fjord glacier harbor islet juniper kelp lagoon marsh nectar oasis "
                  "prairie quartz reef savanna tundra upland valley willow yarrow zephyr").split()
    stem = ("Question: Which of the following statements about the water cycle in a temperate forest ecosystem "
            "is the most accurate according to the passage above? Answer:")
    firsts = rng.sample(vocabulary, 20)  # every tail starts with another word: each item has n-grams of its own
    texts = [f"{stem} {first} " + " ".join(rng.choices(vocabulary, k=7)) + "." for first in firsts]
    texts.append(texts[3])  # a duplicate item: none of its n-grams is its own
    index = TestIndex.build({"templated": texts}, n=13)
    assert len(words(stem)) >= 20 and index.whole_keys.tolist() == [3, 20]
    planted = sorted(random.Random(7).sample(range(20), 15))
    for k, i in enumerate(planted):
        doc = FILLER + (texts[i] if k % 2 else _reformat(texts[i], k)) + " " + FILLER
        assert index.find(doc) == [(0, i)] + ([(0, 20)] if i == 3 else []), i  # the duplicate: found whole
    doc = f" {FILLER}".join(texts[i] for i in planted)  # all 15 in one document
    assert [i for _, i in index.find(doc)] == planted + ([20] if 3 in planted else [])
    assert index.find(FILLER + stem + " " + FILLER) == []  # the stem alone: no item
    assert index.find(stem + " " + texts[3].split()[-8]) == []  # the stem and a word of a tail: no item either
    # only items of one task are weighed against each other: the stem is evidence for another task's single item
    two = TestIndex.build({"templated": texts, "other": [texts[0]]}, n=13)
    assert two.find(FILLER + stem + " " + FILLER) == [(1, 0)]


def test_a_clean_corpus_is_reported_clean(items, index):
    from tinyllama.demo_corpus import prose_documents

    docs = prose_documents()[:300]  # the Python reference manual: real prose, no benchmark in it
    vocabulary = sorted({w for texts in items.values() for text in texts for w in words(text)})
    docs.append(" ".join(vocabulary))  # every word of every item, in another order
    docs.append(FILLER * 20)
    assert [d for d in docs if index.find(d)] == []


def test_index_is_arrays_and_survives_pickling(items, index):
    import numpy as np

    for name in ("hashes", "starts", "task_idx", "item_idx", "items", "too_short"):
        assert isinstance(getattr(index, name), np.ndarray), name
    assert np.all(np.diff(index.hashes.astype(np.float64)) >= 0) and index.hashes.dtype == np.uint64
    copy = pickle.loads(pickle.dumps(index))
    t, i, text = _checkable(items)[5]
    assert copy.find(FILLER + text) == [(t, i)] and copy.tasks == index.tasks


# ------------------------------------------------------------------------------------------------ the tally
def test_tally_to_dict_from_dict_round_trip(items, index):
    tally = ContaminationTally.for_index(index, "report", ["commonsense"])
    checkable = _checkable(items)
    docs = [FILLER, FILLER + checkable[0][2], checkable[3][2] + checkable[0][2], FILLER]
    assert [tally.add(index.find(d)) for d in docs] == [False, True, True, False]
    d = tally.to_dict()
    assert d["ngram"] == 13 and d["mode"] == "report" and d["suites"] == ["commonsense"] and d["documents"] == 2
    assert list(d["tasks"]) == SUITE_ORDER
    (t0, i0, _), (t3, i3, _) = checkable[0], checkable[3]
    assert d["tasks"][index.tasks[t0]]["contaminated"] == sorted({i0} | ({i3} if t3 == t0 else set()))
    assert d["tasks"]["piqa"] == {"items": 3, "too_short": 1, "contaminated": []}
    assert d["documents_found"] == []  # (no document given with its place: none listed)
    assert sum(tally.counts().values()) == 2
    restored = ContaminationTally.from_dict(json.loads(json.dumps(d)), index=index)  # through the manifest's JSON
    assert restored.to_dict() == d
    restored.add(index.find(checkable[-1][2]))  # a resumed run keeps counting
    assert restored.documents == 3 and sum(restored.counts().values()) == 3
    other = ContaminationTally.for_index(index, "report", ["commonsense"])
    other.add(index.find(checkable[-1][2]))
    tally.merge(other)
    assert tally.to_dict() == restored.to_dict()
    with pytest.raises(ValueError, match="another test set"):
        ContaminationTally.from_dict(d, index=TestIndex.build(items, n=8))
    with pytest.raises(ValueError, match="mode"):
        ContaminationTally.for_index(index, "remove", [])


# ------------------------------------------------------------------------------------------------ the report
@pytest.fixture(scope="module")
def report():
    from tinyllama.evaluation import scoreboard

    return scoreboard


def _section(mode, hits: dict) -> dict:
    tasks = {t: {"items": 3, "too_short": 1 if t == "piqa" else 0, "contaminated": sorted(hits.get(t, []))}
             for t in SUITE_ORDER}
    return {"ngram": 13, "mode": mode, "suites": ["commonsense"], "documents": 5, "tasks": tasks}


def _source(root: Path, name: str, section: dict | None) -> Path:
    (root / name).mkdir(parents=True)
    manifest = {"complete": True, **({"contamination": section} if section else {})}
    (root / name / "manifest.json").write_text(json.dumps(manifest))
    return root / name


def _result(root: Path, model: Path, tasks=None) -> Path:
    """A result folder as run_lm_eval.sh writes it: run_info.json and lm-eval's results file."""
    folder = root / "eval" / model.name / "commonsense"
    folder.mkdir(parents=True)
    tasks = tasks or [{"task": t, "label": t, "metric": "acc"} for t in ("hellaswag", "arc_easy", "piqa")]
    (folder / "run_info.json").write_text(json.dumps({"suite": "commonsense", "label": model.name, "model": str(model),
                                                      "tasks": tasks, "tokens_seen": 1000, "step": 1}))
    (folder / "results_2026.json").write_text(json.dumps({"results": {
        t["task"]: {"acc,none": 0.5, "alias": t["task"]} for t in tasks}, "config": {}}))
    return folder


def _row(md: str, label: str) -> list[str]:
    line = next(line for line in md.splitlines() if line.startswith(f"| {label} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_report_marks_contaminated_tasks_from_the_model_metadata(report, tmp_path):
    data = tmp_path / "data"
    _source(data, "web", _section("report", {"hellaswag": [0, 2]}))
    _source(data, "code", _section("report", {"hellaswag": [2], "piqa": [1]}))
    _source(data, "unused", None)  # weight 0 in the mixture: not part of the training data
    model = tmp_path / "runs" / "export" / "step-000001"
    model.mkdir(parents=True)
    (model / "training_metadata.json").write_text(json.dumps({
        "step": 1, "tokens_seen": 1000, "data_dir": str(data), "mixture": {"web": 0.7, "code": {"weight": 0.3},
                                                                           "unused": 0.0}, "init_from": None}))
    md, _ = report.build_report([_result(tmp_path, model)], None)
    assert _row(md, "step-000001")[2:6] == ["50.00 (!2 of 3)", "50.00", "50.00 (!1 of 3)", "50.00"]
    assert "the score rests partly on items seen in training" in md
    assert "piqa 1" in md.split("too short")[1].splitlines()[0]  # the unchecked items are named
    assert "(?)" not in md and "unused" not in md

    # the same data given on the command line, for a model that records nothing
    bare = tmp_path / "bare" / "step-000002"
    bare.mkdir(parents=True)
    md, _ = report.build_report([_result(tmp_path / "b", bare)], None, data_dirs=[data])
    # "unused" is part of the folder given, and unchecked: a score not already marked seen is "(?)", not clean
    assert _row(md, "step-000002")[2:5] == ["50.00 (!2 of 3, ?)", "50.00 (?)", "50.00 (!1 of 3, ?)"]
    assert f"{data / 'unused'} (not checked: prepared without decontamination)" in md
    md_no_data, _ = report.build_report([_result(tmp_path / "c", bare)], None)
    assert "(!" not in md_no_data and "(?)" not in md_no_data and "Contamination" not in md_no_data


def test_report_says_not_checked_and_leaves_dropped_items_unmarked(report, tmp_path):
    data = tmp_path / "data"
    _source(data, "web", _section("drop", {"hellaswag": [0, 1]}))
    _source(data, "raw", None)
    md, _ = report.build_report([_result(tmp_path, tmp_path / "m" / "step-000003")], None, data_dirs=[data / "web"])
    assert _row(md, "step-000003")[2:5] == ["50.00", "50.00", "50.00"]  # dropped documents were not trained on
    assert "left out of training (mode drop; not marked): hellaswag 2" in md
    md, _ = report.build_report([_result(tmp_path / "x", tmp_path / "m" / "step-000004")], None, data_dirs=[data])
    assert _row(md, "step-000004")[2:5] == ["50.00 (?)", "50.00 (?)", "50.00 (?)"]
    assert "not checked: prepared without decontamination" in md
    # none of the training data checked: no mark in any cell, and the footnote says so
    md, _ = report.build_report([_result(tmp_path / "z", tmp_path / "m" / "step-000005")], None,
                                data_dirs=[data / "raw"])
    assert _row(md, "step-000005")[2:5] == ["50.00", "50.00", "50.00"]
    assert f"step-000005: trained on {data / 'raw'} (not checked: prepared without decontamination)." in md


def test_report_sums_a_group_over_its_leaf_tasks_and_follows_init_from(report, tmp_path):
    stage1, stage2 = tmp_path / "d1", tmp_path / "d2"
    _source(stage1, "web", _section("report", {"arc_easy": [1], "arc_challenge": [0, 2]}))
    _source(stage2, "web", _section("report", {"arc_easy": [1, 2]}))
    first = tmp_path / "run1" / "export" / "step-000010"
    first.mkdir(parents=True)
    (first / "training_metadata.json").write_text(json.dumps({"data_dir": str(stage1), "mixture": {"web": 1}}))
    second = tmp_path / "run2" / "export" / "step-000020"
    second.mkdir(parents=True)
    (second / "training_metadata.json").write_text(json.dumps({"data_dir": str(stage2), "mixture": {"web": 1},
                                                               "init_from": str(first)}))
    tasks = [{"task": "ai2_arc", "label": "ARC", "metric": "acc"}]  # lm-eval's tag: arc_easy + arc_challenge
    md, _ = report.build_report([_result(tmp_path, second, tasks)], None)
    assert _row(md, "step-000020")[2] == "50.00 (!4 of 6)"  # arc_easy {1, 2} (union), arc_challenge {0, 2}
    # an earlier stage whose data is not recorded: not claimed clean
    (first / "training_metadata.json").write_text(json.dumps({"step": 10}))
    md, _ = report.build_report([_result(tmp_path / "y", second, tasks)], None)
    assert _row(md, "step-000020")[2] == "50.00 (!2 of 6, ?)"  # at least 2: stage 1 is unknown
    assert f"initialised from {first}, whose training data is not recorded" in md


def test_exports_record_the_training_data_folder(tmp_path):
    from tinyllama.checkpoints import TrainState
    from tinyllama.training.checkpointer import Checkpointer

    args = SimpleNamespace(stage="pretrain", run_name="r", mixture={"web": 1.0}, init_from=None,
                           data_dir=str(tmp_path / "data"), lr_step_offset=0)
    meta = Checkpointer.metadata(SimpleNamespace(args=args), TrainState(step=3, tokens=96))
    assert meta["data_dir"] == str((tmp_path / "data").resolve()) and meta["mixture"] == {"web": 1.0}


@pytest.mark.slow  # a launched benchmark script: make test-bench runs it
@pytest.mark.bench
def test_benchmark_script_runs_and_prints_its_table():
    import subprocess

    p = subprocess.run([sys.executable, str(REPO / "scripts" / "benchmark_screening.py"), "--mb", "0.2",
                        "--items", "300", "--repeat", "1", "--workers", "0"], capture_output=True, text=True,
                       timeout=180, cwd=REPO)
    assert p.returncode == 0, p.stderr[-2000:]
    rows = [line for line in p.stdout.splitlines() if line.startswith("| worker: ") or line.startswith("| main ")]
    assert len(rows) == 7 and all(r.split("|")[5].strip().endswith("%") for r in rows)
    e2e = [line for line in p.stdout.splitlines() if line.startswith("| off |") or line.startswith("| dedup: true |")]
    assert len(e2e) == 2 and e2e[0].rstrip("|").split("|")[-1].strip() == "100%"
