"""Test helpers for the chat recipes: fixed-answer chats that a tiny model memorises in a few dozen steps (so what it
answers after training is known exactly, and that it then stops at EOS), the tiny LoRA SFT run the LoRA tests and
the fault suite kill and resume, and a trained tiny chat model for the tests of what consumes one (GGUF, serving).
The demo's own data builders stay in tinyllama/chat/demo_data.py."""

from __future__ import annotations

from pathlib import Path

from pretrain_utils import load_script
from tinyllama.chat.demo_data import build_base_model, prompt_id, write_hub_layout

FIXED_QA = [("What is your name?", "My name is TinyLlama."), ("What color is the sky?", "The sky is blue.")]
FIXED_SYSTEM = "You are a helpful assistant."


def fixed_answer_rows(n: int = 48) -> list[dict]:
    """UltraChat-schema rows over FIXED_QA: single and two-exchange chats, a third with a system prompt. Row 0 has
    a system prompt and two exchanges."""
    rows = []
    for i in range(n):
        (q, a), (q2, a2) = FIXED_QA[i % 2], FIXED_QA[(i + 1) % 2]
        messages = [{"role": "system", "content": FIXED_SYSTEM}] if i % 3 == 0 else []
        messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        if i % 4 == 0:
            messages += [{"role": "user", "content": q2}, {"role": "assistant", "content": a2}]
        rows.append({"prompt": q, "prompt_id": prompt_id(q), "messages": messages})
    return rows


def tiny_lora_sft_run(folder, save_steps: int):
    """Build the tiny base model and the fixed-answer chats under ``folder``; return ``(base, data, cli)``, where
    ``cli(out, *extra)`` gives the recipes/sft.py arguments of a 6-step LoRA run on them writing to ``out`` and
    saving every ``save_steps`` (the LoRA tests and the fault suite kill and resume this run)."""
    folder = Path(folder)
    base = build_base_model(folder / "base", model_config="tiny")
    rows = fixed_answer_rows(32)
    data = write_hub_layout(folder / "data", {"train_sft": rows, "test_sft": rows[:8]})

    def cli(out, *extra: str) -> list[str]:
        return ["--model_name_or_path", str(base), "--dataset_name", str(data), "--output_dir", str(out),
                "--use_peft", "true", "--lora_r", "8", "--lora_alpha", "16", "--lora_dropout", "0.0",
                "--lora_target_modules", "all-linear", "--learning_rate", "1e-2", "--max_steps", "6",
                "--per_device_train_batch_size", "4", "--max_length", "128", "--bf16", "false",
                "--activation_checkpointing", "false", "--report_to", "none", "--eval_strategy", "no",
                "--save_strategy", "steps", "--save_steps", str(save_steps), "--logging_steps", "1",
                "--disable_tqdm", "true", "--dataloader_pin_memory", "false", "--seed", "0", *extra]

    return base, data, cli


def train_fixed_answer_chat(folder, steps: int = 60, model_config: str = "tiny") -> Path:
    """A full SFT run (recipes/sft.py, in this process) of a tiny random model on the fixed-answer chats: it then
    answers FIXED_QA exactly and stops at ``</s>``, with or without the system prompt. Returns the model folder
    (weights, tokenizer, chat template), for tests of what consumes a chat model (GGUF export, serving)."""
    folder = Path(folder)
    base = build_base_model(folder / "base", model_config=model_config)
    rows = fixed_answer_rows(48)
    data = write_hub_layout(folder / "data", {"train_sft": rows, "test_sft": rows[:8]})
    out = folder / "chat"
    load_script("recipes/sft.py", prefix="_fixture_").main(["--model_name_or_path", str(base), "--dataset_name", str(data), "--output_dir", str(out),
              "--max_length", "128", "--per_device_train_batch_size", "8", "--bf16", "false",
              "--activation_checkpointing", "false", "--report_to", "none", "--save_strategy", "'no'",
              "--eval_strategy", "'no'", "--logging_steps", "20", "--dataloader_pin_memory", "false",
              "--disable_tqdm", "true", "--warmup_steps", "0", "--seed", "0", "--max_steps", str(steps),
              "--learning_rate", "1e-2", "--lr_scheduler_type", "constant"])
    return out
