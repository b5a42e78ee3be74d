"""End to end, offline: the commonsense suite on a tiny model with lm-eval's `hf` backend, its seven tasks read
from local fixture files in each task's real schema through generated YAMLs that `include` lm-eval's own task
YAMLs; results land in <out>/<model-name>/<suite>/; the report renders the table and the plot from them."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tinyllama import evaluation as ev


pytestmark = pytest.mark.slow  # lm-eval end to end, twice; make test-fast skips it

REPO = Path(__file__).resolve().parent.parent
LIMIT = 3

# A few rows per task in the schema of the Hub dataset lm-eval reads (dataset_path / dataset_name of the
# installed task YAML), under the split lm-eval evaluates (test when the task has one, else validation).
FIXTURES = {
    "hellaswag": ("validation", [  # Rowan/hellaswag
        {"ind": 24, "activity_label": "Roof shingle removal",
         "ctx_a": "A man is sitting on a roof.", "ctx_b": "he",
         "ctx": "A man is sitting on a roof. he",
         "endings": ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.",
                     "is holding a rubik's cube.", "starts pulling up roofing on a roof."],
         "source_id": "activitynet~v_-JhWjGDPHMY", "split": "val", "split_type": "indomain", "label": "3"},
        {"ind": 92, "activity_label": "Clean and jerk",
         "ctx_a": "A lady walks to a barbell. She bends down and grabs the pole.", "ctx_b": "the lady",
         "ctx": "A lady walks to a barbell. She bends down and grabs the pole. the lady",
         "endings": ["swings and lands in her arms.", "pulls the barbell forward.",
                     "pulls a rope attached to the barbell.", "stands and lifts the weight over her head."],
         "source_id": "activitynet~v_-lJS58hyo1c", "split": "val", "split_type": "zeroshot", "label": "3"},
        {"ind": 106, "activity_label": "Home and Garden",
         "ctx_a": "[header] How to clean a grill [title] Heat the grill.", "ctx_b": "",
         "ctx": "[header] How to clean a grill [title] Heat the grill.",
         "endings": ["[step] Scrub the grates with a brush.", "Eat the grill.", "Paint the house.", "Sleep."],
         "source_id": "wikihow~1", "split": "val", "split_type": "indomain", "label": "0"},
    ]),
    "openbookqa": ("test", [  # allenai/openbookqa, config main
        {"id": "8-343", "question_stem": "A person wants to start saving money so that they can afford a nice "
                                         "vacation at the end of the year. After looking over their budget and "
                                         "expenses, they decide the best way to save money is to",
         "choices": {"text": ["make more phone calls", "quit eating lunch out", "buy less with monopoly money",
                              "have lunch with friends"], "label": ["A", "B", "C", "D"]}, "answerKey": "B"},
        {"id": "1129", "question_stem": "There is most likely going to be fog around:",
         "choices": {"text": ["a marsh", "a tundra", "the plains", "a desert"], "label": ["A", "B", "C", "D"]},
         "answerKey": "A"},
        {"id": "880", "question_stem": "Predators eat",
         "choices": {"text": ["lions", "humans", "bunnies", "grass"], "label": ["A", "B", "C", "D"]},
         "answerKey": "C"},
    ]),
    "winogrande": ("validation", [  # allenai/winogrande, config winogrande_xl
        {"sentence": "Sarah was a much better surgeon than Maria so _ always got the harder cases.",
         "option1": "Sarah", "option2": "Maria", "answer": "1"},
        {"sentence": "The trophy doesn't fit into the brown suitcase because the _ is too large.",
         "option1": "trophy", "option2": "suitcase", "answer": "1"},
        {"sentence": "I poured water from the bottle into the cup until the _ was empty.",
         "option1": "bottle", "option2": "cup", "answer": "1"},
    ]),
    "arc_challenge": ("test", [  # allenai/ai2_arc, config ARC-Challenge
        {"id": "Mercury_7175875", "question": "An astronomer observes that a planet rotates faster after a "
                                              "meteorite impact. Which is the most likely effect of this increase "
                                              "in rotation?",
         "choices": {"text": ["Planetary density will decrease.", "Planetary years will become longer.",
                              "Planetary days will become shorter.", "Planetary gravity will become stronger."],
                     "label": ["A", "B", "C", "D"]}, "answerKey": "C"},
        {"id": "Mercury_SC_409171", "question": "A group of engineers wanted to know how different building "
                                                "designs would respond during an earthquake. They made several "
                                                "models. Which is the main reason for making models?",
         "choices": {"text": ["to see which design is the cheapest", "to test the designs safely",
                              "to find the tallest design"], "label": ["1", "2", "3"]}, "answerKey": "2"},
        {"id": "Mercury_SC_408547", "question": "The end result in the process of photosynthesis is the "
                                                "production of sugar and oxygen. Which step signals the "
                                                "beginning of photosynthesis?",
         "choices": {"text": ["Chemical energy is absorbed through the roots.",
                              "Light energy is converted to chemical energy.",
                              "Chlorophyll in the leaf captures light energy.",
                              "Sunlight is converted into chlorophyll."], "label": ["A", "B", "C", "D"]},
         "answerKey": "C"},
    ]),
    "arc_easy": ("test", [  # allenai/ai2_arc, config ARC-Easy
        {"id": "Mercury_417466", "question": "Which statement best explains why photosynthesis is the foundation "
                                             "of most food webs?",
         "choices": {"text": ["Sunlight is the source of energy for nearly all ecosystems.",
                              "Most ecosystems are found on land instead of in water.",
                              "Carbon dioxide is more available than other gases.",
                              "The producers in all ecosystems are plants."], "label": ["A", "B", "C", "D"]},
         "answerKey": "A"},
        {"id": "MCAS_2000_4_6", "question": "Which technology was developed most recently?",
         "choices": {"text": ["cellular telephone", "television", "refrigerator", "airplane"],
                     "label": ["A", "B", "C", "D"]}, "answerKey": "A"},
        {"id": "Mercury_7233695", "question": "A student hypothesizes that algae are producers. Which question "
                                              "will best help the student determine if this is correct?",
         "choices": {"text": ["Do algae consume other organisms?", "Which organisms consume algae?",
                              "Do algae use sunlight to make food?", "Could an ecosystem survive without algae?"],
                     "label": ["A", "B", "C", "D"]}, "answerKey": "C"},
    ]),
    "boolq": ("validation", [  # aps/super_glue, config boolq
        {"question": "does ethanol take more energy make that produces",
         "passage": "Ethanol fuel -- All biomass goes through at least some of these steps: it needs to be grown, "
                    "collected, dried, fermented, distilled, and burned.", "idx": 0, "label": 0},
        {"question": "is house tax and property tax are same",
         "passage": "Property tax -- Property tax or 'house tax' is a local tax on buildings, along with "
                    "appurtenant land.", "idx": 1, "label": 1},
        {"question": "is pain experienced in a missing body part or paralyzed area",
         "passage": "Phantom pain -- Phantom pain sensations are described as perceptions that an individual "
                    "experiences relating to a limb or an organ that is not physically part of the body.",
         "idx": 2, "label": 1},
    ]),
    "piqa": ("validation", [  # baber/piqa
        {"goal": "How do I ready a guinea pig cage for it's new occupants?",
         "sol1": "Provide the guinea pig with a cage full of a few inches of bedding made of ripped paper strips.",
         "sol2": "Provide the guinea pig with a cage full of a few inches of bedding made of ripped jeans "
                 "material.", "label": 0},
        {"goal": "dresser", "sol1": "replace drawer with bobby pin ", "sol2": "finish, woodwork ", "label": 1},
        {"goal": "To fight Ivan Drago in Rocky for sega master system.",
         "sol1": "Drago isn't in this game because it was released before Rocky IV.",
         "sol2": "You have to defeat Apollo Creed and Clubber Lang first.", "label": 1},
    ]),
}


def write_fixtures(root: Path) -> Path:
    for task, (split, rows) in FIXTURES.items():
        (root / task).mkdir(parents=True, exist_ok=True)
        (root / task / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def make_export(run_dir: Path, step: int, tokens: int, seed: int, tokenizer) -> Path:
    """outputs/<run>/export/step-N as the pretraining loop writes it (weights, tokenizer, training_metadata)."""
    from tinyllama.model import build_model

    out = run_dir / "export" / f"step-{step:06d}"
    model = build_model("tiny", seed=seed)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / ev.TRAINING_METADATA_FILE).write_text(json.dumps({"tokens_seen": tokens, "step": step}))
    (run_dir / "checkpoints" / f"step-{step:06d}").mkdir(parents=True)  # (its training state: not read here)
    return out


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, demo_tokenizer):
    """Two checkpoints of one run: the first through the script (given as a training checkpoint path), the
    second through run_suite, the pretraining loop's call."""
    root = tmp_path_factory.mktemp("eval")
    data = write_fixtures(root / "local_data")
    run_dir = root / "outputs" / "demo-run"
    make_export(run_dir, 100, 409_600, seed=0, tokenizer=demo_tokenizer)
    export2 = make_export(run_dir, 200, 819_200, seed=1, tokenizer=demo_tokenizer)
    env = {**os.environ, "EVAL_DATA_DIR": str(data), "PYTHON": sys.executable}  # this interpreter, any environment
    for k in ("EVAL_OUT", "EVAL_TASKS", "EVAL_BACKEND", "ALLOW_CODE_EXECUTION"):
        env.pop(k, None)
    args = ["bash", str(REPO / "evaluation" / "run_lm_eval.sh"), str(run_dir / "checkpoints" / "step-000100"),
            "commonsense", "--limit", str(LIMIT), "--seed", "0"]
    # the script's process and the in-process call work on different checkpoints: they run side by side
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        returned = ev.run_suite(export2, "commonsense", run_dir / "eval", limit=LIMIT, data_dir=data)
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    script = subprocess.CompletedProcess(args, proc.returncode, stdout, stderr)
    return {"root": root, "data": data, "run": run_dir, "script": script, "returned": returned}


def test_results_and_samples_land_in_the_run_folder(evaluated):
    p = evaluated["script"]
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    for step in ("step-000100", "step-000200"):
        folder = evaluated["run"] / "eval" / step / "commonsense"
        assert len(list(folder.glob("results_*.json"))) == 1
        for task in FIXTURES:
            assert len(list(folder.glob(f"samples_{task}_*.jsonl"))) == 1, (step, task)
        info = json.loads((folder / ev.RUN_INFO_FILE).read_text())
        assert info["label"] == f"demo-run/{step}" and info["suite"] == "commonsense" and info["finished"]
        assert info["tokens_seen"] == {"step-000100": 409_600, "step-000200": 819_200}[step]
        assert sorted(p.name for p in (folder / "offline_tasks").glob("*.yaml")) == sorted(f"{t}.yaml" for t in FIXTURES)


def test_lm_eval_ran_its_own_tasks_on_the_local_files(evaluated):
    folder = evaluated["run"] / "eval" / "step-000100" / "commonsense"
    results = json.loads(next(folder.glob("results_*.json")).read_text())
    assert results["config"]["model_args"]["pretrained"] == str((evaluated["run"] / "export" / "step-000100").resolve())
    assert results["config"]["limit"] == LIMIT
    for task, (split, rows) in FIXTURES.items():
        cfg = results["configs"][task]
        assert cfg["dataset_path"] == "json"
        assert cfg["dataset_kwargs"]["data_files"] == {split: [str(evaluated["data"] / task / f"{split}.jsonl")]}
        assert results["n-shot"][task] == 0
        assert results["n-samples"][task]["effective"] == len(rows)
        samples = [json.loads(line) for line in next(folder.glob(f"samples_{task}_*.jsonl")).open()]
        assert [{k: s["doc"][k] for k in rows[0]} for s in samples] == rows  # the fixture rows, in order
    # hellaswag's process_docs (utils.py beside lm-eval's YAML) ran through the include: "[title]" cleaned up
    hs = [json.loads(line) for line in next(folder.glob("samples_hellaswag_*.jsonl")).open()]
    assert hs[0]["doc"]["query"] == "Roof shingle removal: A man is sitting on a roof. He"
    assert hs[2]["doc"]["query"] == "Home and Garden: How to clean a grill. Heat the grill."
    assert hs[2]["doc"]["choices"][0] == " Scrub the grates with a brush."  # lm-eval drops "[step]"
    assert len(hs[0]["resps"]) == 4  # one loglikelihood per ending
    # winogrande's doc_to_choice / doc_to_target functions (preprocess_winogrande.py) too
    wg = [json.loads(line) for line in next(folder.glob("samples_winogrande_*.jsonl")).open()]
    assert wg[0]["arguments"]["gen_args_0"]["arg_0"] == "Sarah was a much better surgeon than Maria so Sarah"


def test_run_suite_returns_each_task_metrics(evaluated):
    returned = evaluated["returned"]
    assert list(returned) == list(FIXTURES)
    for task, metrics in returned.items():
        expected = {"acc"} if task in ("winogrande", "boolq") else {"acc", "acc_norm"}
        assert set(metrics) == expected, task
        assert all(0.0 <= v <= 1.0 for v in metrics.values())
        assert all(v * LIMIT == pytest.approx(round(v * LIMIT)) for v in metrics.values())
    # the same numbers as lm-eval's results file
    folder = evaluated["run"] / "eval" / "step-000200" / "commonsense"
    raw = json.loads(next(folder.glob("results_*.json")).read_text())["results"]
    assert returned["hellaswag"]["acc_norm"] == raw["hellaswag"]["acc_norm,none"]


def test_report_renders_table_with_reference_rows_and_plot(evaluated, tmp_path):
    out = tmp_path / "report"
    p = subprocess.run([sys.executable, str(REPO / "evaluation" / "report.py"), str(evaluated["run"] / "eval"),
                        "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    md = p.stdout
    lines = md.splitlines()
    assert all(line in (out / "report.md").read_text().splitlines() for line in lines)
    header = next(line for line in lines if line.startswith("| model |"))
    assert header == "| model | tokens | HellaSwag | OBQA | WinoGrande | ARC-c | ARC-e | BoolQ | PIQA | avg |"
    ours = [line for line in lines if line.startswith("| demo-run/")]
    assert [line.split(" | ")[0] for line in ours] == ["| demo-run/step-000100†", "| demo-run/step-000200†"]
    assert [line.split(" | ")[1] for line in ours] == ["410K", "819K"]
    # our row's numbers are lm-eval's, in %, with their average
    row = [c.strip() for c in ours[1].strip("|").split("|")]
    scores = evaluated["returned"]
    metric = {t.task: t.metric for t in ev.load_suite("commonsense").tasks}
    expected = [100 * scores[t][metric[t]] for t in FIXTURES]
    assert [float(c) for c in row[2:9]] == pytest.approx(expected, abs=0.006)
    assert float(row[9]) == pytest.approx(sum(expected) / 7, abs=0.006)
    # TinyLlama's rows for the same tasks and metric, with the published average
    assert "| *TinyLlama v1.1* | 2T | 61.47 | 36.80 | 59.43 | 32.68 | 55.47 | 55.99 | 73.56 | 53.63 |" in lines
    assert "| *TinyLlama v1.0* | 3T | 59.20 | 36.00 | 59.12 | 30.12 | 55.25 | 57.83 | 73.29 | 52.99 |" in lines
    assert any("subset (lm-eval --limit)" in line for line in lines)
    png = out / "commonsense.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert "![commonsense over tokens seen](commonsense.png)" in (out / "report.md").read_text()


def test_report_reads_a_plain_lm_eval_folder_and_skips_the_plot_for_one_point(evaluated, tmp_path):
    """A folder written by lm-eval itself (no run_info.json): suite guessed from its tasks, one row, no plot."""
    from tinyllama.evaluation import scoreboard as report

    src = evaluated["run"] / "eval" / "step-000100" / "commonsense"
    plain = tmp_path / "plain"
    plain.mkdir()
    for f in src.glob("results_*.json"):
        (plain / f.name).write_text(f.read_text())
    md, plots = report.build_report([plain], tmp_path / "out")
    assert plots == []
    assert "| step-000100† | 410K |" in md  # label and tokens from the model folder's training_metadata.json
    assert "### commonsense" in md
