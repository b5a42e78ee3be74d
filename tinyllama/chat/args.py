"""Arguments of the chat recipes: TRL's ``ScriptArguments`` + the method's trainer config (``SFTConfig``,
``DPOConfig``, ``ORPOConfig``, ``CPOConfig``, ``KTOConfig``, ``DistillationConfig``: ``tinyllama/chat/methods.py``)
+ ``ModelConfig`` in one YAML, parsed by :func:`tinyllama.config.parse_config` (HfArgumentParser underneath, like ``TrlParser``, with its
``env:`` mapping) so that every unknown key - e.g. a field TRL renamed or removed in an upgrade - fails the run
before it starts, with a "did you mean" hint. The config's ``method:`` names the method.

Not re-exported by :mod:`tinyllama.chat` because it imports TRL (seconds), which ``scripts/chat.py`` does not need:
import it as ``tinyllama.chat.args``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from trl import DPOConfig, ModelConfig, ScriptArguments, SFTConfig

from ..config import ConfigError, load_yaml, parse_config, split_cli
from .methods import METHODS, ChatMethod, get_method


@dataclass
class ChatScriptArguments(ScriptArguments):
    """Data and tokenizer arguments shared by the chat recipes (on top of TRL's ``ScriptArguments``)."""

    method: str | None = field(
        default=None, metadata={"help": f"The chat method: {', '.join(METHODS)} (tinyllama/chat/methods.py). "
                                        "recipes/sft.py and recipes/dpo.py set their own; recipes/chat.py needs it."})
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


class _PromptLengthCheck:
    """``validate`` of the script arguments that have ``max_prompt_length`` (preference methods, distillation)."""

    def validate(self) -> list[str]:
        errors = super().validate()
        if self.max_prompt_length is not None and self.max_prompt_length < 1:
            errors.append("'max_prompt_length' must be >= 1")
        return errors


@dataclass
class DPOScriptArguments(_PromptLengthCheck, ChatScriptArguments):
    """The preference methods' data arguments (DPO, ORPO, SimPO; KTO reads the same pairs as unpaired rows)."""

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
                          "the recipe applies it after TRL's tokenization (tinyllama/chat/trainers.py)."})


@dataclass
class DistillScriptArguments(_PromptLengthCheck, SFTScriptArguments):
    """The distillation method's data arguments: UltraChat-schema conversations read as prompts (the student writes
    the replies, TRL's DistillationTrainer samples them)."""

    chat_template: str = field(
        default="tokenizer",
        metadata={"help": "'tokenizer' (default: the student's own template, as SFT saved it), 'zephyr', or a "
                          ".jinja file. The teacher reads the same tokens, rendered with this template."})
    max_prompt_length: int | None = field(
        default=None,
        metadata={"help": "Keep at most the last N prompt tokens (TRL's DistillationTrainer cuts none; the recipe "
                          "does it after TRL's tokenization: tinyllama/chat/trainers.py)."})


@dataclass
class ChatSFTConfig(SFTConfig):
    """TRL's SFTConfig with the chat default: the loss on assistant replies (and their EOS) only."""

    assistant_only_loss: bool = field(
        default=True,
        metadata={"help": "Loss on assistant replies and their EOS only (needs {% generation %} markers in the "
                          "chat template, as the zephyr one has). Default true here; TRL's default is false."})


# the script arguments of each kind of data (methods.DATA_KINDS)
SCRIPT_ARGUMENTS = {"chat": SFTScriptArguments, "pairs": DPOScriptArguments, "unpaired": DPOScriptArguments,
                    "prompts": DistillScriptArguments}


def method_of(args: Sequence[str], recipe_method: str | None = None) -> ChatMethod:
    """The method a command line asks for: the config's (or ``--method``'s) ``method:``; a recipe that runs one
    method (``recipes/sft.py``, ``dpo.py``) passes its own, and a config written for another is refused."""
    config, overrides, _ = split_cli(args)
    named = overrides.get("method", load_yaml(config).get("method") if config and Path(config).is_file() else None)
    if recipe_method is None:
        if named is None:
            raise ConfigError(config or "command line", [f"'method' is required: one of {', '.join(METHODS)} "
                                                         "(e.g. method: orpo in the config, or --method orpo)"])
        return get_method(named)
    if named is not None and named != recipe_method:
        other = get_method(named)
        raise ConfigError(config or "command line", [
            f"method: {named}, but {METHODS[recipe_method].script} runs {recipe_method}: run "
            f"python {other.script} (or recipes/chat.py, which runs every method)"])
    return get_method(recipe_method)


POSITIVE = ("learning_rate", "max_length", "per_device_train_batch_size", "gradient_accumulation_steps")


def parse_chat_args(args: Sequence[str] | None = None, recipe_method: str | None = None) -> tuple:
    """(script arguments, trainer config, ModelConfig) for the method the command line names (method_of)."""
    import sys

    args = list(sys.argv[1:] if args is None else args)
    method = method_of(args, recipe_method)
    script_args, training_args, model_args = parse_config(
        [SCRIPT_ARGUMENTS[method.data], method.config_class(), ModelConfig], args)
    script_args.method = method.name
    wrong = {key: f"method {method.name} needs {key}: {value!r} (it is how {method.title} is defined), got "
                  f"{getattr(training_args, key)!r}" for key, value in method.fixed
             if getattr(training_args, key) != value}
    # values transformers takes without a word and that fail only once the model is loaded and training starts
    wrong |= {key: f"'{key}' must be positive, got {getattr(training_args, key)}" for key in POSITIVE
              if getattr(training_args, key, None) is not None and getattr(training_args, key) <= 0}
    if wrong:
        config, overrides, _ = split_cli(args)
        where = dict.fromkeys("command line" if k in overrides or not config else config for k in wrong)
        raise ConfigError(" and ".join(where), list(wrong.values()))
    return script_args, training_args, model_args


def parse_sft_args(args: Sequence[str] | None = None) -> tuple[SFTScriptArguments, ChatSFTConfig, ModelConfig]:
    return parse_chat_args(args, "sft")


def parse_dpo_args(args: Sequence[str] | None = None) -> tuple[DPOScriptArguments, DPOConfig, ModelConfig]:
    return parse_chat_args(args, "dpo")


def parse_chat_config(path: str | Path, overrides: Sequence[str] = ()) -> tuple:
    """Parse a configs/chat YAML with the parser of the method it names (``method:``)."""
    return parse_chat_args(["--config", str(path), *overrides])
