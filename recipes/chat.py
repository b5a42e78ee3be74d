"""Any chat method (tinyllama/chat/methods.py): SFT, DPO, ORPO, SimPO, KTO, distillation, each TRL's trainer, named by
the config's ``method:``.

    python recipes/chat.py --config configs/chat/orpo-demo.yaml                      # CPU demo (after sft-demo)
    accelerate launch recipes/chat.py --config configs/chat/orpo-ultrafeedback.yaml  # ORPO, full, from the base
    accelerate launch recipes/chat.py --config configs/chat/simpo-ultrafeedback.yaml # SimPO, full, from the SFT model
    accelerate launch recipes/chat.py --config configs/chat/kto-ultrafeedback.yaml   # KTO, full, from the SFT model
    python recipes/chat.py --config configs/chat/kto-lora.yaml                       # LoRA variants, one GPU
    accelerate launch recipes/chat.py --config configs/chat/distill-ultrachat.yaml # distillation from a 7B teacher

One YAML holds the script (data), trainer (the method's TRL config: ``ORPOConfig``, ``CPOConfig``, ``KTOConfig`` ...)
and model (``trl.ModelConfig``) arguments; ``--key value`` overrides any of them, and an unknown key fails before
anything is loaded (``--method orpo --help`` lists them all). The flow (tinyllama/chat/recipe.py): check the
arguments, the tokenizer and its chat template (``chat_template: tokenizer``: the start model's, as SFT saved it),
the data checked row by row (UltraFeedback-binarized pairs; KTO reads each pair as a desirable and an undesirable
row), the method's trainer, then train, save, model card, ``summary.json`` (with the held-out preference measure of
tinyllama/chat/measure.py before and after), push. Resume with ``--resume_from_checkpoint last``.
"""

from __future__ import annotations

from tinyllama import chat
from tinyllama.utils import entry_point


@entry_point
def main(argv: list[str] | None = None) -> dict:
    return chat.run_recipe(argv)


if __name__ == "__main__":
    main()
