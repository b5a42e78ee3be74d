"""Chat models evaluated as chat models: with a suite that asks for it (the instruct suite's chat_template: true) or
EVAL_CHAT_TEMPLATE=1, the prompts lm-eval builds for a chat model carry its Zephyr template with the few-shot example
as a turn of its own, a base model's stay raw; run_info.json and the report say which way each score was taken."""

import json
import os

import pytest

from tinyllama import chat
from tinyllama import evaluation as ev
from tinyllama.chat.demo_data import build_base_model

pytestmark = pytest.mark.slow  # an lm-eval run; make test-fast skips it

ARC = [  # allenai/ai2_arc, config ARC-Easy (the schema lm-eval's arc_easy reads)
    {"id": "Mercury_417466", "question": "Which statement best explains why photosynthesis is the foundation of most "
                                         "food webs?",
     "choices": {"text": ["Sunlight is the source of energy for nearly all ecosystems.",
                          "Most ecosystems are found on land instead of in water."], "label": ["A", "B"]},
     "answerKey": "A"},
    {"id": "MCAS_2000_4_6", "question": "Which technology was developed most recently?",
     "choices": {"text": ["cellular telephone", "television"], "label": ["A", "B"]}, "answerKey": "A"},
]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, demo_paths):
    tmp = tmp_path_factory.mktemp("chat-eval")
    base = build_base_model(tmp / "base-model", model_config="tiny")  # the demo tokenizer: no chat template
    chat_model = build_base_model(tmp / "chat-model", model_config="tiny")
    chat.setup_tokenizer(str(chat_model)).save_pretrained(chat_model)  # the Zephyr template, as SFT saves it
    data = tmp / "data" / "arc_easy"
    data.mkdir(parents=True)
    for split in ("test", "train"):  # train: the few-shot examples
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ARC))
    suite = tmp / "chatty.yaml"
    suite.write_text("description: one task, one shot, scored as chat\nchat_template: true\n"
                     "tasks:\n  - {task: arc_easy, label: ARC-e, num_fewshot: 1, metric: acc}\n")
    out = tmp / "eval"
    folders = {"chat": ev.run(chat_model, suite, out, limit=2, data_dir=tmp / "data", batch_size=2, dtype="float32",
                              extra_args=["--seed", "0"])}
    return {"folders": folders, "out": out, "base": base, "chat_model": chat_model, "suite": suite}


def _contexts(folder):
    samples = [json.loads(line) for line in next(folder.glob("samples_arc_easy_*.jsonl")).open()]
    return [s["arguments"]["gen_args_0"]["arg_0"] for s in samples]


def test_a_chat_model_is_prompted_through_its_template_with_the_shot_as_a_turn(evaluated):
    contexts = _contexts(evaluated["folders"]["chat"])
    assert len(contexts) == 2
    for text in contexts:
        assert text.startswith("<s><|user|>\n") and text.endswith("<|assistant|>\n")
        assert text.count("<|user|>\n") == 2 and text.count("<|assistant|>\n") == 2  # the shot, then the question
        assert text.count("</s>\n") == 3  # the shot's question and answer, the question
    info = json.loads((evaluated["folders"]["chat"] / ev.RUN_INFO_FILE).read_text())
    assert info["chat_template"] is True and "chat template" in info["prompts"]
    assert all("--apply_chat_template" in c and "--fewshot_as_multiturn" in c for c in info["commands"])


def test_a_base_model_is_prompted_raw_and_says_why(evaluated, tmp_path):
    """The same suite (it asks for the chat template) on a base model, which has none: the runner leaves lm-eval's
    raw prompts (lm-eval's default; tests/test_eval_run.py reads those contexts from lm-eval's samples) and says why.
    Decided before lm-eval runs, so checked without running it a second time."""
    suite, model = ev.load_suite(evaluated["suite"]), ev.resolve_model(evaluated["base"])
    use_template, prompts = ev.prompt_format(suite, model, None)
    assert use_template is False and "the model has none" in prompts
    commands = ev.lm_eval_commands(model, suite.tasks, tmp_path, chat_template=use_template)
    assert commands and not any("--apply_chat_template" in c or "--fewshot_as_multiturn" in c for c in commands)
    # the chat model under the same suite is prompted through its template (the first test reads lm-eval's samples)
    assert ev.prompt_format(suite, ev.resolve_model(evaluated["chat_model"]), None)[0] is True


def test_the_report_marks_the_chat_template_rows(evaluated):
    import subprocess
    import sys

    from pretrain_utils import REPO

    p = subprocess.run([sys.executable, str(REPO / "evaluation" / "report.py"), str(evaluated["out"]), "--out",
                        str(evaluated["out"] / "report")], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.returncode == 0, p.stderr
    rows = [line for line in p.stdout.splitlines() if line.startswith("| chat-model")]
    assert [r.split(" | ")[0] for r in rows] == ["| chat-model† (chat)"]  # (a base model's row: no mark, test_eval_run)
    assert "(chat): prompts built with the model's chat template" in p.stdout


def test_asking_for_the_template_of_a_model_without_one_fails_before_lm_eval(evaluated, tmp_path):
    with pytest.raises(ValueError, match="chat template asked for .* has none"):
        ev.run(evaluated["base"], "commonsense", tmp_path, chat_template=True, limit=1)
    assert not any(tmp_path.iterdir())
    with pytest.raises(ValueError, match="--apply_chat_template is set by the runner; use EVAL_CHAT_TEMPLATE=1"):
        ev.run(evaluated["base"], "commonsense", tmp_path, extra_args=["--apply_chat_template"])
