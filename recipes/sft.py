"""Chat SFT, step 1 of TinyLlama-Chat v1.0: TRL's SFTTrainer on UltraChat-schema conversations.

    accelerate launch recipes/sft.py --config configs/chat/sft-ultrachat.yaml      # full fine-tune, the recipe
    python recipes/sft.py --config configs/chat/sft-lora.yaml                      # LoRA, one GPU
    python recipes/sft.py --config configs/chat/sft-qlora.yaml                     # QLoRA (4-bit NF4), one GPU
    python recipes/sft.py --config configs/chat/sft-demo.yaml                      # CPU demo, no network

One YAML holds the script (data), trainer (``trl.SFTConfig``) and model (``trl.ModelConfig``) arguments; any key
can be overridden with ``--key value``; an unknown key fails before anything is loaded. ``--help`` lists them all.
Resume: ``--resume_from_checkpoint last`` (newest checkpoint in output_dir) or a checkpoint folder; works for full
and LoRA runs.
"""

from __future__ import annotations

import logging
import sys

from trl import SFTTrainer, get_peft_config, get_quantization_config

from tinyllama import chat
from tinyllama.chat.args import parse_sft_args
from tinyllama.utils import complete_cpu_launch, entry_point, setup_logging

log = logging.getLogger("recipes.sft")


class ChatSFTTrainer(chat.ChatModelCardMixin, SFTTrainer):
    """SFTTrainer whose model card (README.md, also what push_to_hub uploads) names recipe and hyperparameters."""


def check_args(script_args, training_args, model_args) -> None:
    """Mistakes that would otherwise surface after the model is loaded, or never."""
    chat.check_quantization(model_args)
    chat.check_precision(model_args, training_args)
    chat.ensure_demo_assets(model_args.model_name_or_path, script_args.dataset_name,
                            script_args.tokenizer_name_or_path)
    chat.check_model_source(model_args.model_name_or_path)
    template = chat.chat_template_from(script_args.chat_template)
    if training_args.assistant_only_loss and template is not None and not chat.has_generation_markers(template):
        raise ValueError(f"chat_template {script_args.chat_template}: assistant_only_loss needs "
                         "{% generation %}...{% endgeneration %} around the assistant replies (and their EOS)")
    if not training_args.assistant_only_loss:
        log.warning("assistant_only_loss is false: the loss includes system and user turns")


def build_trainer(script_args, training_args, model_args, config_file: str | None = None) -> ChatSFTTrainer:
    check_args(script_args, training_args, model_args)
    tokenizer = chat.setup_tokenizer(
        script_args.tokenizer_name_or_path or model_args.model_name_or_path,
        chat_template=script_args.chat_template, revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
    )
    name = script_args.dataset_name
    train = chat.prepare_sft_dataset(
        chat.load_split(name, script_args.dataset_config, script_args.dataset_train_split),
        name, script_args.dataset_train_split, script_args.max_train_samples)
    evaluation = None
    if training_args.eval_strategy != "no":
        evaluation = chat.prepare_sft_dataset(
            chat.load_split(name, script_args.dataset_config, script_args.dataset_test_split),
            name, script_args.dataset_test_split, script_args.max_eval_samples)
    bad = chat.prefix_mismatches(tokenizer, train["messages"][:64])
    if bad:
        log.warning("%d of the first %d conversations tokenize differently at the assistant boundary in training "
                    "and at inference (rows %s); the model is prompted with tokens it was not trained on there",
                    len(bad), min(64, len(train)), bad[:10])

    training_args.model_init_kwargs = chat.model_init_kwargs(model_args, training_args)
    trainer = ChatSFTTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
        quantization_config=get_quantization_config(model_args),
    )
    config = chat.config_to_card_dict(script_args, training_args, model_args)
    trainer.card_info = dict(stage="SFT", base_model=model_args.model_name_or_path, datasets=[name], config=config,
                             config_file=config_file, adapter=model_args.use_peft)
    return trainer


@entry_point
def main(argv: list[str] | None = None) -> dict:
    complete_cpu_launch()  # before anything reads the distributed setup
    argv = sys.argv[1:] if argv is None else list(argv)
    chat.precheck_argv(argv)
    script_args, training_args, model_args = parse_sft_args(argv)
    setup_logging(main_process=training_args.process_index == 0)
    resume = chat.resolve_resume(training_args.resume_from_checkpoint, training_args.output_dir)
    trainer = build_trainer(script_args, training_args, model_args, chat.config_file_of(argv))
    return chat.train_and_save(trainer, resume, script_args, training_args, model_args)


if __name__ == "__main__":
    main()
