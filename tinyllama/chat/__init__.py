"""Chat fine-tuning pieces shared by the chat recipes (``recipes/sft.py``, ``dpo.py``, ``chat.py``),
``scripts/chat.py`` and ``scripts/merge_lora.py``.

TinyLlama-1.1B-Chat-v1.0 is the alignment-handbook's Zephyr recipe (docs/reference.md, "Chat models"): SFT on
``HuggingFaceH4/ultrachat_200k``, then DPO on ``HuggingFaceH4/ultrafeedback_binarized``, with the Zephyr chat
template. TRL does the training; this package is what TRL leaves to the scripts:

- ``methods.py``: the chat methods (SFT, DPO, ORPO, SimPO, KTO, distillation), one entry each: TRL trainer and
  config, data, recipe; the recipes, the pipeline and the card read it;
- ``recipe.py``: the one chat recipe (checks, tokenizer, data, the method's trainer, train, save, card, push,
  ``summary.json``), the ``from_pretrained`` arguments and resume;
- ``trainers.py``: the method's trainer class (our card; ``max_prompt_length``, which TRL dropped);
- ``measure.py``: the held-out preference measure, the same for every preference method, and distillation's
  held-out KL to the teacher;
- ``template.py``: the one chat template (training and inference) and the tokenizer setup (pad distinct from EOS);
- ``datasets.py``: loading a split and checking every row, with messages naming dataset, split and row;
- ``checks.py``: early checks of the model arguments (QLoRA without CUDA, an adapter where a model is needed, bf16
  weights for a full fine-tune, a Hub token in a config) and what a name is (local path or Hub id);
- ``card.py``: the model card (base model, data, recipe, hyperparameters; TRL's names only the first two);
- ``demo_data.py``: the CPU demo's chat and preference data sets and tiny base model, built on first use;
- ``inference.py``: what the chat script and the inference benchmark share;
- ``args.py``: the recipes' argument dataclasses. It imports TRL, so it is not re-exported here:
  ``from tinyllama.chat.args import parse_sft_args``.

Importing the package imports none of torch, transformers, datasets or TRL (scripts/chat.py starts fast); the
names below are re-exported so that ``from tinyllama.chat import setup_tokenizer`` works.
"""

from __future__ import annotations

from .card import CARD_HYPERPARAMETERS, ChatModelCardMixin, model_card_text
from .checks import (HALF_DTYPES, check_model_source, check_precision, check_quantization, check_teacher_vocabulary,
                     is_adapter_dir, precheck_argv, uses_deepspeed)
from .datasets import (conversation_to_prompt, load_split, message_problem, preference_to_conversational,
                       prepare_preference_dataset, prepare_prompt_dataset, prepare_sft_dataset,
                       prepare_unpaired_dataset)
from .demo_data import DEMO_CHAT_DIR, ensure_demo_assets
from .inference import ForwardCounter
from .measure import heldout_distillation, heldout_preference, reply_token_ids
from .methods import DATA_KINDS, METHODS, PREFERENCE_METHODS, ChatMethod, get_method
from .recipe import (build_trainer, check_args, complete_trainer_checkpoints, config_file_of, config_to_card_dict,
                     heldout_metrics, model_init_kwargs, reference_model, resolve_resume, run_recipe, save_run_config,
                     teacher_model, train_and_save)
from .trainers import chat_trainer_class
from .template import (ROLES, ZEPHYR_CHAT_TEMPLATE, chat_template_from, has_generation_markers, prefix_mismatches,
                       set_pad_token, setup_tokenizer)

__all__ = [
    "CARD_HYPERPARAMETERS", "ChatModelCardMixin", "model_card_text",
    "HALF_DTYPES", "check_model_source", "check_precision", "check_quantization", "check_teacher_vocabulary",
    "is_adapter_dir", "precheck_argv", "uses_deepspeed",
    "conversation_to_prompt", "load_split", "message_problem", "preference_to_conversational",
    "prepare_preference_dataset", "prepare_prompt_dataset", "prepare_sft_dataset", "prepare_unpaired_dataset",
    "DEMO_CHAT_DIR", "ensure_demo_assets",
    "ForwardCounter",
    "heldout_distillation", "heldout_preference", "reply_token_ids",
    "DATA_KINDS", "METHODS", "PREFERENCE_METHODS", "ChatMethod", "get_method",
    "build_trainer", "check_args", "complete_trainer_checkpoints", "config_file_of", "config_to_card_dict",
    "heldout_metrics", "model_init_kwargs", "reference_model", "resolve_resume", "run_recipe", "save_run_config",
    "teacher_model", "train_and_save",
    "chat_trainer_class",
    "ROLES", "ZEPHYR_CHAT_TEMPLATE", "chat_template_from", "has_generation_markers", "prefix_mismatches",
    "set_pad_token", "setup_tokenizer",
]
