"""DPO: on the UltraFeedback-schema fixture, training raises the reward accuracy; max_prompt_length keeps
the end of long prompts."""

from pathlib import Path

import pytest

from pretrain_utils import load_script
from tinyllama import chat
from tinyllama.chat.demo_data import build_base_model, ultrafeedback_rows, write_hub_layout


pytestmark = pytest.mark.slow  # SFT then DPO training; make test-fast skips it

REPO = Path(__file__).resolve().parent.parent
MAX_PROMPT = 20


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory, demo_paths):
    from tinyllama.chat.args import parse_dpo_args

    tmp = tmp_path_factory.mktemp("dpo")
    base = build_base_model(tmp / "base", model_config="tiny")
    # the start of DPO is an SFT output: a model folder whose tokenizer carries the chat template
    tokenizer = chat.setup_tokenizer(str(base))
    tokenizer.save_pretrained(base)
    data = write_hub_layout(tmp / "data", {"train_prefs": ultrafeedback_rows(48), "test_prefs": ultrafeedback_rows(8)})
    dpo = load_script("recipes/dpo.py")
    args = parse_dpo_args([
        "--model_name_or_path", str(base), "--dataset_name", str(data), "--output_dir", str(tmp / "out"),
        "--dataset_test_split", "train_prefs", "--max_eval_samples", "32",  # accuracy on the pairs it learns
        "--max_prompt_length", str(MAX_PROMPT), "--max_length", "96", "--beta", "0.1", "--learning_rate", "5e-3",
        "--lr_scheduler_type", "constant", "--max_steps", "24", "--per_device_train_batch_size", "8",
        "--per_device_eval_batch_size", "16", "--bf16", "false", "--activation_checkpointing", "false",
        "--report_to", "none", "--eval_strategy", "steps", "--eval_steps", "1000", "--save_strategy", "'no'",
        "--logging_steps", "4", "--disable_tqdm", "true", "--dataloader_pin_memory", "false", "--seed", "0",
    ])
    trainer = dpo.build_trainer(*args)
    before = trainer.evaluate()
    after = chat.train_and_save(trainer, None, *args)
    return dict(trainer=trainer, before=before, after=after, tokenizer=tokenizer, out=tmp / "out")


def test_dpo_raises_reward_accuracy(dpo_run):
    before, after = dpo_run["before"], dpo_run["after"]
    assert before["eval_rewards/accuracies"] == 0.0  # policy == reference: every reward is 0, no pair is won
    assert after["eval_rewards/accuracies"] >= 0.8, after
    assert after["eval_rewards/margins"] > 0.1
    assert after["eval_loss"] < before["eval_loss"]
    card = (dpo_run["out"] / "README.md").read_text()
    assert (dpo_run["out"] / "tokenizer.model").is_file()  # the SentencePiece model travels with the tokenizer
    assert "trained with DPO" in card and "beta | 0.1" in card and "max_prompt_length | 20" in card


def test_dpo_prompts_keep_their_last_max_prompt_length_tokens(dpo_run):
    tokenizer, dataset = dpo_run["tokenizer"], dpo_run["trainer"].train_dataset
    generation_prompt = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=True,
                                                      add_generation_prompt=True, return_dict=True)["input_ids"][-7:]
    truncated = 0
    for i, row in enumerate(ultrafeedback_rows(48)):
        full = tokenizer.apply_chat_template(row["chosen"][:1], tokenize=True, add_generation_prompt=True,
                                             return_dict=True)["input_ids"]
        ids = dataset[i]["prompt_ids"]
        assert ids == full[-MAX_PROMPT:]  # the end: latest turn and the generation prompt the reply follows
        assert ids[-7:] == generation_prompt
        truncated += len(full) > MAX_PROMPT
    assert truncated > 0


def test_the_reference_model_computes_in_the_policys_precision(tmp_path, demo_paths):
    """Full DPO with fp32 master weights and bf16 autocast: the frozen reference is loaded in bf16 (TRL would load it
    in fp32: 2.2 GB more on the 1.1B model). The Chat v1.0 config precomputes the reference log-probs instead, so
    no reference model is loaded at all, as its comment says."""
    import torch

    from tinyllama.chat.args import parse_dpo_args

    base = build_base_model(tmp_path / "base", model_config="tiny")
    chat.setup_tokenizer(str(base)).save_pretrained(base)
    data = write_hub_layout(tmp_path / "data", {"train_prefs": ultrafeedback_rows(4)})
    dpo = load_script("recipes/dpo.py")
    common = ["--model_name_or_path", str(base), "--dataset_name", str(data), "--output_dir", str(tmp_path / "out"),
              "--dtype", "float32", "--bf16", "true", "--use_cpu", "true", "--eval_strategy", "no",
              "--report_to", "none", "--max_length", "64", "--max_prompt_length", "32", "--disable_tqdm", "true"]
    trainer = dpo.build_trainer(*parse_dpo_args(common + ["--precompute_ref_log_probs", "false"]))
    assert trainer.model.dtype == torch.float32 and trainer.ref_model.dtype == torch.bfloat16

    config = ["--config", str(REPO / "configs/chat/dpo-ultrafeedback.yaml"), "--use_cpu", "true"]
    _, training_args, model_args = parse_dpo_args(config + common[:6])
    assert training_args.precompute_ref_log_probs and not model_args.use_peft
    assert chat.reference_model(training_args, model_args) is None  # TRL computes the log-probs before training
