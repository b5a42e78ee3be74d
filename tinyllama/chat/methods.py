"""The chat methods: one entry per way of fine-tuning a chat model, read by the recipes (``recipes/sft.py``,
``dpo.py`` and ``chat.py``), the pipeline (``recipe:`` names and ``--with-chat METHOD``), the model card and the
pipeline's summary. Each entry says which TRL trainer and config class run the method, what data it reads and how
the recipe treats it; the flow around the trainer is the same for all (``tinyllama/chat/recipe.py``).

Adding a method: one entry below, one config ``configs/chat/<name>-*.yaml`` with ``method: <name>``, and its
test (docs/architecture.md, "A chat method"). The names are strings, so importing this module imports neither TRL
nor torch (the pipeline and ``scripts/chat.py`` read it).
"""

from __future__ import annotations

import dataclasses
import importlib

# The data a method reads: the schema of its rows and the script arguments that go with it (tinyllama/chat/args.py)
DATA_KINDS = {
    "chat": "UltraChat's schema: `messages` (system/user/assistant turns)",
    "pairs": "UltraFeedback-binarized's schema: `chosen` / `rejected` conversations with the same prompt",
    "unpaired": "UltraFeedback-binarized pairs, each read as two rows: (prompt, chosen, desirable) and "
                "(prompt, rejected, undesirable), shuffled with the run's seed",
    "prompts": "UltraChat's schema, read as prompts: each conversation up to its last user turn (the student writes "
               "the reply; the dataset's own last reply is kept for the held-out measure only)",
}


@dataclasses.dataclass(frozen=True)
class ChatMethod:
    name: str  # the config's `method:`, the pipeline's `recipe:`, configs/chat/<name>-*.yaml
    title: str  # the card's "trained with <title>"
    trainer: str  # the TRL trainer, "module:Class" (imported when a run starts)
    config: str  # its arguments dataclass (TRL's, or ours over TRL's), "module:Class"
    data: str  # a key of DATA_KINDS
    reference: str  # what the loss compares the policy with: "none", "a frozen copy of the start", "the teacher ..."
    script: str  # the recipe that runs it (recipes/chat.py runs every method)
    follows: str  # the published recipe its full config follows (the card names it)
    paper: str
    # Values the method is defined by: a config that sets another is refused before anything loads
    fixed: tuple[tuple[str, object], ...] = ()
    # "trl": TRL tokenizes the conversations. "text": TRL's experimental ORPO/CPO trainers take text rows, so the
    # recipe ends each reply at its EOS and applies max_prompt_length itself (tinyllama/chat/trainers.py)
    tokenization: str = "trl"
    takes_quantization_config: bool = True  # else a QLoRA config goes through from_pretrained's kwargs

    @property
    def preference(self) -> bool:
        return self.data in ("pairs", "unpaired")

    @property
    def teacher(self) -> bool:
        """A distillation method: it reads ``teacher_model_name_or_path`` (tinyllama/chat/recipe.py, teacher_model)."""
        return self.data == "prompts"

    def trainer_class(self):
        return _load(self.trainer)

    def config_class(self):
        return _load(self.config)


def _load(path: str):
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


METHODS: dict[str, ChatMethod] = {m.name: m for m in [
    ChatMethod(
        name="sft", title="SFT", trainer="trl:SFTTrainer", config="tinyllama.chat.args:ChatSFTConfig", data="chat",
        reference="none", script="recipes/sft.py",
        follows="the recipe of TinyLlama-1.1B-Chat-v1.0 (the alignment-handbook's Zephyr recipe)",
        paper="supervised fine-tuning"),
    ChatMethod(
        name="dpo", title="DPO", trainer="trl:DPOTrainer", config="trl:DPOConfig", data="pairs",
        reference="a frozen copy of the start (LoRA: the start with the adapter off)", script="recipes/dpo.py",
        follows="the recipe of TinyLlama-1.1B-Chat-v1.0 (the alignment-handbook's Zephyr recipe)",
        paper="Rafailov et al. 2023, arXiv:2305.18290"),
    ChatMethod(
        name="orpo", title="ORPO", trainer="trl.experimental.orpo:ORPOTrainer",
        config="trl.experimental.orpo:ORPOConfig", data="pairs", reference="none", script="recipes/chat.py",
        follows="the alignment-handbook's ORPO recipe (recipes/zephyr-141b-A35b/orpo/config_full.yaml)",
        paper="Hong et al. 2024, arXiv:2403.07691", tokenization="text", takes_quantization_config=False),
    ChatMethod(
        name="simpo", title="SimPO", trainer="trl.experimental.cpo:CPOTrainer",
        config="trl.experimental.cpo:CPOConfig", data="pairs", reference="none", script="recipes/chat.py",
        follows="the SimPO authors' Mistral-7B-Base recipe (princeton-nlp/SimPO, "
                "training_configs/mistral-7b-base-simpo.yaml)",
        paper="Meng et al. 2024, arXiv:2405.14734",
        # SimPO is TRL's CPO with the SimPO loss and no behaviour-cloning term (CPO's default cpo_alpha is 1.0)
        fixed=(("loss_type", "simpo"), ("cpo_alpha", 0.0)), tokenization="text", takes_quantization_config=False),
    ChatMethod(
        name="kto", title="KTO", trainer="trl:KTOTrainer", config="trl:KTOConfig", data="unpaired",
        reference="a frozen copy of the start (LoRA: the start with the adapter off)", script="recipes/chat.py",
        follows="the KTO authors' release (ContextualAI/HALOs as published with the paper: config.yaml, "
                "loss/kto.yaml, model/base_model.yaml)",
        paper="Ethayarajh et al. 2024, arXiv:2402.01306"),
    ChatMethod(
        # TRL's stable DistillationTrainer (on-policy: the student samples the replies, the loss is a generalized JSD
        # to the teacher's next-token distribution on them); GKD (trl.experimental.gkd) is the same loss with a mix of
        # off-policy rows, and TRL itself points GKD users here (docs/chat.md, "Distillation")
        name="distill", title="distillation", trainer="trl:DistillationTrainer",
        config="trl:DistillationConfig", data="prompts",
        reference="the teacher (teacher_model_name_or_path: same tokenizer, frozen, in the precision the student "
                  "computes in)", script="recipes/chat.py",
        follows="on-policy distillation (Agarwal et al. 2024: the student's own samples, the teacher's "
                "distributions as targets) as TRL's DistillationTrainer runs it",
        paper="Agarwal et al. 2024, arXiv:2306.13649"),
]}
PREFERENCE_METHODS = [name for name, m in METHODS.items() if m.preference]


def get_method(name: str | None) -> ChatMethod:
    if name not in METHODS:
        import difflib

        close = difflib.get_close_matches(str(name), list(METHODS), n=1)
        raise ValueError(f"method {name!r} is not a chat method: choose one of {', '.join(METHODS)}"
                         + (f" (did you mean {close[0]!r}?)" if close else ""))
    return METHODS[name]
