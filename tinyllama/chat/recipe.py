"""What both chat recipes do around TRL's trainer: the ``from_pretrained`` arguments, resume, and the end of the
run (train, then save the model with its tokenizer and chat template, ``config.yaml``, the model card and
``summary.json``, and push).
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Sequence

from ..utils import atomic_write_text
from .checks import is_adapter_dir

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


def train_and_save(trainer, resume, *arg_instances) -> dict:
    """Train (resuming if asked), then write to output_dir: the model or adapter with its tokenizer and chat
    template, ``config.yaml`` (the resolved configuration, no secrets) and README.md (the model card); push the
    folder to the Hub when ``push_to_hub`` is set."""
    output_dir = trainer.args.output_dir
    if trainer.is_world_process_zero():
        save_run_config(output_dir, *arg_instances)
    result = trainer.train(resume_from_checkpoint=resume)
    metrics = {"train_loss": result.training_loss, "train_steps": trainer.state.global_step}
    if trainer.eval_dataset is not None:
        metrics.update(trainer.evaluate())
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
