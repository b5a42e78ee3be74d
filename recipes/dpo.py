"""Chat DPO, step 2 of TinyLlama-Chat v1.0: TRL's DPOTrainer on UltraFeedback-binarized-schema preferences,
starting from the SFT model.

    accelerate launch recipes/dpo.py --config configs/chat/dpo-ultrafeedback.yaml   # full, the recipe
    python recipes/dpo.py --config configs/chat/dpo-lora.yaml                       # LoRA, one GPU
    python recipes/dpo.py --config configs/chat/dpo-demo.yaml                       # CPU demo (after sft-demo)

The reference model is the starting model: a frozen copy for full DPO, the same weights with the adapter disabled
for LoRA. A LoRA SFT adapter is refused as a start: merge it first (scripts/merge_lora.py), so the policy and the
reference both start from the SFT weights. The chat template is the starting model's, saved there by the SFT
recipe (``chat_template: tokenizer``, the default here), so DPO formats exactly as SFT did. Resume with ``--resume_from_checkpoint last``.
"""

from __future__ import annotations

import logging
import sys

from trl import DPOTrainer, get_peft_config, get_quantization_config

from tinyllama import chat
from tinyllama.chat.args import parse_dpo_args
from tinyllama.utils import complete_cpu_launch, entry_point, setup_logging

log = logging.getLogger("recipes.dpo")


class ChatDPOTrainer(chat.ChatModelCardMixin, DPOTrainer):
    """DPOTrainer with our model card, and ``max_prompt_length``.

    TRL >= 1.0 has no ``max_prompt_length``; Zephyr's DPO used 512 (of max_length 1024). Written here: after TRL
    tokenizes, prompts longer than that keep their last ``max_prompt_length`` tokens (the latest turns and the
    generation prompt, which the reply must follow), as TRL's former default truncation did.
    """

    def __init__(self, *args, max_prompt_length: int | None = None, **kwargs):
        self.max_prompt_length = max_prompt_length  # before super().__init__, which prepares the datasets
        super().__init__(*args, **kwargs)

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        dataset = super()._prepare_dataset(dataset, processing_class, args, dataset_name)
        n = self.max_prompt_length
        if n is not None:
            dataset = dataset.map(lambda row: {"prompt_ids": row["prompt_ids"][-n:]},
                                  desc=f"Truncating {dataset_name} prompts to {n} tokens")
        return dataset


def check_args(script_args, training_args, model_args) -> None:
    chat.check_quantization(model_args)
    chat.check_precision(model_args, training_args)
    chat.ensure_demo_assets(model_args.model_name_or_path, script_args.dataset_name,
                            script_args.tokenizer_name_or_path)
    chat.check_model_source(model_args.model_name_or_path)
    if (script_args.max_prompt_length is not None and training_args.max_length is not None
            and script_args.max_prompt_length >= training_args.max_length):
        raise ValueError(f"max_prompt_length ({script_args.max_prompt_length}) must be below max_length "
                         f"({training_args.max_length}), or no reply token is left")


def reference_model(training_args, model_args):
    """Full DPO's frozen reference, loaded in the precision the policy computes in (bf16 with ``bf16: true``). TRL
    would load it with the policy's ``model_init_kwargs``: fp32 master weights, 2.2 GB more on the 1.1B model, which
    bf16 autocast rounds at every matmul anyway. None where TRL loads none: LoRA (the adapter switched off) and
    ``precompute_ref_log_probs`` (the reference log-probs are computed once, before training); and without mixed
    precision (the reference is then the policy's dtype, as in TRL)."""
    import torch
    from trl.trainer.utils import create_model_from_path

    compute = torch.bfloat16 if training_args.bf16 else torch.float16 if training_args.fp16 else None
    if model_args.use_peft or training_args.precompute_ref_log_probs or compute is None:
        return None
    kwargs = {**training_args.model_init_kwargs, "dtype": compute}
    if training_args.distributed_state.distributed_type in ("MULTI_GPU", "DEEPSPEED"):
        kwargs["device_map"] = None  # (as TRL does: "auto" fails in distributed training)
    return create_model_from_path(model_args.model_name_or_path, **kwargs)


def build_trainer(script_args, training_args, model_args, config_file: str | None = None) -> ChatDPOTrainer:
    check_args(script_args, training_args, model_args)
    tokenizer = chat.setup_tokenizer(
        script_args.tokenizer_name_or_path or model_args.model_name_or_path,
        chat_template=script_args.chat_template, revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
    )
    name = script_args.dataset_name
    train = chat.prepare_preference_dataset(
        chat.load_split(name, script_args.dataset_config, script_args.dataset_train_split),
        name, script_args.dataset_train_split, script_args.max_train_samples)
    evaluation = None
    if training_args.eval_strategy != "no":
        evaluation = chat.prepare_preference_dataset(
            chat.load_split(name, script_args.dataset_config, script_args.dataset_test_split),
            name, script_args.dataset_test_split, script_args.max_eval_samples)
    head = train.select(range(min(64, len(train))))
    bad = chat.prefix_mismatches(tokenizer, (r["prompt"] + r["chosen"] for r in head))
    if bad:
        log.warning("%d of the first %d prompts tokenize differently at the assistant boundary in training and at "
                    "inference (rows %s)", len(bad), min(64, len(train)), bad[:10])

    training_args.model_init_kwargs = chat.model_init_kwargs(model_args, training_args)
    trainer = ChatDPOTrainer(
        model=model_args.model_name_or_path,
        ref_model=reference_model(training_args, model_args),
        args=training_args,
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
        quantization_config=get_quantization_config(model_args),
        max_prompt_length=script_args.max_prompt_length,
    )
    config = chat.config_to_card_dict(script_args, training_args, model_args)
    trainer.card_info = dict(stage="DPO", base_model=model_args.model_name_or_path, datasets=[name], config=config,
                             config_file=config_file, adapter=model_args.use_peft)
    return trainer


@entry_point
def main(argv: list[str] | None = None) -> dict:
    complete_cpu_launch()  # before anything reads the distributed setup
    argv = sys.argv[1:] if argv is None else list(argv)
    chat.precheck_argv(argv)
    script_args, training_args, model_args = parse_dpo_args(argv)
    setup_logging(main_process=training_args.process_index == 0)
    resume = chat.resolve_resume(training_args.resume_from_checkpoint, training_args.output_dir)
    trainer = build_trainer(script_args, training_args, model_args, chat.config_file_of(argv))
    return chat.train_and_save(trainer, resume, script_args, training_args, model_args)


if __name__ == "__main__":
    main()
