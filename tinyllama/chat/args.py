"""Arguments of the chat recipes: TRL's ``ScriptArguments`` + ``SFTConfig``/``DPOConfig`` + ``ModelConfig`` in one
YAML, parsed by :func:`tinyllama.config.parse_config` (HfArgumentParser underneath, like ``TrlParser``, with its
``env:`` mapping) so that every unknown key - e.g. a field TRL renamed or removed in an upgrade - fails the run
before it starts, with a "did you mean" hint.

Not re-exported by :mod:`tinyllama.chat` because it imports TRL (seconds), which ``scripts/chat.py`` does not need:
import it as ``tinyllama.chat.args``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from trl import DPOConfig, ModelConfig, ScriptArguments, SFTConfig

from ..config import parse_config


@dataclass
class ChatScriptArguments(ScriptArguments):
    """Data and tokenizer arguments shared by the SFT and DPO recipes (on top of TRL's ``ScriptArguments``)."""

    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "Tokenizer folder or Hub id; defaults to model_name_or_path."})
    chat_template: str = field(
        default="zephyr",
        metadata={"help": "'zephyr' (TinyLlama-Chat's template, with generation markers), a .jinja file, or "
                          "'tokenizer' to keep the tokenizer's own (it must have {% generation %} markers for "
                          "assistant_only_loss)."})
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Use only the first N training rows (quick runs, debugging)."})
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Use only the first N evaluation rows."})

    def validate(self) -> list[str]:
        errors = []
        if not self.dataset_name:
            errors.append("'dataset_name' is required: a Hub id (HuggingFaceH4/ultrachat_200k) or a local folder")
        if self.dataset_streaming:
            errors.append("'dataset_streaming' is not supported by the chat recipes (rows are checked up front)")
        for key in ("max_train_samples", "max_eval_samples"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                errors.append(f"'{key}' must be >= 1")
        return errors


@dataclass
class SFTScriptArguments(ChatScriptArguments):
    dataset_name: str | None = field(
        default=None, metadata={"help": "Chat dataset in UltraChat's schema (messages): Hub id or local folder."})
    dataset_train_split: str = field(default="train_sft", metadata={"help": "Training split."})
    dataset_test_split: str = field(default="test_sft", metadata={"help": "Evaluation split (used when "
                                                                           "eval_strategy is not 'no')."})


@dataclass
class DPOScriptArguments(ChatScriptArguments):
    dataset_name: str | None = field(
        default=None, metadata={"help": "Preference dataset in UltraFeedback-binarized's schema (chosen/rejected "
                                        "message lists): Hub id or local folder."})
    dataset_train_split: str = field(default="train_prefs", metadata={"help": "Training split."})
    dataset_test_split: str = field(default="test_prefs", metadata={"help": "Evaluation split."})
    chat_template: str = field(
        default="tokenizer",
        metadata={"help": "'tokenizer' (default: the template the SFT recipe saved with the starting model), "
                          "'zephyr', or a .jinja file."})
    max_prompt_length: int | None = field(
        default=None,
        metadata={"help": "Keep at most the last N prompt tokens (Zephyr: 512). TRL >= 1.0 dropped this option; "
                          "the recipe applies it after TRL's tokenization."})

    def validate(self) -> list[str]:
        errors = super().validate()
        if self.max_prompt_length is not None and self.max_prompt_length < 1:
            errors.append("'max_prompt_length' must be >= 1")
        return errors


@dataclass
class ChatSFTConfig(SFTConfig):
    """TRL's SFTConfig with the chat default: the loss on assistant replies (and their EOS) only."""

    assistant_only_loss: bool = field(
        default=True,
        metadata={"help": "Loss on assistant replies and their EOS only (needs {% generation %} markers in the "
                          "chat template, as the zephyr one has). Default true here; TRL's default is false."})


def parse_sft_args(args: Sequence[str] | None = None) -> tuple[SFTScriptArguments, ChatSFTConfig, ModelConfig]:
    return parse_config([SFTScriptArguments, ChatSFTConfig, ModelConfig], args)


def parse_dpo_args(args: Sequence[str] | None = None) -> tuple[DPOScriptArguments, DPOConfig, ModelConfig]:
    return parse_config([DPOScriptArguments, DPOConfig, ModelConfig], args)


def parse_chat_config(path: str | Path, overrides: Sequence[str] = ()) -> tuple:
    """Parse a configs/chat YAML with the parser of the recipe that reads it (sft-*.yaml or dpo-*.yaml)."""
    name = Path(path).name
    if name.startswith("sft"):
        return parse_sft_args(["--config", str(path), *overrides])
    if name.startswith("dpo"):
        return parse_dpo_args(["--config", str(path), *overrides])
    raise ValueError(f"{path}: chat configs are named sft-*.yaml or dpo-*.yaml")
