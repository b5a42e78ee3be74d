"""Chat SFT, step 1 of TinyLlama-Chat v1.0: TRL's SFTTrainer on UltraChat-schema conversations.

    accelerate launch recipes/sft.py --config configs/chat/sft-ultrachat.yaml      # full fine-tune, the recipe
    python recipes/sft.py --config configs/chat/sft-lora.yaml                      # LoRA, one GPU
    python recipes/sft.py --config configs/chat/sft-qlora.yaml                     # QLoRA (4-bit NF4), one GPU
    python recipes/sft.py --config configs/chat/sft-demo.yaml                      # CPU demo, no network

One YAML holds the script (data), trainer (``trl.SFTConfig``) and model (``trl.ModelConfig``) arguments; any key
can be overridden with ``--key value``; an unknown key fails before anything is loaded. ``--help`` lists them all.
Resume: ``--resume_from_checkpoint last`` (newest checkpoint in output_dir) or a checkpoint folder; works for full
and LoRA runs.

The flow is the one every chat method shares (tinyllama/chat/recipe.py: check the arguments, the tokenizer with the
Zephyr template, the data checked row by row, TRL's trainer, then train, save, card, summary.json, push);
``recipes/chat.py`` runs the same flow for any method.
"""

from __future__ import annotations

from tinyllama import chat
from tinyllama.utils import entry_point


def build_trainer(script_args, training_args, model_args, config_file: str | None = None):
    return chat.build_trainer("sft", script_args, training_args, model_args, config_file)


@entry_point
def main(argv: list[str] | None = None) -> dict:
    return chat.run_recipe(argv, "sft")


if __name__ == "__main__":
    main()
