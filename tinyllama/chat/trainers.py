"""The chat recipes' trainer class for a method: TRL's trainer (``tinyllama/chat/methods.py`` names it) with our model
card, and ``max_prompt_length``, which TRL >= 1.0 dropped from its configs (Zephyr's DPO used 512 of max_length 1024;
the SimPO and ORPO recipes 512 of 1024 and 1792 of 2048), and which its DistillationTrainer never had. Prompts
longer than that keep their last tokens (the latest turns and the generation prompt, which the reply must follow), as
TRL's former default truncation did.

Two ways, because TRL tokenizes in two ways:

- ``trl`` (SFT, DPO, KTO): TRL tokenizes the conversations into ``prompt_ids``; the prompts are cut after that.
- ``text`` (TRL's experimental ORPO and CPO/SimPO): TRL renders each row to text, then tokenizes the text and appends
  an EOS to a reply that does not end with one. The Zephyr template renders a reply as ``reply</s>\\n`` (the
  ``\\n`` belongs to the next turn), so TRL would train on ``reply</s>\\n</s>``: here each reply ends at its first
  EOS, which is exactly what SFT trained and what the chat command stops at. The prompt is cut first, then the reply
  to fit max_length (TRL would only cut the reply, to nothing when the prompt alone fills max_length).

And a third for distillation: TRL's DistillationTrainer tokenizes each prompt when the student samples its reply;
the prompt is cut there (``GeneratedReplies``).
"""

from __future__ import annotations

import sys

from .card import ChatModelCardMixin


class MaxPromptLength:
    """``max_prompt_length`` as a trainer argument, set before TRL's ``__init__`` prepares the datasets."""

    def __init__(self, *args, max_prompt_length: int | None = None, **kwargs):
        self.max_prompt_length = max_prompt_length
        super().__init__(*args, **kwargs)


class TokenizedPrompts(MaxPromptLength):
    """For trainers whose ``_prepare_dataset`` writes ``prompt_ids`` (DPO, KTO)."""

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        dataset = super()._prepare_dataset(dataset, processing_class, args, dataset_name)
        n = self.max_prompt_length
        if n is not None:
            dataset = dataset.map(lambda row: {"prompt_ids": row["prompt_ids"][-n:]},
                                  desc=f"Truncating {dataset_name} prompts to {n} tokens")
        return dataset


class TextRows(MaxPromptLength):
    """For TRL's experimental ORPO and CPO trainers, whose ``tokenize_row`` reads text rows (module docstring)."""

    def tokenize_row(self, feature, model=None) -> dict:
        eos = self.processing_class.eos_token
        feature = dict(feature)
        for side in ("chosen", "rejected"):
            if eos in feature[side]:
                feature[side] = feature[side][: feature[side].index(eos) + len(eos)]
        limit, self.max_length = self.max_length, sys.maxsize  # TRL cuts nothing; the prompt is cut first, below
        try:
            batch = super().tokenize_row(feature, model)
        finally:
            self.max_length = limit
        keep = self.max_prompt_length
        if keep is not None:
            for key in ("prompt_input_ids", "prompt_attention_mask"):
                batch[key] = batch[key][-keep:]
        for side in ("chosen", "rejected"):
            labels = batch[f"{side}_labels"]
            reply_start = next((i for i, t in enumerate(labels) if t != -100), len(labels))
            cut = max(0, reply_start - keep) if keep is not None else 0
            for key in ("input_ids", "attention_mask", "labels"):
                batch[f"{side}_{key}"] = batch[f"{side}_{key}"][cut:][:limit]
        return batch


class GeneratedReplies(MaxPromptLength):
    """For TRL's DistillationTrainer, which tokenizes the prompts when it samples the student's replies, and cuts
    none: without this a long multi-turn UltraChat prompt would be generated from, and scored by the teacher, whole."""

    def _tokenize_prompts(self, prompts: list):
        prompt_ids, images, multimodal_fields = super()._tokenize_prompts(prompts)
        n = self.max_prompt_length
        if n is not None:
            prompt_ids = [ids[-n:] for ids in prompt_ids]
        return prompt_ids, images, multimodal_fields


TOKENIZATION = {"trl": TokenizedPrompts, "text": TextRows}


def chat_trainer_class(method):
    """``Chat<TRL trainer>``: our model card, max_prompt_length for the preference and distillation methods, then
    TRL's trainer."""
    base = method.trainer_class()
    mixins = (ChatModelCardMixin,) + ((TOKENIZATION[method.tokenization],) if method.preference else
                                      (GeneratedReplies,) if method.teacher else ())
    return type(f"Chat{base.__name__}", (*mixins, base), {"__doc__": f"{base.__name__} in the chat recipes "
                                                                     f"(tinyllama/chat/trainers.py)."})
