"""Chat DPO, step 2 of TinyLlama-Chat v1.0: TRL's DPOTrainer on UltraFeedback-binarized-schema preferences,
starting from the SFT model.

    accelerate launch recipes/dpo.py --config configs/chat/dpo-ultrafeedback.yaml   # full, the recipe
    python recipes/dpo.py --config configs/chat/dpo-lora.yaml                       # LoRA, one GPU
    python recipes/dpo.py --config configs/chat/dpo-demo.yaml                       # CPU demo (after sft-demo)

The reference model is the starting model: a frozen copy for full DPO, the same weights with the adapter disabled
for LoRA. A LoRA SFT adapter is refused as a start: merge it first (scripts/merge_lora.py), so the policy and the
reference both start from the SFT weights. The chat template is the starting model's, saved there by the SFT
recipe (``chat_template: tokenizer``, the default here), so DPO formats exactly as SFT did. ``max_prompt_length``
(gone from TRL >= 1.0) keeps the last N prompt tokens (tinyllama/chat/trainers.py). Resume with
``--resume_from_checkpoint last``.

The flow is the one every chat method shares (tinyllama/chat/recipe.py); ``recipes/chat.py`` runs it for any method
(ORPO, SimPO, KTO: docs/chat.md).
"""

from __future__ import annotations

from tinyllama import chat
from tinyllama.utils import entry_point


def build_trainer(script_args, training_args, model_args, config_file: str | None = None):
    return chat.build_trainer("dpo", script_args, training_args, model_args, config_file)


@entry_point
def main(argv: list[str] | None = None) -> dict:
    return chat.run_recipe(argv, "dpo")


if __name__ == "__main__":
    main()
