"""Chat fine-tuning pieces shared by ``recipes/sft.py``, ``recipes/dpo.py``, ``scripts/chat.py`` and
``scripts/merge_lora.py``.

TinyLlama-1.1B-Chat-v1.0 is the alignment-handbook's Zephyr recipe (docs/reference.md, "Chat models"): SFT on
``HuggingFaceH4/ultrachat_200k``, then DPO on ``HuggingFaceH4/ultrafeedback_binarized``, with the Zephyr chat
template. TRL does the training; this package is what TRL leaves to the scripts:

- ``template.py``: the one chat template (training and inference) and the tokenizer setup (pad distinct from EOS);
- ``datasets.py``: loading a split and checking every row, with messages naming dataset, split and row;
- ``checks.py``: early checks of the model arguments (QLoRA without CUDA, an adapter where a model is needed, bf16
  weights for a full fine-tune, a Hub token in a config) and what a name is (local path or Hub id);
- ``card.py``: the model card (base model, data, recipe, hyperparameters; TRL's names only the first two);
- ``recipe.py``: the ``from_pretrained`` arguments, resume, and the end of both recipes (train, save, push);
- ``demo.py``: the CPU demo's chat and preference data sets and tiny base model, built on first use;
- ``inference.py``: what the chat script and the inference benchmark share;
- ``args.py``: the recipes' argument dataclasses. It imports TRL, so it is not re-exported here:
  ``from tinyllama.chat.args import parse_sft_args``.

Importing the package imports none of torch, transformers, datasets or TRL (scripts/chat.py starts fast); the
names below are re-exported so that ``from tinyllama.chat import setup_tokenizer`` works.
"""

from __future__ import annotations

from .card import CARD_HYPERPARAMETERS, ChatModelCardMixin, model_card_text
from .checks import (HALF_DTYPES, check_model_source, check_precision, check_quantization, is_adapter_dir, is_hub_id,
                     looks_local, precheck_argv, uses_deepspeed)
from .datasets import (load_split, message_problem, preference_to_conversational, prepare_preference_dataset,
                       prepare_sft_dataset)
from .demo import DEMO_CHAT_DIR, ensure_demo_assets
from .inference import ForwardCounter
from .recipe import (complete_trainer_checkpoints, config_file_of, config_to_card_dict, model_init_kwargs,
                     resolve_resume, save_run_config, train_and_save)
from .template import (ROLES, ZEPHYR_CHAT_TEMPLATE, chat_template_from, has_generation_markers, prefix_mismatches,
                       set_pad_token, setup_tokenizer)

__all__ = [
    "CARD_HYPERPARAMETERS", "ChatModelCardMixin", "model_card_text",
    "HALF_DTYPES", "check_model_source", "check_precision", "check_quantization", "is_adapter_dir", "is_hub_id",
    "looks_local", "precheck_argv", "uses_deepspeed",
    "load_split", "message_problem", "preference_to_conversational", "prepare_preference_dataset",
    "prepare_sft_dataset",
    "DEMO_CHAT_DIR", "ensure_demo_assets",
    "ForwardCounter",
    "complete_trainer_checkpoints", "config_file_of", "config_to_card_dict", "model_init_kwargs", "resolve_resume",
    "save_run_config", "train_and_save",
    "ROLES", "ZEPHYR_CHAT_TEMPLATE", "chat_template_from", "has_generation_markers", "prefix_mismatches",
    "set_pad_token", "setup_tokenizer",
]
