"""The model card of a chat model or adapter: YAML metadata for the Hub, then base model, data, recipe and
hyperparameters (TRL's card names only the first two), and the trainer mixin that writes it on save and push.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..utils import atomic_write_text
from ..utils import is_hub_id
from .methods import METHODS


CARD_HYPERPARAMETERS = (
    "learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size", "gradient_accumulation_steps",
    "lr_scheduler_type", "warmup_steps", "weight_decay", "optim", "max_length", "max_prompt_length", "packing",
    "packing_strategy", "assistant_only_loss", "beta", "loss_type", "cpo_alpha", "simpo_gamma", "desirable_weight",
    "undesirable_weight", "max_completion_length", "temperature", "bf16", "gradient_checkpointing", "seed",
    "use_peft", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "load_in_4bit",
    "bnb_4bit_quant_type", "use_bnb_nested_quant", "dtype",
)


def model_card_text(*, method: str, base_model: str, datasets: Sequence[str], config: dict, config_file: str | None,
                    adapter: bool, world_size: int = 1, metrics: dict | None = None, notes: str = "",
                    teacher: str | None = None) -> str:
    """README.md for a chat model or adapter: YAML metadata for the Hub, then base, data, recipe, hyperparameters.
    ``method``: a name of tinyllama/chat/methods.py (its title, recipe script and published recipe are named);
    ``teacher``: a distillation's teacher (named beside the base model)."""
    m = METHODS[method]
    import yaml
    from huggingface_hub import ModelCardData

    hub_datasets = [d for d in datasets if is_hub_id(d)]
    data = ModelCardData(
        base_model=base_model if is_hub_id(base_model) else None,
        datasets=hub_datasets or None,
        library_name="peft" if adapter else "transformers",
        license="apache-2.0",
        pipeline_tag="text-generation",
        tags=["tinyllama", "trl", m.name, "chat", *(["lora"] if adapter else [])],
    )
    batch = config.get("per_device_train_batch_size", 1) * config.get("gradient_accumulation_steps", 1) * world_size
    skip = set()
    if not config.get("use_peft"):
        skip |= {k for k in CARD_HYPERPARAMETERS if k.startswith("lora_")}
    if not config.get("load_in_4bit"):
        skip |= {"bnb_4bit_quant_type", "use_bnb_nested_quant", "load_in_4bit"}
    if not config.get("packing"):
        skip.add("packing_strategy")
    rows = [f"| {k} | {config[k]} |" for k in CARD_HYPERPARAMETERS
            if k in config and config[k] is not None and k not in skip]
    rows.append(f"| global batch (sequences) | {batch} |")
    what = "LoRA adapter" if adapter else "model"
    recipe = f"`{config_file}`" if config_file else "the recipe's command line"
    if m.teacher:
        loss = (f"the student sampled its own replies to the prompts and was trained towards the teacher's "
                f"next-token distribution on them (generalized Jensen-Shannon divergence, beta "
                f"{config.get('beta', 1.0)}: 0 is KL(teacher || student), 1 is KL(student || teacher)).")
    elif m.preference:
        loss = (f"{m.title} compared the chosen and rejected replies of each prompt"
                + (" (read as desirable and undesirable rows)" if m.data == "unpaired" else "")
                + f"; reference model: {m.reference}.")
    else:
        loss = "the loss was on assistant replies and their `</s>` only."
    lines = [
        "---", data.to_yaml(), "---", "",
        f"# {Path(str(config.get('output_dir', 'model'))).name}", "",
        f"A TinyLlama chat {what} trained with {m.title} ({m.script}, TRL), following {m.follows}.", "",
        f"- **Base model:** `{base_model}`",
        *([f"- **Teacher:** `{teacher}` (distilled from: its next-token distributions were the targets)"]
          if teacher else []),
        f"- **Data:** {', '.join(f'`{d}`' for d in datasets)}",
        f"- **Recipe:** {recipe}; the resolved configuration is in `config.yaml` beside this card.",
        "- **Chat template:** Zephyr (`<|system|>`, `<|user|>`, `<|assistant|>`, turns ended by `</s>`), saved with "
        "the tokenizer; " + loss,
    ]
    if adapter:
        lines.append("- **Use:** load with `peft.AutoPeftModelForCausalLM`, or merge into the base: "
                     "`python scripts/merge_lora.py <this folder> --output_dir <merged>`.")
    lines += ["", "## Hyperparameters", "", "| name | value |", "|---|---|", *rows, ""]
    metrics = {k: v for k, v in (metrics or {}).items()
               if not k.endswith(("_runtime", "_per_second", "num_tokens")) and k != "epoch"}
    if metrics:
        lines += ["## Results", "", "| metric | value |", "|---|---|",
                  *[f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()],
                  ""]
        if any(k.startswith("heldout/kl_") for k in metrics):
            lines += ["`heldout/kl_*`: on the evaluation split's conversations (their own replies, teacher-forced), "
                      "the mean per reply token of KL(teacher || student) and KL(student || teacher), in nats; "
                      "`_start`: the model it started from.", ""]
        elif any(k.startswith("heldout/") for k in metrics):
            lines += ["`heldout/*`: on the evaluation split's pairs, the mean log-probability per token of the chosen "
                      "reply minus the rejected one's, and the share of pairs where the chosen reply is the likelier, "
                      "the same measure for every method; `_start`: the model it started from.", ""]
    if notes:
        lines += [notes, ""]
    lines += ["## Chat", "", "```bash", "python scripts/chat.py <this folder or Hub id>", "```", ""]
    text = "\n".join(lines)
    yaml.safe_load(text.split("---")[1])  # the metadata block must stay valid YAML
    return text


class ChatModelCardMixin:
    """Replaces TRL's ``create_model_card`` (called on save and by ``push_to_hub``) with ours, so the card pushed
    to the Hub names the recipe and hyperparameters too."""

    card_info: dict | None = None

    def create_model_card(self, model_name=None, dataset_name=None, tags=None, **kwargs):
        if not self.is_world_process_zero() or not self.card_info:
            return
        metrics = {k: v for k, v in (self.card_info.get("metrics") or {}).items()}
        text = model_card_text(**{**self.card_info, "metrics": metrics, "world_size": self.args.world_size})
        atomic_write_text(Path(self.args.output_dir) / "README.md", text)
