"""The chat recipe, the same for every method (``tinyllama/chat/methods.py``): check the arguments, set up the
tokenizer, load and check the data, build the method's TRL trainer (:func:`build_trainer`), then train and save the
model with its tokenizer and chat template, ``config.yaml``, the model card and ``summary.json``, and push
(:func:`train_and_save`). :func:`run_recipe` is all of it; ``recipes/sft.py``, ``dpo.py`` and ``chat.py`` call it.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Sequence

from ..utils import atomic_write_text, complete_cpu_launch, setup_logging
from .checks import (check_model_source, check_precision, check_quantization, check_teacher_vocabulary, is_adapter_dir,
                     precheck_argv)
from .datasets import (load_split, prepare_preference_dataset, prepare_prompt_dataset, prepare_sft_dataset,
                       prepare_unpaired_dataset)
from .demo_data import ensure_demo_assets
from .methods import ChatMethod, get_method
from .template import chat_template_from, has_generation_markers, prefix_mismatches, setup_tokenizer

log = logging.getLogger(__name__)


def complete_trainer_checkpoints(output_dir: str | Path) -> list[Path]:
    """``checkpoint-N`` folders by step whose ``trainer_state.json`` (the Trainer writes it last) is whole: a run killed
    while saving leaves a folder with weights but no state, which must never be resumed from."""
    found = []
    if Path(output_dir).is_dir():
        for p in Path(output_dir).iterdir():
            m = re.fullmatch(r"checkpoint-(\d+)", p.name)
            if not (m and p.is_dir() and (p / "trainer_state.json").is_file()):
                continue
            try:
                json.loads((p / "trainer_state.json").read_text())
            except ValueError:
                continue
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def resolve_resume(value: str | None, output_dir: str) -> str | bool | None:
    """``resume_from_checkpoint``: a checkpoint folder, or ``last`` for the newest one in ``output_dir``."""
    if value in (None, "", "false", "False", "no"):
        return None
    if value in ("last", "true", "True", "yes"):
        found = complete_trainer_checkpoints(output_dir)
        if not found:
            raise FileNotFoundError(f"resume_from_checkpoint: last: no checkpoint-* folder with a complete trainer_state.json in "
                                    f"{output_dir}")
        return str(found[-1])
    if not Path(value).is_dir():
        raise FileNotFoundError(f"resume_from_checkpoint: checkpoint folder not found: {value}")
    return value


def model_init_kwargs(model_args, training_args) -> dict:
    """Keyword arguments for ``from_pretrained`` (TRL loads the model from them), attention resolved once."""
    from trl import get_quantization_config

    from ..model import resolve_attn_implementation

    kwargs = dict(
        revision=model_args.model_revision,
        dtype=model_args.dtype,
        attn_implementation=resolve_attn_implementation(model_args.attn_implementation or "auto"),
        trust_remote_code=training_args.trust_remote_code,
    )
    quantization = get_quantization_config(model_args)
    if quantization is not None:
        from accelerate import PartialState

        # each process loads its quantized copy onto its own GPU (device_map="auto" would spread it over all)
        kwargs["device_map"] = {"": PartialState().local_process_index}
    kwargs.update(training_args.model_init_kwargs or {})
    return kwargs


def save_run_config(output_dir: str | os.PathLike, *instances, extra: dict | None = None) -> dict:
    """``config.yaml`` beside the model: the resolved configuration, secrets dropped (config_to_dict)."""
    import yaml

    from ..config import config_to_dict

    resolved = config_to_dict(*instances)
    resolved.update(extra or {})
    atomic_write_text(Path(output_dir) / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))
    return resolved


def config_to_card_dict(*instances) -> dict:
    from ..config import config_to_dict

    return config_to_dict(*instances)


def config_file_of(argv: Sequence[str]) -> str | None:
    from ..config import split_cli

    return split_cli(argv)[0]


def check_args(method: ChatMethod, script_args, training_args, model_args) -> None:
    """Mistakes that would otherwise surface after the model is loaded, or never: the method's arguments first,
    then the model's (quantization, precision, the start model; a distillation method's teacher and its vocabulary),
    building the demo's assets when they are named."""
    if method.preference:
        n, length = script_args.max_prompt_length, training_args.max_length
        if n is not None and length is not None and n >= length:
            raise ValueError(f"max_prompt_length ({n}) must be below max_length ({length}), or no reply token is left")
        if method.tokenization == "text" and n is None:
            raise ValueError(f"method {method.name}: set max_prompt_length (below max_length): TRL's {method.title} "
                             "would otherwise cut only the reply, to nothing when a prompt alone fills max_length")
        if method.data == "unpaired" and training_args.per_device_train_batch_size < 2:
            raise ValueError(f"method {method.name}: per_device_train_batch_size must be >= 2: KTO estimates its KL "
                             "term from the other rows of each batch")
    teacher = getattr(training_args, "teacher_model_name_or_path", None) if method.teacher else None
    if method.teacher and not teacher:
        raise ValueError(f"method {method.name} needs teacher_model_name_or_path: a model folder or Hub id with the "
                         "student's tokenizer (e.g. meta-llama/Llama-2-7b-chat-hf for TinyLlama)")
    check_quantization(model_args)
    check_precision(model_args, training_args)
    ensure_demo_assets(model_args.model_name_or_path, script_args.dataset_name, script_args.tokenizer_name_or_path,
                       teacher)
    check_model_source(model_args.model_name_or_path)
    if teacher:
        check_model_source(teacher, "teacher_model_name_or_path")
        check_teacher_vocabulary(teacher, model_args.model_name_or_path, script_args.tokenizer_name_or_path,
                                 teacher_revision=training_args.teacher_model_revision,
                                 revision=model_args.model_revision,
                                 trust_remote_code=training_args.trust_remote_code)
    if method.data == "chat":
        template = chat_template_from(script_args.chat_template)
        if training_args.assistant_only_loss and template is not None and not has_generation_markers(template):
            raise ValueError(f"chat_template {script_args.chat_template}: assistant_only_loss needs "
                             "{% generation %}...{% endgeneration %} around the assistant replies (and their EOS)")
        if not training_args.assistant_only_loss:
            log.warning("assistant_only_loss is false: the loss includes system and user turns")


def _split(method: ChatMethod, script_args, training_args, split: str, max_samples: int | None):
    name = script_args.dataset_name
    rows = load_split(name, script_args.dataset_config, split)
    if method.data == "chat":
        return prepare_sft_dataset(rows, name, split, max_samples)
    if method.data == "unpaired":
        return prepare_unpaired_dataset(rows, name, split, max_samples, seed=training_args.seed)
    if method.data == "prompts":
        return prepare_prompt_dataset(rows, name, split, max_samples)
    return prepare_preference_dataset(rows, name, split, max_samples)


def build_trainer(method: ChatMethod | str, script_args, training_args, model_args, config_file: str | None = None):
    """The method's TRL trainer (with our card, and max_prompt_length for the preference and distillation methods),
    its data loaded and checked, the model loaded by TRL from ``model_init_kwargs`` (a distillation method's teacher
    by :func:`teacher_model`)."""
    from trl import get_peft_config, get_quantization_config

    from .trainers import chat_trainer_class

    method = get_method(method) if isinstance(method, str) else method
    check_args(method, script_args, training_args, model_args)
    tokenizer = setup_tokenizer(
        script_args.tokenizer_name_or_path or model_args.model_name_or_path,
        chat_template=script_args.chat_template, revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
    )
    train = _split(method, script_args, training_args, script_args.dataset_train_split,
                   script_args.max_train_samples)
    evaluation = heldout = heldout_conversations = None
    if training_args.eval_strategy != "no":
        evaluation = _split(method, script_args, training_args, script_args.dataset_test_split,
                            script_args.max_eval_samples)
        if method.preference:  # the held-out pairs of tinyllama/chat/measure.py (KTO's rows are unpaired)
            heldout = evaluation if method.data == "pairs" else _split(
                get_method("dpo"), script_args, training_args, script_args.dataset_test_split,
                script_args.max_eval_samples)
        if method.teacher:  # the held-out conversations of tinyllama/chat/measure.py, heldout_distillation
            heldout_conversations = evaluation
    head = train.select(range(min(64, len(train))))
    conversations = head["messages"] if method.data == "chat" else (
        r["prompt"] + r.get("chosen", r.get("completion")) for r in head)
    bad = prefix_mismatches(tokenizer, conversations)
    if bad:
        log.warning("%d of the first %d conversations tokenize differently at the assistant boundary in training "
                    "and at inference (rows %s); the model is prompted with tokens it was not trained on there",
                    len(bad), len(head), bad[:10])

    init_kwargs = model_init_kwargs(model_args, training_args)
    quantization = get_quantization_config(model_args)
    kwargs = dict(model=model_args.model_name_or_path, args=training_args, train_dataset=train,
                  eval_dataset=evaluation, processing_class=tokenizer, peft_config=get_peft_config(model_args))
    if method.preference or method.teacher:
        kwargs["max_prompt_length"] = script_args.max_prompt_length
    if method.takes_quantization_config:
        kwargs["quantization_config"] = quantization
    else:
        # TRL's experimental ORPO/CPO load the model themselves from model_init_kwargs only, with device_map "auto"
        # unless one is given: None keeps each process's copy whole (accelerate places it)
        init_kwargs = {"device_map": None, **init_kwargs,
                       **({"quantization_config": quantization} if quantization is not None else {})}
    training_args.model_init_kwargs = init_kwargs
    # DPO, KTO: a frozen copy of the start, in the precision the policy computes in
    if method.reference != "none" and not method.teacher:
        kwargs["ref_model"] = reference_model(training_args, model_args)
    teacher_kwargs = None
    if method.teacher:
        kwargs["teacher_model"] = teacher_model(training_args, model_args)
        # TRL refuses teacher_model_init_kwargs beside a loaded teacher; teacher_model() has used them
        teacher_kwargs, training_args.teacher_model_init_kwargs = training_args.teacher_model_init_kwargs, None
    try:
        trainer = chat_trainer_class(method)(**kwargs)
    finally:
        if method.teacher:
            training_args.teacher_model_init_kwargs = teacher_kwargs
    config = config_to_card_dict(script_args, training_args, model_args)
    trainer.card_info = dict(method=method.name, base_model=model_args.model_name_or_path,
                             datasets=[script_args.dataset_name], config=config, config_file=config_file,
                             adapter=model_args.use_peft,
                             teacher=training_args.teacher_model_name_or_path if method.teacher else None)
    trainer.heldout_pairs = heldout
    trainer.heldout_conversations = heldout_conversations
    return trainer


def teacher_model(training_args, model_args):
    """A distillation method's teacher, loaded by the recipe rather than by TRL: in the precision the student
    computes in (bf16 with ``bf16: true``), where TRL would load it in float32 by default (a 7B teacher: 27 GB instead
    of 13.5 GB, for logits that bf16 autocast rounds anyway); with the student's loading arguments (attention kernel,
    device placement), ``teacher_model_revision`` and ``teacher_model_init_kwargs`` over them. Without mixed
    precision the teacher takes the student's dtype. The vocabulary was checked before (check_args)."""
    compute = _compute_dtype(training_args)
    overrides = {**({"dtype": compute} if compute is not None else {}),
                 "revision": training_args.teacher_model_revision or "main",
                 **(training_args.teacher_model_init_kwargs or {})}  # (the teacher's own kwargs last: they win)
    return _frozen_model(training_args.teacher_model_name_or_path, training_args, **overrides)


def reference_model(training_args, model_args):
    """The frozen reference of DPO/KTO, loaded in the precision the policy computes in (bf16 with ``bf16: true``). TRL
    would load it with the policy's ``model_init_kwargs``: fp32 master weights, 2.2 GB more on the 1.1B model, which
    bf16 autocast rounds at every matmul anyway. None where TRL loads none: LoRA (the adapter switched off) and
    ``precompute_ref_log_probs`` (the reference log-probs are computed once, before training); and without mixed
    precision (the reference is then the policy's dtype, as in TRL)."""
    compute = _compute_dtype(training_args)
    if model_args.use_peft or training_args.precompute_ref_log_probs or compute is None:
        return None
    return _frozen_model(model_args.model_name_or_path, training_args, dtype=compute)


def _compute_dtype(training_args):
    """The dtype mixed precision computes in (bf16 / fp16), or None without mixed precision."""
    import torch

    return torch.bfloat16 if training_args.bf16 else torch.float16 if training_args.fp16 else None


def _frozen_model(name: str, training_args, **overrides):
    """A model TRL does not train (DPO/KTO's reference, a distillation teacher), loaded with the student's
    ``model_init_kwargs`` under ``overrides``; no ``device_map`` in distributed training (as TRL does: "auto" fails
    there)."""
    from trl.trainer.utils import create_model_from_path

    kwargs = {**(training_args.model_init_kwargs or {}), **overrides}
    if training_args.distributed_state.distributed_type in ("MULTI_GPU", "DEEPSPEED"):
        kwargs["device_map"] = None
    return create_model_from_path(name, **kwargs)


def heldout_metrics(trainer, suffix: str = "") -> dict:
    """tinyllama/chat/measure.py on the trainer's held-out pairs, or a distillation's held-out conversations (none:
    {})."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    if getattr(trainer, "heldout_conversations", None) is not None:
        from .measure import heldout_distillation

        numbers = heldout_distillation(model, trainer.accelerator.unwrap_model(trainer.teacher_model),
                                       trainer.processing_class, trainer.heldout_conversations,
                                       max_prompt_length=trainer.max_prompt_length,
                                       max_completion_length=trainer.args.max_completion_length,
                                       batch_size=trainer.args.per_device_eval_batch_size,
                                       context=trainer.autocast_smart_context_manager)
        return {k + suffix: v for k, v in numbers.items()}
    if getattr(trainer, "heldout_pairs", None) is None:
        return {}
    from .measure import heldout_preference

    numbers = heldout_preference(model, trainer.processing_class, trainer.heldout_pairs,
                                 max_length=trainer.args.max_length,
                                 max_prompt_length=getattr(trainer, "max_prompt_length", None),
                                 batch_size=trainer.args.per_device_eval_batch_size,
                                 context=trainer.autocast_smart_context_manager)
    return {k + suffix: v for k, v in numbers.items()}


def run_recipe(argv: Sequence[str] | None, recipe_method: str | None = None) -> dict:
    """The whole recipe: parse (the method from the config, or the recipe's own), check, build, train, save."""
    import sys

    from .args import parse_chat_args

    complete_cpu_launch()  # before anything reads the distributed setup
    argv = sys.argv[1:] if argv is None else list(argv)
    precheck_argv(argv)
    script_args, training_args, model_args = parse_chat_args(argv, recipe_method)
    setup_logging(main_process=training_args.process_index == 0)
    resume = resolve_resume(training_args.resume_from_checkpoint, training_args.output_dir)
    trainer = build_trainer(script_args.method, script_args, training_args, model_args, config_file_of(argv))
    return train_and_save(trainer, resume, script_args, training_args, model_args)


def train_and_save(trainer, resume, *arg_instances) -> dict:
    """Train (resuming if asked), then write to output_dir: the model or adapter with its tokenizer and chat
    template, ``config.yaml`` (the resolved configuration, no secrets) and README.md (the model card); push the
    folder to the Hub when ``push_to_hub`` is set. A preference or distillation method's held-out measure
    (measure.py) is taken before and after training (``heldout/*_start``, ``heldout/*``; before only when not resuming, and not under
    DeepSpeed or FSDP)."""
    output_dir = trainer.args.output_dir
    if trainer.is_world_process_zero():
        save_run_config(output_dir, *arg_instances)
    before = {}
    if resume is None and (trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled):
        log.info("held-out measure of the start model skipped: under DeepSpeed/FSDP the weights are sharded or not "
                 "yet on the GPU before training starts")
    elif resume is None:  # the start model (a resumed run starts from a checkpoint)
        before = heldout_metrics(trainer, "_start")
    result = trainer.train(resume_from_checkpoint=resume)
    metrics = {"train_loss": result.training_loss, "train_steps": trainer.state.global_step}
    if trainer.eval_dataset is not None:
        metrics.update(trainer.evaluate())
    metrics.update({**before, **heldout_metrics(trainer)})
    model = trainer.accelerator.unwrap_model(trainer.model)
    (model.get_base_model() if hasattr(model, "get_base_model") else model).config.use_cache = True  # for chat
    trainer.save_model(output_dir)
    if trainer.is_world_process_zero():  # save_model's save_pretrained does not write the tokenizer.model
        from ..tokenizer import copy_sentencepiece_model

        copy_sentencepiece_model(trainer.processing_class, output_dir)
    if trainer.card_info is not None:
        trainer.card_info["metrics"] = metrics
    trainer.create_model_card()
    if trainer.args.push_to_hub:
        trainer.push_to_hub()
        log.info("pushed %s to https://huggingface.co/%s", output_dir, trainer.hub_model_id)
    if trainer.is_world_process_zero():
        # what the run reports, like pretraining's summary.json (the pipeline's table reads it, never the log)
        summary = {"step": trainer.state.global_step, "final_loss": result.training_loss, "run_dir": str(output_dir),
                   "metrics": metrics}
        atomic_write_text(Path(output_dir) / "summary.json", json.dumps(summary, indent=2))
        log.info("saved %s to %s: %s", "adapter" if is_adapter_dir(output_dir) else "model", output_dir,
                 ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()))
    return metrics
