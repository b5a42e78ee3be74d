"""The chat methods beyond DPO (ORPO, SimPO, KTO) through the one chat recipe: each learns on the demo's preference
data from one shared SFT start (a held-out measure of the pairs moves the right way, so a run whose trainer does
nothing, e.g. at learning rate 0, fails), writes summary.json and its card; the data shapes, the registry's checks,
and the pipeline's --with-chat METHOD."""

from pathlib import Path

import pytest

from tinyllama import chat
from tinyllama.chat.demo_data import build_base_model, ultrachat_rows, ultrafeedback_rows, write_hub_layout
from tinyllama.config import ConfigError

REPO = Path(__file__).resolve().parent.parent
COMMON = ["--bf16", "false", "--activation_checkpointing", "false", "--report_to", "none", "--save_strategy", "'no'",
          "--logging_steps", "50", "--dataloader_pin_memory", "false", "--disable_tqdm", "true", "--seed", "0",
          "--warmup_steps", "0", "--lr_scheduler_type", "constant"]
# each method's own arguments in the learning test. ORPO: on the demo the SFT start already prefers the chosen replies,
# so ORPO's odds-ratio term (weight beta; 0.05 in its recipe) is nearly saturated and its NLL term (on the whole
# chosen sequence) dominates: with beta 20 the preference term shows within 16 steps.
METHOD_ARGS = {"orpo": ["--beta", "20.0"],
               "simpo": ["--loss_type", "simpo", "--cpo_alpha", "0.0", "--beta", "2.0", "--simpo_gamma", "1.6"],
               "kto": ["--beta", "0.1"]}


@pytest.fixture(scope="module")
def start(tmp_path_factory, demo_paths):
    """The SFT start every method continues from (a tiny model, 40 steps on the demo's UltraChat-schema chats), and
    the demo's preference pairs: 64 to train on, 32 held out (another seed: other numbers, names and words)."""
    tmp = tmp_path_factory.mktemp("methods")
    base = build_base_model(tmp / "base", model_config="tiny")
    chats = write_hub_layout(tmp / "chats", {"train_sft": ultrachat_rows(256), "test_sft": ultrachat_rows(8, 1)})
    sft = tmp / "sft"
    chat.run_recipe(["--model_name_or_path", str(base), "--dataset_name", str(chats), "--output_dir", str(sft),
                     "--max_length", "128", "--per_device_train_batch_size", "16", "--eval_strategy", "'no'",
                     "--max_steps", "40", "--learning_rate", "1e-2", *COMMON], "sft")
    prefs = write_hub_layout(tmp / "prefs", {"train_prefs": ultrafeedback_rows(64),
                                             "test_prefs": ultrafeedback_rows(32, 1)})
    return tmp, sft, prefs


@pytest.mark.slow  # training; make test-fast skips it
@pytest.mark.parametrize("method", ["orpo", "simpo", "kto"])
def test_method_learns_the_preferences_on_held_out_pairs(start, method):
    import json

    tmp, sft, prefs = start
    out = tmp / method
    metrics = chat.run_recipe([
        "--method", method, "--model_name_or_path", str(sft), "--dataset_name", str(prefs), "--output_dir", str(out),
        "--max_length", "96", "--max_prompt_length", "48", "--per_device_train_batch_size", "8",
        "--per_device_eval_batch_size", "16", "--eval_strategy", "steps", "--eval_steps", "1000",
        "--max_steps", "16", "--learning_rate", "1e-3", *METHOD_ARGS[method], *COMMON])
    before, after = metrics["heldout/logp_margin_start"], metrics["heldout/logp_margin"]
    # the measure per reply token: chosen minus rejected, moved towards the chosen replies by more than noise
    assert after > before + 0.1, (before, after)
    assert metrics["heldout/pair_accuracy"] >= metrics["heldout/pair_accuracy_start"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["step"] == 16 and summary["metrics"]["heldout/logp_margin"] == after
    card = (out / "README.md").read_text()
    title = chat.METHODS[method].title
    assert f"trained with {title} (recipes/chat.py, TRL)" in card and "heldout/pair_accuracy" in card
    assert f"- {method}" in card  # the Hub tag
    assert (out / "model.safetensors").is_file() and (out / "chat_template.jinja").is_file()


@pytest.mark.slow
def test_text_rows_end_each_reply_at_its_eos_and_keep_the_prompt_end(start):
    """TRL's ORPO/CPO would train on 'reply</s>\\n</s>' (the template's newline, then an EOS of its own); here the
    reply ends at its EOS, and long prompts keep their last max_prompt_length tokens."""
    from tinyllama.chat.args import parse_chat_args

    tmp, sft, prefs = start
    args = parse_chat_args(["--method", "orpo", "--model_name_or_path", str(sft), "--dataset_name", str(prefs),
                            "--output_dir", str(tmp / "rows"), "--max_length", "96", "--max_prompt_length", "12",
                            "--max_train_samples", "16", "--eval_strategy", "'no'", *COMMON])
    trainer = chat.build_trainer("orpo", *args)
    tokenizer, eos = trainer.processing_class, trainer.processing_class.eos_token_id
    for i, row in enumerate(ultrafeedback_rows(16)):
        prompt, reply = chat.reply_token_ids(tokenizer, row["chosen"][:1], row["chosen"][1:])
        ids = trainer.train_dataset[i]
        assert ids["chosen_input_ids"] == prompt[-12:] + reply  # the last 12 prompt tokens, the reply, its </s>
        assert reply[-1] == eos and reply.count(eos) == 1
        assert [t for t in ids["chosen_labels"] if t != -100] == reply
        assert ids["prompt_input_ids"] == prompt[-12:]


def test_kto_reads_each_pair_as_a_desirable_and_an_undesirable_row():
    from datasets import Dataset

    pairs = ultrafeedback_rows(24)
    rows = chat.prepare_unpaired_dataset(Dataset.from_list(pairs), "my/prefs", "train_prefs", seed=0)
    assert len(rows) == 48 and sum(rows["label"]) == 24
    by_prompt = {}
    for r in rows:
        by_prompt.setdefault(r["prompt"][0]["content"], []).append((r["completion"][0]["content"], r["label"]))
    for p in pairs:
        got = by_prompt[p["prompt"]]
        assert (p["chosen"][1]["content"], True) in got and (p["rejected"][1]["content"], False) in got
    # shuffled: TRL's KTO reads rows in order, and unpairing puts every desirable row first
    assert 0 < sum(rows["label"][:8]) < 8
    assert rows["label"] != chat.prepare_unpaired_dataset(Dataset.from_list(pairs), "p", "s", seed=1)["label"]


def test_the_registry_checks_the_method_before_anything_loads(tmp_path):
    from tinyllama.chat.args import parse_chat_args, parse_sft_args

    with pytest.raises(ConfigError, match="method: orpo, but recipes/sft.py runs sft: run python recipes/chat.py"):
        parse_sft_args(["--config", "configs/chat/orpo-demo.yaml"])
    with pytest.raises(ConfigError, match="method simpo needs loss_type: 'simpo'"):
        parse_chat_args(["--config", "configs/chat/simpo-demo.yaml", "--loss_type", "sigmoid"])
    with pytest.raises(ConfigError, match="method simpo needs cpo_alpha: 0.0"):
        parse_chat_args(["--config", "configs/chat/simpo-demo.yaml", "--cpo_alpha", "1.0"])
    with pytest.raises(ValueError, match="'dpoo' is not a chat method.*did you mean 'dpo'"):
        parse_chat_args(["--config", "configs/chat/dpo-demo.yaml", "--method", "dpoo"])
    with pytest.raises(ConfigError, match="'method' is required"):
        parse_chat_args(["--dataset_name", "x"])
    # checks of the arguments, before the tokenizer or the model
    script, train, model = parse_chat_args(["--config", "configs/chat/orpo-demo.yaml", "--max_prompt_length", "null"])
    with pytest.raises(ValueError, match="method orpo: set max_prompt_length"):
        chat.check_args(chat.METHODS["orpo"], script, train, model)
    script, train, model = parse_chat_args(["--config", "configs/chat/kto-demo.yaml",
                                            "--per_device_train_batch_size", "1"])
    with pytest.raises(ValueError, match="per_device_train_batch_size must be >= 2"):
        chat.check_args(chat.METHODS["kto"], script, train, model)


def test_every_method_has_its_configs_and_the_pipeline_picks_one():
    from tinyllama.chat.args import parse_chat_config
    from tinyllama.pipeline import load_pipeline, plan

    for name, method in chat.METHODS.items():
        for kind in (["demo", "lora"] + (["ultrafeedback"] if method.preference else ["ultrachat"])):
            path = REPO / "configs" / "chat" / f"{name}-{kind}.yaml"
            if name == "sft" and kind == "lora":
                continue  # sft-lora.yaml derives from sft-ultrachat.yaml: checked there, and by test_every_config
            script, train, _ = parse_chat_config(path, ["--use_cpu", "true"])
            assert script.method == name and isinstance(train, method.config_class()), path
    p = load_pipeline(REPO / "configs" / "pipeline" / "demo.yaml")
    for method in ("orpo", "simpo", "kto"):
        stages = plan(p, "math_code", "/x", with_chat=method)
        chat_stage = stages[-1]
        assert (chat_stage.name, chat_stage.spec.recipe) == (f"{method}-math_code", method)
        assert chat_stage.argv[:2] == ["--config", str(REPO / "configs" / "chat" / f"{method}-demo.yaml")]
        assert chat_stage.init_from == "/x/sft-math_code"
    assert [s.name for s in plan(p, "math_code", "/x", with_chat=True)][-2:] == ["sft-math_code", "dpo-math_code"]
    with pytest.raises(ValueError, match="--with-chat sft: choose one of dpo, orpo, simpo, kto"):
        plan(p, "math_code", "/x", with_chat="sft")
