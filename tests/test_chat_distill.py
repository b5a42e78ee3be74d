"""Distillation through the one chat recipe (TRL's DistillationTrainer, method ``distill``): the student moves
toward the teacher on held-out chats (KL(teacher || student) and KL(student || teacher) per reply token fall by
more than half, so a run that does not train fails), a LoRA student saves an adapter, a teacher with another
vocabulary is refused before any model loads, and a pipeline stage can run the method."""

import json
import shutil
from pathlib import Path

import pytest

from tinyllama import chat
from tinyllama.chat.demo_data import build_base_model, ultrachat_rows, write_hub_layout

REPO = Path(__file__).resolve().parent.parent
COMMON = ["--bf16", "false", "--activation_checkpointing", "false", "--report_to", "none", "--save_strategy", "'no'",
          "--logging_steps", "50", "--dataloader_pin_memory", "false", "--disable_tqdm", "true", "--seed", "0",
          "--warmup_steps", "0", "--lr_scheduler_type", "constant"]


@pytest.fixture(scope="module")
def models(tmp_path_factory, demo_paths):
    """A teacher (a tiny model after 20 SFT steps on the demo's chats), a student (another tiny random model, seed 1)
    and the chats: 256 to train on, 16 held out (another seed: other numbers, names and words)."""
    tmp = tmp_path_factory.mktemp("distill")
    chats = write_hub_layout(tmp / "chats", {"train_sft": ultrachat_rows(256), "test_sft": ultrachat_rows(16, 1)})
    base = build_base_model(tmp / "base", model_config="tiny")
    teacher = tmp / "teacher"
    chat.run_recipe(["--model_name_or_path", str(base), "--dataset_name", str(chats), "--output_dir", str(teacher),
                     "--max_length", "128", "--per_device_train_batch_size", "8", "--eval_strategy", "'no'",
                     "--max_steps", "20", "--learning_rate", "1e-2", *COMMON], "sft")
    student = build_base_model(tmp / "student", model_config="tiny", seed=1)
    return tmp, teacher, student, chats


def distill_args(teacher, student, chats, out, *extra):
    return ["--method", "distill", "--model_name_or_path", str(student), "--teacher_model_name_or_path", str(teacher),
            "--dataset_name", str(chats), "--output_dir", str(out), "--chat_template", "zephyr",
            "--max_prompt_length", "64", "--max_completion_length", "24", "--per_device_train_batch_size", "8",
            "--per_device_eval_batch_size", "16", "--eval_strategy", "steps", "--eval_steps", "1000", *COMMON, *extra]


@pytest.mark.slow  # training; make test-fast skips it
def test_the_student_moves_toward_the_teacher_on_held_out_chats(models):
    tmp, teacher, student, chats = models
    out = tmp / "distilled"
    metrics = chat.run_recipe(distill_args(teacher, student, chats, out, "--max_steps", "12", "--learning_rate",
                                           "1e-2"))
    # 12 steps of reverse KL (beta 1, TRL's default), measured at seeds 0, 1, 2: KL(teacher || student) 4.80 ->
    # 0.61 / 0.63 / 0.65 nats per token, KL(student || teacher) 3.95 -> 0.82 / 0.85 / 0.84
    for kl in ("heldout/kl_teacher_student", "heldout/kl_student_teacher"):
        assert metrics[kl] < 0.5 * metrics[kl + "_start"], (kl, metrics[kl + "_start"], metrics[kl])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["step"] == 12 and summary["metrics"]["heldout/kl_teacher_student"] == metrics[
        "heldout/kl_teacher_student"]
    card = (out / "README.md").read_text()
    assert f"- **Teacher:** `{teacher}`" in card and f"- **Base model:** `{student}`" in card
    assert "trained with distillation (recipes/chat.py, TRL)" in card and "heldout/kl_teacher_student" in card
    assert (out / "model.safetensors").is_file() and (out / "chat_template.jinja").is_file()


@pytest.mark.slow
def test_a_lora_student_saves_an_adapter(models):
    from safetensors.torch import load_file

    tmp, teacher, student, chats = models
    out = tmp / "lora"
    metrics = chat.run_recipe(distill_args(
        teacher, student, chats, out, "--max_steps", "4", "--learning_rate", "1e-2", "--use_peft", "true",
        "--lora_r", "8", "--lora_alpha", "16", "--lora_dropout", "0.0", "--lora_target_modules", "all-linear",
        "--max_eval_samples", "8"))
    assert (out / "adapter_config.json").is_file() and not (out / "model.safetensors").exists()
    weights = load_file(out / "adapter_model.safetensors")
    assert weights and all("lora_" in k for k in weights)
    assert any(k.startswith("lm_head") for k in weights) is False  # TRL reads the head directly: no adapter there
    assert metrics["heldout/kl_teacher_student"] < metrics["heldout/kl_teacher_student_start"]
    card = (out / "README.md").read_text()
    assert "A TinyLlama chat LoRA adapter trained with distillation" in card and f"`{teacher}`" in card


def _folder_without_weights(src: Path, dst: Path) -> Path:
    """A model folder's config and tokenizer, no weights: enough for the vocabulary check, and any load would fail."""
    dst.mkdir()
    for f in src.iterdir():
        if f.suffix != ".safetensors":
            shutil.copy(f, dst / f.name)
    return dst


def test_a_teacher_with_another_vocabulary_is_refused_before_any_model_loads(tmp_path, demo_paths, monkeypatch):
    import transformers
    from transformers.modeling_utils import PreTrainedModel

    from tinyllama.chat.args import parse_chat_args

    student = build_base_model(tmp_path / "student", model_config="tiny")
    chats = write_hub_layout(tmp_path / "chats", {"train_sft": ultrachat_rows(8), "test_sft": ultrachat_rows(4, 1)})

    def no_loading(*a, **k):
        raise AssertionError("a model was loaded before the vocabulary check")
    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(no_loading))
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", classmethod(no_loading))

    def refusal(teacher):
        args = parse_chat_args(distill_args(teacher, student, chats, tmp_path / "out", "--max_steps", "1"))
        with pytest.raises(ValueError) as e:
            chat.build_trainer("distill", *args)
        return str(e.value)

    # another number of output tokens (the config says so)
    bigger = _folder_without_weights(student, tmp_path / "bigger")
    config = json.loads((bigger / "config.json").read_text())
    (bigger / "config.json").write_text(json.dumps({**config, "vocab_size": 4224}))
    message = refusal(bigger)
    assert message.startswith(f"teacher_model_name_or_path: {bigger} has another vocabulary than the student "
                              f"{student}: its model has 4224 output tokens, the student's 4096")
    assert "\n" not in message
    # the same number of tokens, other ones (as Mistral-7B beside Llama-2): two tokens swap ids in the tokenizer
    swapped = _folder_without_weights(student, tmp_path / "swapped")
    tok = json.loads((swapped / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    a, b = [t for t, i in vocab.items() if i in (1000, 1001)]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (swapped / "tokenizer.json").write_text(json.dumps(tok))
    (swapped / "tokenizer.model").unlink(missing_ok=True)
    message = refusal(swapped)
    assert "has another vocabulary than the student" in message and "2 tokens differ in id" in message, message
    # no teacher at all, and a missing folder
    with pytest.raises(ValueError, match="method distill needs teacher_model_name_or_path"):
        args = parse_chat_args(distill_args("", student, chats, tmp_path / "out"))
        args[1].teacher_model_name_or_path = None
        chat.build_trainer("distill", *args)
    with pytest.raises(FileNotFoundError, match="teacher_model_name_or_path: model folder not found"):
        chat.build_trainer("distill", *parse_chat_args(distill_args(tmp_path / "nowhere/teacher", student, chats,
                                                                    tmp_path / "out")))


def test_prompts_are_the_turns_before_the_last_reply():
    from datasets import Dataset

    rows = ultrachat_rows(32)
    prompts = chat.prepare_prompt_dataset(Dataset.from_list(rows), "my/chats", "train_sft")
    for row, got in zip(rows, prompts):
        assert got["prompt"] + got["completion"] == row["messages"]
        assert got["prompt"][-1]["role"] == "user" and got["completion"][0]["role"] == "assistant"
    bad = [{"prompt": "x", "prompt_id": "y", "messages": [{"role": "system", "content": "s"},
                                                          {"role": "assistant", "content": "a"}]}]
    with pytest.raises(ValueError, match="row 0: the last assistant reply must follow a user message"):
        chat.prepare_prompt_dataset(Dataset.from_list(bad), "my/chats", "train_sft")


def test_a_pipeline_stage_runs_distill_and_with_chat_keeps_the_preference_methods(tmp_path):
    """The registry drives the pipeline's recipe: names, so a stage can distil (its init_from is the student, the
    teacher comes from its config); --with-chat is the preference step after SFT, which distillation is not."""
    import yaml

    from tinyllama.pipeline import load_pipeline, plan

    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"name": "d", "variant": "general", "variants": ["general"], "launcher": ["python"],
                                    "stages": [{"name": "sft", "recipe": "sft", "config": "configs/chat/sft-demo.yaml",
                                                "init_from": "data/demo/chat/base"},
                                               {"name": "distill", "recipe": "distill",
                                                "config": "configs/chat/distill-demo.yaml", "init_from": "sft"}]}))
    stages = plan(load_pipeline(path), "general", tmp_path / "runs")
    assert stages[-1].spec.recipe == "distill" and stages[-1].init_from == str(tmp_path / "runs" / "sft")
    assert stages[-1].argv[:2] == ["--config", str(REPO / "configs" / "chat" / "distill-demo.yaml")]
    with pytest.raises(ValueError, match="--with-chat distill: choose one of dpo, orpo, simpo, kto"):
        plan(load_pipeline(REPO / "configs" / "pipeline" / "demo.yaml"), "math_code", "/x", with_chat="distill")
